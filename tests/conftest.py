"""Shared test data: real handwritten digits from scikit-learn, packed as image-folder archives."""

from pathlib import Path

import pytest

from scripts.digits import archive_members, digit_images, few_shot, write_archive


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits")


@pytest.fixture(scope="session")
def source_archive(digits_dir) -> Path:
    """Digits 0-4, all 901 images, one folder per class (the job holds out its own validation split)."""
    return write_archive(digits_dir / "digits-0-4.zip", archive_members(digit_images(range(5))))


@pytest.fixture(scope="session")
def target_archive(digits_dir) -> Path:
    """Digits 5-9: 30 training images per class under train/, the other 746 under val/ (as in bench/TASK)."""
    train, val = few_shot(digit_images(range(5, 10)), per_class=30, seed=0)
    return write_archive(digits_dir / "digits-5-9.tar.gz", archive_members(train, val))
