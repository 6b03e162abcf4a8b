"""Storage running full while a dataset is stored: a 507 that says so, nothing half-stored, the service serving.

Each test runs its own API process (on the test stack's database and broker, or on a SQLite database) with its
files on a fresh 1.5 MiB tmpfs; mounting one needs root, as CI has.
"""

import io
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import BIN, ROOT, authed, listing, new_key_with_cli, start_api, stop

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


BIGGER_THAN_THE_DISK = stored_zip(20)  # ~2 MB: saving it fails
HALF_THE_DISK = stored_zip(11)  # ~1.1 MB: saving it fits, extracting a second copy does not


def stored_state(client: httpx.Client, storage: Path) -> tuple[set[str], list[str]]:
    """Dataset ids the API lists, and what lies in the datasets folder (including half-ingested uploads)."""
    folder = storage / "datasets"
    return ({d["id"] for d in listing(client, "/v1/datasets", limit=100)},
            sorted(p.name for p in folder.iterdir()) if folder.exists() else [])


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mountpoint)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mount.stderr.strip()}); this test needs root")
    yield mountpoint
    subprocess.run(["umount", "--lazy", str(mountpoint)], check=False)


@pytest.fixture
def api_on(stack, small_disk, tmp_path) -> Iterator[Callable[..., httpx.Client]]:
    """Starts an API process with `env` changes (`{disk}` in a value is the small disk); returns its client."""
    procs, clients = [], []

    def start(*, sqlite: bool = False, **env: str) -> httpx.Client:
        env = {**stack.env, **{k: v.format(disk=small_disk) for k, v in env.items()}}
        key = stack.key
        if sqlite:  # the embedded default's database, on the same disk as the files
            env["DATABASE_URL"] = f"sqlite:///{small_disk}/unfreeze.db"
            subprocess.run([BIN / "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)
            key = new_key_with_cli(env, "tests")
        proc, url = start_api(env, tmp_path / "api.log")
        procs.append(proc)
        clients.append(authed(url, key))
        return clients[-1]

    yield start
    for client in clients:
        client.close()
    for proc in procs:
        stop(proc)


def assert_storage_full(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["type"] == "insufficient_storage" and "storage is full" in error["message"], error


@pytest.mark.parametrize("archive", [BIGGER_THAN_THE_DISK, HALF_THE_DISK],
                         ids=["while saving the upload", "while extracting"])
def test_full_storage_gets_507_and_nothing_is_stored(api_on, small_disk, archive):
    client = api_on(UNFREEZE_STORAGE="{disk}")
    before = stored_state(client, small_disk)

    assert_storage_full(client.post("/v1/datasets", files={"file": ("noise.zip", archive)}))

    assert stored_state(client, small_disk) == before, "no dataset row, nothing left in storage"
    small = client.post("/v1/datasets", files={"file": ("small.zip", stored_zip(2))})
    assert small.status_code == 201, f"with the space freed, the service stores datasets again: {small.text}"


def test_a_full_temporary_folder_gets_507(api_on, small_disk):
    # Request bodies over 1 MB are spooled to the temporary folder before the route runs.
    client = api_on(TMPDIR="{disk}")

    assert_storage_full(client.post("/v1/datasets", files={"file": ("noise.zip", BIGGER_THAN_THE_DISK)}))

    assert client.get("/healthz").status_code == 200


def test_with_sqlite_on_the_full_disk_a_retry_with_the_same_key_is_not_locked_out(api_on, small_disk):
    client = api_on(sqlite=True, UNFREEZE_STORAGE="{disk}/storage")
    headers = {"Idempotency-Key": "full-disk-1"}

    first = client.post("/v1/datasets", files={"file": ("noise.zip", HALF_THE_DISK)}, headers=headers)
    retry = client.post("/v1/datasets", files={"file": ("noise.zip", HALF_THE_DISK)}, headers=headers)

    assert_storage_full(first)
    assert_storage_full(retry)  # not 409 "still in progress": the failed attempt released its key
    assert listing(client, "/v1/datasets", limit=100) == [], "no dataset row"
    small = client.post("/v1/datasets", files={"file": ("small.zip", stored_zip(2))}, headers=headers)
    assert small.status_code == 201, small.text
