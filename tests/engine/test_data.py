"""The per-class validation split, the image dataset and the loaders."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from worker.engine.data import ImageFiles, Preprocessing, Sample, eval_transform, make_loaders, split_per_class
from worker.engine.weights import IMAGENET_MEAN, IMAGENET_STD


def fake_samples(per_class: dict[int, int]) -> list[Sample]:
    """Samples whose files are never read (the split only looks at paths and labels)."""
    return [Sample(Path(f"class{label}/{i:03d}.png"), label) for label, n in per_class.items() for i in range(n)]


def test_split_holds_out_a_fraction_of_every_class(digit_samples):
    samples = digit_samples["train"]  # 30 images of each of 3 classes

    train, val = split_per_class(samples, 0.2, seed=0)

    assert Counter(s.label for s in val) == {0: 6, 1: 6, 2: 6}, "20% of each class is held out"
    assert Counter(s.label for s in train) == {0: 24, 1: 24, 2: 24}, "the rest of each class trains"
    assert sorted(map(str, (s.path for s in train + val))) == sorted(str(s.path) for s in samples), \
        "every sample lands in exactly one split"


@pytest.mark.parametrize(("per_class", "val_fraction"), [
    ({0: 2, 1: 2}, 0.9),
    ({0: 2, 1: 3}, 0.01),
    ({0: 40, 1: 3}, 0.5),
], ids=["large fraction of tiny classes", "tiny fraction", "unbalanced classes"])
def test_split_keeps_at_least_one_image_of_every_class_on_each_side(per_class, val_fraction):
    train, val = split_per_class(fake_samples(per_class), val_fraction, seed=0)

    assert set(Counter(s.label for s in val)) == set(per_class), "every class has a validation image"
    assert set(Counter(s.label for s in train)) == set(per_class), "every class has a training image"


def test_split_is_reproducible_from_the_seed(digit_samples):
    samples = digit_samples["train"]

    first = split_per_class(samples, 0.2, seed=0)
    # The same samples in another order (as a directory listing may give them) split the same way.
    again = split_per_class(list(reversed(samples)), 0.2, seed=0)
    other = split_per_class(samples, 0.2, seed=1)

    assert set(first[1]) == set(again[1]), "the same seed holds out the same images"
    assert set(first[1]) != set(other[1]), "another seed holds out other images"


def test_image_files_decode_to_normalized_rgb_tensors(digit_samples):
    dataset = ImageFiles(digit_samples["val"], eval_transform(Preprocessing(32, IMAGENET_MEAN, IMAGENET_STD)))

    image, label = dataset[0]

    assert image.shape == (3, 32, 32) and image.dtype == torch.float32, "a 3x32x32 float tensor (grayscale as RGB)"
    assert label == digit_samples["val"][0].label
    assert image.min() < 0, "normalized with the ImageNet mean"


def test_training_order_is_fixed_by_the_seed():
    dataset = [(torch.zeros(1), i) for i in range(20)]

    def order(seed: int) -> list[int]:
        train_loader, _ = make_loaders(dataset, dataset, batch_size=4, seed=seed)
        return [i for _, labels in train_loader for i in labels.tolist()]

    assert order(0) == order(0), "the same seed shuffles the same way"
    assert order(0) != order(1), "another seed shuffles another way"
    _, val_loader = make_loaders(dataset, dataset, batch_size=4, seed=0)
    assert [i for _, labels in val_loader for i in labels.tolist()] == list(range(20)), "validation is in order"
