"""`make run` with no DATABASE_URL or CELERY_BROKER_URL: SQLite and a filesystem broker, no servers, and a
printed API key of the tenant "local"."""

import json
import os
import re
import signal
import subprocess

import httpx
import pytest
from safetensors import safe_open

from scripts.digits import archive_members, digit_images, write_archive
from tests.service.conftest import ROOT, authed, free_port, wait_for, wait_http


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNFREEZE_", "CELERY_", "DATABASE_"))}
    env.update(UNFREEZE_VAR=str(tmp / "var"), PORT=str(port), PYTHONUNBUFFERED="1")
    log = tmp / "run.log"
    proc = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, log, timeout=120)
        yield f"http://127.0.0.1:{port}", tmp, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def printed_key(log) -> str:
    printed = re.search(r"^  (ufz_\S+)$", log.read_text(), re.M)
    assert printed, f"make run prints a key of the tenant 'local':\n{log.read_text()[-2000:]}"
    return printed.group(1)


def test_make_run_prints_a_key_and_needs_it(embedded):
    url, _, log = embedded
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert f"curl -H 'Authorization: Bearer {printed_key(log)}' {url}/v1/models" in log.read_text()


def test_make_run_serves_the_whole_flow_without_servers(embedded):
    url, tmp, log = embedded
    archive = write_archive(tmp / "two-digits.zip", archive_members(
        {k: v[:20] for k, v in digit_images([0, 1]).items()}))
    with authed(url, printed_key(log)) as client, archive.open("rb") as f:
        dataset = client.post("/v1/datasets", files={"file": (archive.name, f)}).json()
        assert dataset["classes"] == ["0", "1"], dataset
        job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "base_model": "resnet18", "weights": None,
                                            "strategy": {"type": "head_only", "epochs_per_stage": 2},
                                            "hyperparameters": {"image_size": 16}}).json()
        job = wait_for(client, job["id"], timeout=120)
        assert job["status"] == "succeeded", job["error"]
        metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
        assert [m["epoch"] for m in metrics] == [1, 2]
        types = [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
        assert types[0] == "queued" and types[-1] == "succeeded"
        model = client.get(f"/v1/jobs/{job['id']}/model")
        assert model.status_code == 200
    (tmp / "model.safetensors").write_bytes(model.content)
    with safe_open(str(tmp / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["classes"]) == ["0", "1"]
    assert (tmp / "var" / "unfreeze.db").exists(), "state lives in the embedded SQLite file"
    assert (tmp / "var" / "broker").is_dir(), "messages went through the embedded filesystem broker"
