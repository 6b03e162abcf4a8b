"""Image files on disk as a torch Dataset, the per-class validation split and the preprocessing."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def split_per_class(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out `val_fraction` of every class (at least one image, never all), reproducibly from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in sorted({s.label for s in samples}):
        members = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        order = torch.randperm(len(members), generator=gen).tolist()
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return train, val


@dataclass(frozen=True)
class Preprocessing:
    """The numbers of torchvision's ImageClassification preset (what `weights.transforms()` builds): resize the
    shorter side to `resize_size` with `interpolation`, centre-crop `crop_size`, scale to [0, 1], normalize."""

    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_ratio: float = 1.0  # resize size / crop size; 1: no margin is cropped away
    interpolation: str = "bilinear"  # a torchvision InterpolationMode value

    @property
    def resize(self) -> int:
        return math.floor(self.crop_size * self.resize_ratio + 0.5)


def _resize_and_crop(p: Preprocessing) -> list:
    mode = transforms.InterpolationMode(p.interpolation)
    return [transforms.Resize(p.resize, interpolation=mode, antialias=True), transforms.CenterCrop(p.crop_size)]


def _normalized_tensor(p: Preprocessing) -> list:
    return [transforms.PILToTensor(), transforms.ConvertImageDtype(torch.float32), transforms.Normalize(p.mean, p.std)]


def eval_transform(p: Preprocessing) -> transforms.Compose:
    """The preset's steps in its order (resize and crop the PIL image, then tensor), so it gives the same numbers."""
    return transforms.Compose([*_resize_and_crop(p), *_normalized_tensor(p)])


def train_transform(p: Preprocessing, *, augment: bool = False, hflip: bool = False) -> transforms.Compose:
    """The training images' preprocessing: with `augment`, a random resized crop (scale 0.7-1, the aspect ratio
    3/4-4/3) in place of resize and centre crop; with `hflip`, a random horizontal flip; otherwise `eval_transform`."""
    crop = ([transforms.RandomResizedCrop(p.crop_size, scale=(0.7, 1.0),
                                          interpolation=transforms.InterpolationMode(p.interpolation), antialias=True)]
            if augment else _resize_and_crop(p))
    flip = [transforms.RandomHorizontalFlip()] if hflip else []
    return transforms.Compose([*crop, *flip, *_normalized_tensor(p)])


class ImageFiles(Dataset):
    """Decodes each image when it is read, as RGB."""

    def __init__(self, samples: Sequence[Sample], transform) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[i]
        with Image.open(sample.path) as img:
            return self.transform(img.convert("RGB")), sample.label


def image_datasets(train: Sequence[Sample], val: Sequence[Sample], *, preprocessing: Preprocessing,
                   augment: bool = False, hflip: bool = False) -> tuple[ImageFiles, ImageFiles]:
    """Training images through `train_transform` (augmented as asked), validation images through `eval_transform`."""
    return (ImageFiles(train, train_transform(preprocessing, augment=augment, hflip=hflip)),
            ImageFiles(val, eval_transform(preprocessing)))


def make_loaders(train: Dataset, val: Dataset, *, batch_size: int, seed: int, workers: int = 0,
                 pin_memory: bool = False) -> tuple[DataLoader, DataLoader]:
    """A shuffled training loader (order fixed by `seed`) and an in-order validation loader."""
    common = {"num_workers": workers, "pin_memory": pin_memory, "persistent_workers": workers > 0}
    # A last batch of one image cannot train BatchNorm (one value per channel once maps reach 1x1).
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) % batch_size == 1,
                              generator=torch.Generator().manual_seed(seed), **common)
    val_loader = DataLoader(val, batch_size=max(batch_size, 256), shuffle=False, **common)
    return train_loader, val_loader
