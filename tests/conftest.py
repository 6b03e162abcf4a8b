"""Shared test data: real handwritten digits from scikit-learn, packed as image-folder archives."""

from pathlib import Path

import pytest

from scripts.digits import write_samples


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits")


@pytest.fixture(scope="session")
def sample_archives(digits_dir) -> list[Path]:
    return write_samples(digits_dir)


@pytest.fixture(scope="session")
def source_archive(sample_archives) -> Path:
    """Digits 0-4, all 901 images, one folder per class (the job holds out its own validation split)."""
    return sample_archives[0]


@pytest.fixture(scope="session")
def target_archive(sample_archives) -> Path:
    """Digits 5-9: 30 training images per class under train/, the other 746 under val/ (as in bench/TASK)."""
    return sample_archives[1]
