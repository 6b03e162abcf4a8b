"""Turning an uploaded archive into a validated image-folder dataset on disk.

Accepts a .zip or .tar.gz in `<class>/<image>` layout, optionally under `train/` and `val/`, optionally
wrapped in one top-level folder. Archiver junk (`__MACOSX/`, `.DS_Store`, hidden files) is skipped.
Every image is decoded once; anything wrong is a 4xx naming the member.
"""

import gzip
import json
import shutil
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from PIL import Image, UnidentifiedImageError

from models.errors import bad_upload

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP", "TIFF"}
JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
SPLITS = ("train", "val")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_extracted_bytes: int


@dataclass(frozen=True)
class Entry:
    name: str
    open: Callable[[], IO[bytes]]


@dataclass
class DatasetSummary:
    classes: list[str]
    class_counts: dict[str, int]
    split_counts: dict[str, dict[str, int]] | None
    num_samples: int
    has_val_split: bool
    samples: list[dict[str, str]] = field(repr=False)


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p in JUNK_NAMES for p in parts)


def _check_name(name: str) -> tuple[str, ...]:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts or ":" in path.parts[0]:
        raise bad_upload(f"archive member '{name}' has an absolute path or '..'; every member must stay "
                         "inside the dataset folder")
    return tuple(p for p in path.parts if p not in ("", "."))


@contextmanager
def open_archive(path: Path) -> Iterator[list[Entry]]:
    """The archive's regular files (junk skipped), refusing links, devices and paths that escape."""
    with path.open("rb") as f:
        magic = f.read(4)
    if not magic:
        raise bad_upload("the uploaded file is empty; send a .zip or .tar.gz of <class>/<image> folders")
    try:
        if magic.startswith(b"PK"):
            with zipfile.ZipFile(path) as zf:
                entries = []
                for info in zf.infolist():
                    if info.is_dir() or not _keep(info.filename):
                        continue
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise bad_upload(f"archive member '{info.filename}' is a symbolic link; "
                                         "only regular files and folders are accepted")
                    entries.append(Entry(info.filename, lambda info=info: zf.open(info)))
                yield entries
        elif magic.startswith(b"\x1f\x8b") or _is_tar(path):
            if magic.startswith(b"\x1f\x8b"):
                _read_through_gzip(path)
            with tarfile.open(path, "r:*") as tf:
                entries = []
                for member in tf:
                    if not _keep(member.name) or member.isdir():
                        continue
                    if not member.isfile():
                        raise bad_upload(f"archive member '{member.name}' is a link or special file; "
                                         "only regular files and folders are accepted")
                    entries.append(Entry(member.name, lambda m=member: tf.extractfile(m)))
                yield entries
        else:
            raise bad_upload("the file is not a .zip or .tar.gz archive; pack the dataset as <class>/<image> "
                             "folders with zip or tar -czf")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise bad_upload(f"the archive is corrupt or truncated ({exc}); create it again and re-upload") from None


def _read_through_gzip(path: Path) -> None:
    """Decompress to the end once: tarfile alone accepts a gzip stream cut off after the last member."""
    with gzip.open(path) as f:
        while f.read(1 << 20):
            pass


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _keep(name: str) -> bool:
    return not _is_junk(_check_name(name))


def _layout(names: list[tuple[str, ...]]) -> tuple[int, bool]:
    """How many leading folders to strip, and whether the archive brings train/ and val/ splits."""
    strip = 0
    firsts = {parts[0] for parts in names}
    if len(firsts) == 1 and all(len(p) >= 3 for p in names) and firsts.isdisjoint(SPLITS):
        strip = 1  # one wrapping folder, as when a folder is zipped
    tops = {parts[strip] for parts in names if len(parts) > strip + 1}
    return strip, "train" in tops and tops <= set(SPLITS)


def ingest(archive: Path, dest: Path, limits: Limits) -> DatasetSummary:
    """Extract and validate `archive` into `dest` (`<split>/<class>/...` plus a manifest)."""
    with open_archive(archive) as entries:
        if len(entries) > limits.max_members:
            raise bad_upload(f"the archive has {len(entries)} files; the limit is {limits.max_members}")
        named = [(_check_name(e.name), e) for e in entries]
        strip, has_split = _layout([parts for parts, _ in named])
        depth = strip + (3 if has_split else 2)
        samples, problems, extracted = [], [], 0
        for parts, entry in named:
            rel = parts[strip:]
            if len(rel) < depth - strip:
                if PurePosixPath(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    raise bad_upload(f"image '{entry.name}' is not inside a class folder; put each image under "
                                     "<class>/ (or train/<class>/ and val/<class>/)")
                continue  # a README or label file beside the class folders
            split, cls = (rel[0], rel[1]) if has_split else ("train", rel[0])
            target = dest.joinpath(split, *rel[1 if has_split else 0:])
            extracted += _extract(entry, target, limits.max_extracted_bytes - extracted)
            problem = _decode_problem(target)
            if problem:
                problems.append(f"{entry.name} ({problem})")
            else:
                samples.append({"split": split, "class": cls, "path": str(target.relative_to(dest))})
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise bad_upload(f"{len(problems)} file(s) are not decodable images: {shown}")
    summary = summarize(samples, has_split)
    (dest / MANIFEST).write_text(json.dumps({"classes": summary.classes, "samples": samples}))
    return summary


def _extract(entry: Entry, target: Path, budget: int) -> int:
    """Copy one member to `target`, counting the bytes actually read against `budget`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with entry.open() as src, target.open("wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > budget:
                raise bad_upload(f"the archive expands past the extraction limit at '{entry.name}'; "
                                 "the limit is UNFREEZE_MAX_EXTRACTED_BYTES")
            out.write(chunk)
    return written


def _decode_problem(path: Path) -> str | None:
    """None if `path` is an image in an allowed format that decodes fully, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.format not in IMAGE_FORMATS:
                    return f"format {img.format} is not accepted"
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "image has too many pixels (decompression bomb limit)"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"truncated or corrupt image: {exc}"
    return None


def summarize(samples: list[dict[str, str]], has_split: bool) -> DatasetSummary:
    """Class statistics, refusing datasets a classifier cannot be trained and validated on."""
    if not samples:
        raise bad_upload("the archive holds no images; expected <class>/<image> folders "
                         "(optionally under train/ and val/)")
    per_split = {s: Counter(x["class"] for x in samples if x["split"] == s) for s in SPLITS}
    classes = sorted(per_split["train"])
    unknown = sorted(set(per_split["val"]) - set(classes))
    if unknown:
        raise bad_upload(f"val/ has class '{unknown[0]}' that train/ does not; every validation class needs "
                         "training images")
    if len(classes) < 2:
        raise bad_upload(f"found {len(classes)} class ({', '.join(repr(c) for c in classes)}); a classifier needs "
                         "at least 2 class folders")
    totals = per_split["train"] + per_split["val"]
    for cls in classes:
        if totals[cls] < 2:
            raise bad_upload(f"class '{cls}' has {totals[cls]} image; each class needs at least 2")
    split_counts = {s: dict(sorted(per_split[s].items())) for s in SPLITS} if has_split else None
    return DatasetSummary(classes, {c: totals[c] for c in classes}, split_counts, len(samples), has_split, samples)


def remove_quietly(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

