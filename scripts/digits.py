"""Image-folder datasets built from scikit-learn's bundled handwritten digits (no download)."""

import io
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def digit_images(digits: Iterable[int]) -> dict[str, list[tuple[int, Image.Image]]]:
    """The 8x8 digit images of each wanted digit, as grayscale PIL images keyed by class name."""
    from sklearn.datasets import load_digits

    data = load_digits()
    wanted = set(digits)
    by_class: dict[str, list[tuple[int, Image.Image]]] = {}
    for index, (pixels, label) in enumerate(zip(data.images, data.target, strict=True)):
        if int(label) in wanted:
            image = Image.fromarray((pixels * (255 / 16)).round().astype(np.uint8), mode="L")
            by_class.setdefault(str(int(label)), []).append((index, image))
    return by_class


def few_shot(by_class: dict[str, list[tuple[int, Image.Image]]], per_class: int, seed: int) -> tuple[dict, dict]:
    """Split each class into `per_class` training images (chosen from `seed`) and the rest for validation."""
    rng = np.random.RandomState(seed)
    train, val = {}, {}
    for name in sorted(by_class):
        items = by_class[name]
        chosen = set(rng.choice(len(items), per_class, replace=False).tolist())
        train[name] = [it for i, it in enumerate(items) if i in chosen]
        val[name] = [it for i, it in enumerate(items) if i not in chosen]
    return train, val


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def archive_members(train: dict, val: dict | None = None) -> list[tuple[str, bytes]]:
    """(path, bytes) members in image-folder layout, under train/ and val/ when `val` is given."""
    splits: Sequence[tuple[str, dict]] = [("train/", train), ("val/", val)] if val else [("", train)]
    return [(f"{prefix}{name}/{index:04d}.png", _png(image))
            for prefix, classes in splits for name, items in sorted(classes.items()) for index, image in items]


def write_archive(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A .zip or .tar.gz (by the file name) holding `members`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members:
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def write_folder(root: Path, classes: dict) -> None:
    """The images as PNG files in `root/<class>/`."""
    for name, items in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index, image in items:
            image.save(root / name / f"{index:04d}.png")


def write_samples(folder: Path) -> list[Path]:
    """The two sample archives of the README and the demo: digits 0-4 (all 901 images, one folder per class)
    and digits 5-9 (30 training images per class under train/, the other 746 under val/)."""
    train, val = few_shot(digit_images(range(5, 10)), per_class=30, seed=0)
    return [write_archive(folder / "digits-0-4.zip", archive_members(digit_images(range(5)))),
            write_archive(folder / "digits-5-9.tar.gz", archive_members(train, val))]


if __name__ == "__main__":
    import sys

    for written in write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "var/samples")):
        print(written)
