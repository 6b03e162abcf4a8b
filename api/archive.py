"""Turning an uploaded archive into a validated image-folder dataset on disk.

Accepts a .zip or a tar (plain, .tar.gz, .tar.bz2 or .tar.xz) in `<class>/<image>` layout, optionally under
`train/` and `val/`, optionally wrapped in one top-level folder. Archiver junk (`__MACOSX/`, `.DS_Store`, hidden
files) is skipped and never read. Every image is decoded once; anything wrong is a 4xx naming the member.

Hostile input is refused before it costs more than the limits (the UNFREEZE_MAX_* settings):
- Members: every entry (files, folders, links, junk) counts, and is counted from the bytes before anything is
  extracted: zip central-directory records one by one (ZipFile would build an object for each first, and the
  declared total can lie), tar headers as the stream is read. More than `max_members` is refused.
- Size: the bytes actually written, summed over the whole archive, may not pass
  min(`max_extracted_bytes`, `max_compression_ratio` x the upload's size on disk). Declared sizes are never used;
  the count is taken per chunk as members are copied, so no more than that lands on disk, and the refusal names
  the member being copied. The ratio is for the whole archive, not each member: a member's compressed size is
  header-declared in a zip and does not exist in a .tar.gz (one stream), and one legitimate image can compress
  1000-fold (a blank BMP) while a whole dataset does not; any archive expanding past ratio x its size is a
  bomb however its members share the expansion.
- Compressed tars: the decompressed tar stream is read to its end once before anything else (which also catches
  truncation) and may not pass min(ratio x upload, `max_extracted_bytes` + 4 KiB of headers per member) + 64 KiB
  of end padding, so a bomb costs no more CPU than a large legitimate archive.
- Paths: no `..`, no absolute or drive paths; only regular files and folders (symbolic and hard links, devices,
  fifos and sockets are refused, in zips by their Unix mode bits too), and each tar member must also pass
  `tarfile.data_filter` against the destination folder. Members are copied as bytes into paths built here, so
  nothing lands outside the dataset folder.
- Images: only PNG, JPEG (and MPO), BMP, GIF, WebP and TIFF are even parsed; an image whose header declares more
  than `max_image_pixels` pixels is refused before it is decoded (Pillow's own, process-wide bomb limit stays as
  a backstop: its warning is an error here); truncated or corrupt images are refused.
"""

import bz2
import gzip
import json
import lzma
import re
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from PIL import Image, UnidentifiedImageError

from models.errors import ServiceError, bad_upload, out_of_space
from models.settings import get_settings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP", "TIFF"}
OPENERS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")  # Pillow plugins tried; JPEG's also opens MPO
JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
TAR_CODECS: dict[bytes, Callable[[Path], IO[bytes]]] = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open,
                                                        b"\xfd7zXZ\x00": lzma.open}
TAR_HEADER_ALLOWANCE = 4096  # per member: header, padding, and a long-name or pax header
TAR_END_ALLOWANCE = 64 * 1024  # end-of-archive blocks padded to tar's record size
CHUNK = 1 << 20
ZIP_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
             stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket"}
TAR_KINDS = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.CHRTYPE: "a character device",
             tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a fifo"}


@dataclass(frozen=True)
class Limits:
    """What one upload may cost; the defaulted fields come from the settings of the same name."""

    max_members: int
    max_extracted_bytes: int
    max_compression_ratio: int = field(default_factory=lambda: get_settings().max_compression_ratio)
    max_image_pixels: int = field(default_factory=lambda: get_settings().max_image_pixels)


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


class _OverBudget(Exception):
    """A metered stream delivered more than its budget."""


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p in JUNK_NAMES for p in parts)


def _check_name(name: str) -> tuple[str, ...]:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts or ":" in path.parts[0]:
        raise bad_upload(f"archive member '{name}' has an absolute path or '..'; every member must stay "
                         "inside the dataset folder")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if any(len(p.encode()) > 255 for p in parts):
        raise bad_upload(f"archive member '{name[:200]}...' has a file or folder name over 255 bytes; shorten it")
    return parts


def _refuse_kind(name: str, kind: str) -> ServiceError:
    return bad_upload(f"archive member '{name}' is {kind}; only regular files and folders are accepted")


@contextmanager
def open_archive(path: Path, dest: Path, limits: Limits) -> Iterator[list[Entry]]:
    """The archive's regular files (junk skipped), refusing too many members, links, special files and paths
    that would escape `dest`."""
    with path.open("rb") as f:
        magic = f.read(6)
    if not magic:
        raise bad_upload("the uploaded file is empty; send a .zip or .tar.gz of <class>/<image> folders")
    try:
        if magic.startswith(b"PK"):
            if _zip_has_more_members(path, limits.max_members):
                raise _too_many_members(limits)
            with zipfile.ZipFile(path) as zf:
                yield [Entry(info.filename, partial(zf.open, info)) for info in zf.infolist() if _vet_zip(info)]
        elif opener := _tar_opener(path, magic):
            _scan_tar(path, opener, limits)
            with tarfile.open(path, "r:*") as tf:
                yield [Entry(m.name, partial(tf.extractfile, m)) for m in tf if _vet_tar(m, dest)]
        else:
            raise bad_upload("the file is not a .zip or .tar.gz archive; pack the dataset as <class>/<image> "
                             "folders with zip or tar -czf")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError,
            NotImplementedError) as exc:
        if out_of_space(exc):
            raise  # the server's fault, not the archive's: the app answers 507
        # An OSError naming a file would show the server's storage path: give its reason only.
        reason = exc.strerror if isinstance(exc, OSError) and exc.filename else exc
        raise bad_upload(f"the archive is corrupt or truncated ({reason}); create it again and re-upload") from None


def _too_many_members(limits: Limits) -> ServiceError:
    return bad_upload(f"the archive has more than {limits.max_members} members (files and folders); the limit "
                      "is UNFREEZE_MAX_ARCHIVE_MEMBERS; split the dataset")


def _zip_has_more_members(path: Path, limit: int) -> bool:
    """Whether the central directory holds more than `limit` records, walking them as ZipFile would."""
    with path.open("rb") as f:
        end = zipfile._EndRecData(f)  # the end-record parser ZipFile itself uses
        if end is None:
            raise zipfile.BadZipFile("no end-of-central-directory record")
        size = end[zipfile._ECD_SIZE]
        start = end[zipfile._ECD_LOCATION] - size
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
        f.seek(max(start, 0))
        seen = count = 0
        while seen < size:
            head = f.read(zipfile.sizeCentralDir)
            if len(head) < zipfile.sizeCentralDir or head[:4] != zipfile.stringCentralDir:
                raise zipfile.BadZipFile("bad central directory record")
            variable = sum(struct.unpack("<3H", head[28:34]))  # name, extra field and comment lengths
            f.seek(variable, 1)
            seen += zipfile.sizeCentralDir + variable
            count += 1
            if count > limit:
                return True
    return False


def _vet_zip(info: zipfile.ZipInfo) -> bool:
    """Whether to extract `info`; refuses links, special files and encrypted members."""
    if not _keep(info.filename) or info.is_dir():
        return False
    kind = stat.S_IFMT(info.external_attr >> 16)  # Unix mode bits; 0 from DOS and Windows archivers
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _refuse_kind(info.filename, ZIP_KINDS.get(kind, "a special file"))
    if info.flag_bits & 0x1:
        raise bad_upload(f"archive member '{info.filename}' is encrypted; upload an archive without a password")
    return True


def _tar_opener(path: Path, magic: bytes) -> Callable[[Path], IO[bytes]] | None:
    """How to read `path` as a tar stream, or None if it is not a tar."""
    for prefix, opener in TAR_CODECS.items():
        if magic.startswith(prefix):
            return opener
    try:
        return partial(Path.open, mode="rb") if tarfile.is_tarfile(path) else None
    except OSError:
        return None


class _Metered:
    """A read-only stream that raises _OverBudget rather than deliver more than `budget` bytes."""

    def __init__(self, raw: IO[bytes], budget: int) -> None:
        self.raw, self.left = raw, budget

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise _OverBudget
        return data


def _scan_tar(path: Path, opener: Callable[[Path], IO[bytes]], limits: Limits) -> None:
    """Read the tar stream once to its end, counting members and metering the decompressed bytes (tarfile
    alone also accepts a compressed stream cut off after the last member)."""
    upload = path.stat().st_size
    by_ratio = limits.max_compression_ratio * upload
    by_size = limits.max_extracted_bytes + TAR_HEADER_ALLOWANCE * limits.max_members
    member = None
    with opener(path) as raw:
        stream = _Metered(raw, min(by_ratio, by_size) + TAR_END_ALLOWANCE)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:
                for count, info in enumerate(tf, 1):
                    if count > limits.max_members:
                        raise _too_many_members(limits)
                    member = info.name
            while stream.read(CHUNK):
                pass
        except _OverBudget:
            where = f"at member '{member}'" if member else "before its first member"
            raise _expansion_refused(f"the archive, {where}, decompresses", limits, upload,
                                     ratio_binds=by_ratio < by_size) from None


def _expansion_refused(subject: str, limits: Limits, upload: int, *, ratio_binds: bool) -> ServiceError:
    if ratio_binds:
        return bad_upload(f"{subject} past {limits.max_compression_ratio} times the {upload}-byte upload "
                          "(UNFREEZE_MAX_COMPRESSION_RATIO); refusing a likely decompression bomb")
    return bad_upload(f"{subject} past the {limits.max_extracted_bytes}-byte extraction limit "
                      "(UNFREEZE_MAX_EXTRACTED_BYTES); split the dataset")


def _vet_tar(member: tarfile.TarInfo, dest: Path) -> bool:
    """Whether to extract `member`; refuses links and special files and anything tar's data filter refuses."""
    if not _keep(member.name):
        return False
    if not (member.isfile() or member.isdir()):
        raise _refuse_kind(member.name, TAR_KINDS.get(member.type, "a special file"))
    try:
        tarfile.data_filter(member, str(dest))
    except tarfile.FilterError as exc:
        raise bad_upload(f"archive member '{member.name}' is refused by tar's data filter ({exc}); only regular "
                         "files and folders inside the dataset folder are accepted") from None
    return member.isfile()


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
    upload = archive.stat().st_size
    by_ratio = limits.max_compression_ratio * upload
    budget = min(by_ratio, limits.max_extracted_bytes)
    with open_archive(archive, dest, limits) as entries:
        named = [(_check_name(e.name), e) for e in entries]
        strip, has_split = _layout([parts for parts, _ in named])
        depth = strip + (3 if has_split else 2)
        samples, problems, targets, extracted = [], [], {}, 0
        for parts, entry in named:
            rel = parts[strip:]
            if len(rel) < depth - strip:
                if PurePosixPath(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    raise bad_upload(f"image '{entry.name}' is not inside a class folder; put each image under "
                                     "<class>/ (or train/<class>/ and val/<class>/)")
                continue  # a README or label file beside the class folders
            split, cls = (rel[0], rel[1]) if has_split else ("train", rel[0])
            target = dest.joinpath(split, *rel[1 if has_split else 0:])
            if target in targets:
                raise bad_upload(f"archive member '{entry.name}' is in the archive twice (also as "
                                 f"'{targets[target]}'); keep one")
            targets[target] = entry.name
            try:
                extracted += _extract(entry, target, budget - extracted)
            except _OverBudget:
                raise _expansion_refused(f"archive member '{entry.name}' expands the archive", limits, upload,
                                         ratio_binds=by_ratio < limits.max_extracted_bytes) from None
            problem = _image_problem(target, entry.name, limits.max_image_pixels)
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
    """Copy one member to `target`, counting the bytes actually read; _OverBudget past `budget`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with entry.open() as src, target.open("wb") as out:
        stream = _Metered(src, budget)
        while chunk := stream.read(CHUNK):
            out.write(chunk)
    return budget - stream.left


def _image_problem(path: Path, name: str, max_pixels: int) -> str | None:
    """None if `path` is an image in an allowed format that decodes fully, else why not. An image over the
    pixel limit is refused outright, before it is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=OPENERS) as img:
                if img.format not in IMAGE_FORMATS:
                    return f"format {img.format} is not accepted"
                width, height = img.size
                if width * height > max_pixels:
                    raise _too_many_pixels(name, f"{width}x{height} = {width * height} pixels", max_pixels)
                img.load()
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's process-wide limit
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_many_pixels(name, f"{pixels[1]} pixels" if pixels else str(exc), max_pixels) from None
    except UnidentifiedImageError:
        return "not an image in an accepted format: PNG, JPEG, BMP, GIF, WebP or TIFF"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"truncated or corrupt image: {exc}"
    except Exception as exc:  # whatever a decoder raises on untrusted bytes is the upload's fault
        return f"corrupt image ({type(exc).__name__}: {exc})"
    return None


def _too_many_pixels(name: str, detail: str, limit: int) -> ServiceError:
    return bad_upload(f"image '{name}' has too many pixels ({detail}); the limit is {limit} pixels "
                      "(UNFREEZE_MAX_IMAGE_PIXELS), which guards against decompression bombs; resize it")


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
