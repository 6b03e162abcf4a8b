"""Hostile uploads are refused with a 4xx naming the member, store nothing, and leave the service serving.

The corpus goes over HTTP to the real stack (its limits are the settings' defaults). Limits the stack can't be
given per test (member count, extracted bytes, pixels) are exercised on `api.archive.ingest` directly."""

import re
import stat
import tarfile
from functools import partial
from pathlib import Path

import pytest

from api.archive import Limits, ingest
from models.errors import ServiceError
from models.settings import get_settings
from tests.service.conftest import listing
from tests.service.hostile_files import (MiB, encrypted_zip, image_bytes, png, png_declaring, tar_bomb, tar_of,
                                         tar_plus, tar_special, truncated_jpeg, two_classes, zip_bomb, zip_of, zip_plus,
                                         zip_special, zip_understating_its_count)

ESCAPES = r"has an absolute path or '\.\.'"
NOT_AN_IMAGE = r"not an image in an accepted format"
PNG = png()

CORPUS = [
    ("zip-slip", partial(zip_plus, "../../evil.png", PNG), rf"'\.\./\.\./evil\.png' {ESCAPES}"),
    ("zip-slip-backslashes", partial(zip_plus, "cat\\..\\..\\evil.png", PNG),
     rf"'cat\\\.\.\\\.\.\\evil\.png' {ESCAPES}"),
    ("tar-slip", partial(tar_plus, "cat/../../evil.png", PNG), rf"'cat/\.\./\.\./evil\.png' {ESCAPES}"),
    ("tar-absolute-path", partial(tar_plus, "/tmp/evil.png", PNG), rf"'/tmp/evil\.png' {ESCAPES}"),
    ("zip-drive-path", partial(zip_plus, "C:/evil.png", PNG), rf"'C:/evil\.png' {ESCAPES}"),
    ("tar-symlink-outside", partial(tar_special, "cat/3.png", tarfile.SYMTYPE, linkname="/etc/passwd"),
     r"'cat/3\.png' is a symbolic link"),
    ("tar-symlink-inside", partial(tar_special, "cat/3.png", tarfile.SYMTYPE, linkname="1.png"),
     r"'cat/3\.png' is a symbolic link"),
    ("tar-hard-link", partial(tar_special, "cat/3.png", tarfile.LNKTYPE, linkname="cat/1.png"),
     r"'cat/3\.png' is a hard link"),
    ("tar-character-device", partial(tar_special, "cat/3.png", tarfile.CHRTYPE, devmajor=1, devminor=3),
     r"'cat/3\.png' is a character device"),
    ("tar-block-device", partial(tar_special, "cat/3.png", tarfile.BLKTYPE, devmajor=8),
     r"'cat/3\.png' is a block device"),
    ("tar-fifo", partial(tar_special, "cat/3.png", tarfile.FIFOTYPE), r"'cat/3\.png' is a fifo"),
    ("zip-symlink", partial(zip_special, "cat/3.png", stat.S_IFLNK | 0o777, b"/etc/passwd"),
     r"'cat/3\.png' is a symbolic link"),
    ("zip-fifo", partial(zip_special, "cat/3.png", stat.S_IFIFO | 0o644), r"'cat/3\.png' is a fifo"),
    ("zip-encrypted-member", encrypted_zip, r"'cat/3\.png' is encrypted"),
    ("zip-bomb", zip_bomb, r"'cat/bomb\.png' expands the archive past 200 times the \d+-byte upload "
                           r"\(UNFREEZE_MAX_COMPRESSION_RATIO\)"),
    ("tar-gz-bomb", tar_bomb, r"the archive, at member 'cat/bomb\.png', decompresses past 200 times the \d+-byte "
                              r"upload \(UNFREEZE_MAX_COMPRESSION_RATIO\)"),
    ("pixel-bomb-20000x20000", lambda: zip_plus("cat/bomb.png", png_declaring(20_000, 20_000)),
     r"image 'cat/bomb\.png' has too many pixels \(400000000 pixels\); the limit is 89478485 pixels "
     r"\(UNFREEZE_MAX_IMAGE_PIXELS\)"),
    ("pixel-bomb-10000x10000", lambda: zip_plus("cat/bomb.png", png_declaring(10_000, 10_000)),
     r"image 'cat/bomb\.png' has too many pixels \(100000000 pixels\); the limit is 89478485 pixels "
     r"\(UNFREEZE_MAX_IMAGE_PIXELS\)"),
    ("truncated-jpeg", lambda: zip_plus("cat/3.jpg", truncated_jpeg()), r"cat/3\.jpg \(truncated or corrupt image"),
    ("text-renamed-png", partial(zip_plus, "cat/3.png", b"plain text, not a picture\n"),
     rf"cat/3\.png \({NOT_AN_IMAGE}"),
    ("ppm-renamed-png", lambda: zip_plus("cat/3.png", image_bytes("PPM")), rf"cat/3\.png \({NOT_AN_IMAGE}"),
    ("ico-renamed-png", lambda: zip_plus("cat/3.png", image_bytes("ICO", (16, 16))), rf"cat/3\.png \({NOT_AN_IMAGE}"),
    ("pcx-renamed-png", lambda: zip_plus("cat/3.png", image_bytes("PCX")), rf"cat/3\.png \({NOT_AN_IMAGE}"),
    ("same-member-twice", partial(zip_plus, "./cat/1.png", PNG),
     r"'\./cat/1\.png' is in the archive twice \(also as 'cat/1\.png'\)"),
    ("name-over-255-bytes", partial(zip_plus, f"cat/{'x' * 300}.png", PNG), r"'cat/x+\.\.\.' has a .* over 255 bytes"),
    ("empty-zip", partial(zip_of, {}), r"holds no images"),
    ("zero-bytes", lambda: b"", r"the uploaded file is empty"),
]


def stored_state(client, stack) -> tuple[set[str], list[str]]:
    """Dataset ids the API lists, and what lies in the datasets folder (including half-ingested uploads)."""
    folder = stack.storage / "datasets"
    return ({d["id"] for d in listing(client, "/v1/datasets", limit=100)},
            sorted(p.name for p in folder.iterdir()) if folder.exists() else [])


def assert_error(response, status: int, match: str, param: str = "file") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param"}, error
    assert re.search(match, error["message"]), error["message"]
    assert error["param"] == param, error


@pytest.mark.parametrize(("name", "build", "match"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_upload_is_refused_and_nothing_is_stored(client, stack, name, build, match):
    before = stored_state(client, stack)
    response = client.post("/v1/datasets", files={"file": (f"{name}.zip", build())})
    assert_error(response, 400, match)
    assert response.json()["error"]["type"] == "invalid_upload"
    assert stored_state(client, stack) == before, "a refused upload leaves no dataset row or folder"
    assert client.get("/healthz").status_code == 200


def test_wrong_multipart_field_is_refused(client, stack):
    before = stored_state(client, stack)
    response = client.post("/v1/datasets", files={"dataset": ("ok.zip", zip_of(two_classes()))})
    assert_error(response, 422, r"multipart/form-data field 'file'")
    assert stored_state(client, stack) == before


# ingest() directly, with limits the running stack can't be given.

def small(**change) -> Limits:
    return Limits(**{"max_members": 100, "max_extracted_bytes": 10 * MiB, "max_compression_ratio": 200,
                     "max_image_pixels": 10_000, **change})


def ingest_bytes(tmp_path: Path, payload: bytes, limits: Limits):
    tmp_path.mkdir(parents=True, exist_ok=True)
    archive = tmp_path / "upload"
    archive.write_bytes(payload)
    return ingest(archive, tmp_path / "data", limits)


BUILDERS = [("zip", zip_of), ("tar-gz", tar_of), ("tar", lambda m: tar_of(m, mode="w"))]


@pytest.mark.parametrize(("kind", "build"), BUILDERS, ids=[b[0] for b in BUILDERS])
def test_member_limit_counts_every_member(tmp_path, kind, build):
    assert ingest_bytes(tmp_path / "at", build(two_classes()), small(max_members=4)).num_samples == 4
    with pytest.raises(ServiceError, match=r"more than 4 members .*UNFREEZE_MAX_ARCHIVE_MEMBERS"):
        ingest_bytes(tmp_path / "over", build({**two_classes(), "README.txt": b"hi"}), small(max_members=4))


def test_member_limit_does_not_trust_the_declared_count(tmp_path):
    payload = zip_understating_its_count({**two_classes(), "dog/3.png": png()}, declared=2)
    with pytest.raises(ServiceError, match=r"more than 4 members"):
        ingest_bytes(tmp_path, payload, small(max_members=4))


@pytest.mark.parametrize(("kind", "build"), BUILDERS, ids=[b[0] for b in BUILDERS])
def test_extraction_limit_counts_the_bytes_written(tmp_path, kind, build):
    total = sum(len(data) for data in two_classes().values())
    assert ingest_bytes(tmp_path / "at", build(two_classes()), small(max_extracted_bytes=total)).num_samples == 4
    with pytest.raises(ServiceError, match=r"'dog/2\.png' expands the archive past the \d+-byte extraction limit "
                                           r"\(UNFREEZE_MAX_EXTRACTED_BYTES\)"):
        ingest_bytes(tmp_path / "over", build(two_classes()), small(max_extracted_bytes=total - 1))


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"], ids=["gz", "bz2", "xz"])
def test_compressed_tar_bomb_is_refused_while_decompressing(tmp_path, mode):
    payload = tar_bomb(size=4 * MiB, mode=mode)
    assert len(payload) * 200 < 4 * MiB, "the bomb compresses past the ratio"
    with pytest.raises(ServiceError, match=r"at member 'cat/bomb\.png', decompresses past 200 times"):
        ingest_bytes(tmp_path, payload, small())
    assert not (tmp_path / "data").exists(), "nothing was extracted"


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    payload = zip_of({**two_classes(), "dog/big.png": png((40, 30))})
    with pytest.raises(ServiceError, match=r"image 'dog/big\.png' has too many pixels \(40x30 = 1200 pixels\); "
                                           r"the limit is 1199 pixels \(UNFREEZE_MAX_IMAGE_PIXELS\)"):
        ingest_bytes(tmp_path, payload, small(max_image_pixels=1199))
    assert ingest_bytes(tmp_path / "at", payload, small(max_image_pixels=1200)).num_samples == 5


def test_unset_limits_come_from_the_settings():
    limits = Limits(10, 1000)
    settings = get_settings()
    assert (limits.max_compression_ratio, limits.max_image_pixels) == (settings.max_compression_ratio,
                                                                       settings.max_image_pixels)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_accepted_format_still_decodes(tmp_path, fmt):
    image = image_bytes(fmt, (16, 16), "RGB")
    members = {f"{cls}/{i}.{fmt.lower()}": image for cls in ("cat", "dog") for i in (1, 2)}
    assert ingest_bytes(tmp_path, zip_of(members), small()).num_samples == 4


def test_service_still_serves_after_the_corpus(client, stack):
    """Runs last in this file: after every hostile upload the API answers and a normal upload succeeds."""
    assert client.get("/healthz").status_code == 200
    response = client.post("/v1/datasets", files={"file": ("after.zip", zip_of(two_classes()))})
    assert response.status_code == 201, response.text
    assert response.json()["class_counts"] == {"cat": 2, "dog": 2}
    leftovers = [p.name for p in (stack.storage / "datasets").iterdir() if p.name.startswith(".incoming-")]
    assert leftovers == [], "no half-ingested upload is left behind"
