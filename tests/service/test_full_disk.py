"""Storage running full while a dataset is stored: a 507 that says so, nothing half-stored, the service serving.

A second API process of the test stack stores its files on a 1.5 MiB tmpfs (mounting one needs root, as CI has).
"""

import io
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import authed, listing, start_api, stop

DISK = 1536 * 1024


def noise_png(seed: int) -> bytes:
    """A 128x128 RGB PNG of random pixels: about 49 KB that no compression shrinks."""
    pixels = np.random.default_rng(seed).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def stored_zip(images_per_class: int) -> bytes:
    """Two classes of noise images, stored uncompressed: the archive is as large as its extracted files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(2 * images_per_class):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", noise_png(i))
    return buf.getvalue()


def stored_state(client: httpx.Client, storage: Path) -> tuple[set[str], list[str]]:
    """Dataset ids the API lists, and what lies in the datasets folder (including half-ingested uploads)."""
    folder = storage / "datasets"
    return ({d["id"] for d in listing(client, "/v1/datasets", limit=100)},
            sorted(p.name for p in folder.iterdir()) if folder.exists() else [])


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory) -> Iterator[Path]:
    mountpoint = tmp_path_factory.mktemp("small-disk")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mountpoint)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mount.stderr.strip()}); this test needs root")
    yield mountpoint
    subprocess.run(["umount", "--lazy", str(mountpoint)], check=False)


@pytest.fixture(scope="module")
def small_disk_client(stack, small_disk, tmp_path_factory) -> Iterator[httpx.Client]:
    proc, url = start_api({**stack.env, "UNFREEZE_STORAGE": str(small_disk)},
                          tmp_path_factory.mktemp("small-disk-api") / "api.log")
    try:
        with authed(url, stack.key) as client:
            yield client
    finally:
        stop(proc)


@pytest.mark.parametrize("images_per_class", [20, 11], ids=["while saving the upload", "while extracting"])
def test_full_storage_gets_507_and_nothing_is_stored(small_disk_client, small_disk, images_per_class):
    archive = stored_zip(images_per_class)
    assert len(archive) > DISK if images_per_class == 20 else DISK / 2 < len(archive) < DISK
    before = stored_state(small_disk_client, small_disk)

    response = small_disk_client.post("/v1/datasets", files={"file": ("noise.zip", archive)})

    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["type"] == "insufficient_storage" and "storage is full" in error["message"], error
    assert "Traceback" not in error["message"] and str(small_disk) not in error["message"], \
        "the message does not show the server's paths"
    assert stored_state(small_disk_client, small_disk) == before, "no dataset row, nothing left in storage"
    small = small_disk_client.post("/v1/datasets", files={"file": ("small.zip", stored_zip(2))})
    assert small.status_code == 201, f"with the space freed, the service stores datasets again: {small.text}"
