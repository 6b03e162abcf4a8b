"""The whole flow over HTTP against the real stack: upload, train a base model from scratch, fine-tune it
with gradual unfreezing, poll, read metrics and events, download the model."""

import hashlib
import json

import pytest
from safetensors import safe_open
from sqlalchemy import create_engine, text

from tests.service.conftest import create_job, listing, upload, wait_for

FAST = {"image_size": 32, "batch_size": 32}
# ULMFiT's recipe (one group per stage, rates / 2.6) from the digits 0-4 base model, on 30 images per
# class of digits 5-9, reaches 0.94 here (deterministic on the CPU); below 0.85 something is broken.
MIN_TRANSFER_ACCURACY = 0.85


@pytest.fixture(scope="session")
def source_dataset(client, source_archive):
    response = upload(client, source_archive)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="session")
def target_dataset(client, target_archive):
    response = upload(client, target_archive, name="digits 5-9, 30 per class")
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="session")
def base_job(client, source_dataset):
    """resnet18 trained from scratch on digits 0-4: the pretrained model the fine-tuning tests start from."""
    job = create_job(client, dataset_id=source_dataset["id"], base_model="resnet18", weights=None,
                     strategy={"type": "full", "epochs_per_stage": 4, "lr_decay": 1.0},
                     hyperparameters={**FAST, "batch_size": 64})
    job = wait_for(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["val_accuracy"] > 0.9, "the base model must have learned digits 0-4"
    return job


def test_upload_describes_the_dataset(source_dataset, target_dataset, source_archive):
    assert source_dataset["classes"] == ["0", "1", "2", "3", "4"]
    assert source_dataset["num_samples"] == 901
    assert sum(source_dataset["class_counts"].values()) == 901
    assert source_dataset["has_val_split"] is False
    assert source_dataset["sha256"] == hashlib.sha256(source_archive.read_bytes()).hexdigest()
    assert source_dataset["bytes"] == source_archive.stat().st_size
    assert source_dataset["name"] == "digits-0-4"
    assert target_dataset["has_val_split"] is True
    assert target_dataset["split_counts"]["train"] == {str(d): 30 for d in range(5, 10)}
    assert target_dataset["num_samples"] == 896
    assert target_dataset["name"] == "digits 5-9, 30 per class"


def test_gradual_fine_tune_end_to_end(client, stack, base_job, target_dataset):
    job = create_job(client, dataset_id=target_dataset["id"], base_model="resnet18", weights=f"job:{base_job['id']}",
                     strategy={"type": "gradual", "epochs_per_stage": 2, "groups_per_stage": 1, "lr_decay": 2.6},
                     early_stopping={"patience": 2}, hyperparameters={**FAST, "max_epochs": 12})
    assert job["status"] == "queued"
    plan = job["strategy"]["plan"]
    assert [s["unfreeze"] for s in plan] == [["head"], ["layer4"], ["layer3"], ["layer2"], ["layer1"], ["stem"]]

    engine = create_engine(stack.database_url)
    rows_while_running = []

    def watch(polled):
        if polled["status"] == "running":
            with engine.connect() as conn:
                rows_while_running.append(conn.scalar(text("SELECT count(*) FROM metrics WHERE job_id = :id"),
                                                      {"id": job["id"]}))

    job = wait_for(client, job["id"], on_poll=watch)
    engine.dispose()
    assert job["status"] == "succeeded", job["error"]
    assert max(rows_while_running, default=0) >= 1, "metrics rows must be in Postgres while the job runs"

    metrics = listing(client, f"/v1/jobs/{job['id']}/metrics", limit=3)
    assert [m["epoch"] for m in metrics] == list(range(1, job["epoch"] + 1)), "one metrics row per epoch"
    groups = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    for m in metrics:
        stage = m["stage"]
        expected = [g for s in plan[:stage] for g in s["unfreeze"]]
        assert m["unfrozen_groups"] == expected, f"epoch {m['epoch']} trains the groups of stages 1..{stage}"
        for g in expected:
            k = len(groups) - 1 - groups.index(g)
            assert m["lr"][g] == pytest.approx(1e-3 / job["strategy"]["lr_decay"]**k), f"discriminative rate of {g}"
        assert 0 <= m["val_accuracy"] <= 1 and m["samples_per_s"] > 0 and m["duration_s"] > 0
    assert [m["stage"] for m in metrics] == sorted(m["stage"] for m in metrics)

    events = listing(client, f"/v1/jobs/{job['id']}/events", limit=5)
    types = [e["type"] for e in events]
    assert types[:3] == ["queued", "started", "stage_started"] and types[-1] == "succeeded"
    stages_started = [e["data"]["stage"] for e in events if e["type"] == "stage_started"]
    assert stages_started == list(range(1, len(stages_started) + 1)) and stages_started[-1] == job["stage"]
    assert types.count("best_restored") == len(stages_started), "best weights restored at every stage end"

    assert job["progress"] == 1.0 and job["best"]["monitor"] == "val_loss"
    assert job["best"]["value"] == pytest.approx(min(m["val_loss"] for m in metrics))
    assert job["result"]["val_accuracy"] >= MIN_TRANSFER_ACCURACY, job["result"]
    assert job["result"]["val_loss"] == pytest.approx(job["best"]["value"], rel=1e-4), "final model is the best one"
    assert job["result"]["classes"] == ["5", "6", "7", "8", "9"]

    response = client.get(f"/v1/jobs/{job['id']}/model")
    assert response.status_code == 200
    path = stack.storage / "downloaded.safetensors"
    path.write_bytes(response.content)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert f.get_tensor("fc.weight").shape == (5, 512), "torchvision key names, a 5-class head"
        assert "layer4.1.bn2.running_mean" in f.keys()
    assert meta["arch"] == "resnet18" and json.loads(meta["classes"]) == ["5", "6", "7", "8", "9"]
    assert meta["image_size"] == "32" and len(json.loads(meta["mean"])) == 3 and len(json.loads(meta["std"])) == 3
    assert meta["resize_size"] == "32" and meta["interpolation"] == "bilinear", "no margin without pretrained weights"


def test_small_patience_stops_stages_early_and_then_unfreezing(client, base_job, target_dataset):
    # A min_delta no epoch can beat makes the schedule deterministic: each stage improves once at most.
    job = create_job(client, dataset_id=target_dataset["id"], base_model="resnet18", weights=f"job:{base_job['id']}",
                     strategy={"type": "gradual", "epochs_per_stage": 5},
                     early_stopping={"patience": 1, "min_delta": 100.0}, hyperparameters=FAST)
    job = wait_for(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["stopped_reason"] == "no_improvement"
    events = listing(client, f"/v1/jobs/{job['id']}/events")
    types = [e["type"] for e in events]
    assert types.count("early_stopped") == 2, types
    assert types.count("stage_started") == 2, "unfreezing stops after the stage that did not improve"
    assert types.index("unfreezing_stopped") < types.index("succeeded")
    # Stage 1 improves once (from nothing) and stops one epoch later; stage 2 cannot improve at all.
    assert job["epoch"] == 3, "stage 1 ran 2 of its 5 epochs, stage 2 ran 1"
    assert len(listing(client, f"/v1/jobs/{job['id']}/metrics")) == 3


def test_cancel_queued_and_running_jobs(client, base_job, target_dataset):
    long = {"dataset_id": target_dataset["id"], "base_model": "resnet18", "weights": f"job:{base_job['id']}",
            "strategy": {"type": "full", "epochs_per_stage": 50}, "early_stopping": {"patience": 50},
            "hyperparameters": {**FAST, "max_epochs": 50}}
    running = create_job(client, **long)
    queued = create_job(client, **long)  # one worker: this one waits behind the first
    wait_for(client, running["id"], statuses=("running",), timeout=60)

    response = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled", "a queued job ends at once"

    response = client.post(f"/v1/jobs/{running['id']}/cancel")
    assert response.json()["status"] in ("cancel_requested", "cancelled")
    job = wait_for(client, running["id"], timeout=60)
    assert job["status"] == "cancelled" and job["stopped_reason"] == "cancelled"
    types = [e["type"] for e in listing(client, f"/v1/jobs/{running['id']}/events")]
    assert types.index("cancel_requested") < types.index("cancelled")
    assert client.get(f"/v1/jobs/{running['id']}/model").status_code == 409
    again = client.post(f"/v1/jobs/{running['id']}/cancel")
    assert again.status_code == 409 and "already ended" in again.json()["error"]["message"]
    assert wait_for(client, queued["id"])["status"] == "cancelled", "the queued job's delivery is skipped"


def test_torchvision_weights_come_from_torch_home(client, stack, target_dataset, monkeypatch):
    import torch
    import torchvision

    from worker.engine.weights import cached_weights_path

    monkeypatch.setenv("TORCH_HOME", stack.env["TORCH_HOME"])
    body = {"dataset_id": target_dataset["id"], "weights": "DEFAULT", "strategy": {"type": "head_only",
            "epochs_per_stage": 1}, "hyperparameters": FAST}
    missing = wait_for(client, create_job(client, base_model="mobilenet_v3_small", **body)["id"])
    assert missing["status"] == "failed"
    assert str(cached_weights_path("mobilenet_v3_small", "DEFAULT")) in missing["error"], "names the file it needs"

    path = cached_weights_path("resnet18", "DEFAULT")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    job = wait_for(client, create_job(client, base_model="resnet18", **body)["id"])
    assert job["status"] == "succeeded", job["error"]


def test_mobilenet_trains_from_scratch(client, target_dataset):
    job = create_job(client, dataset_id=target_dataset["id"], base_model="mobilenet_v3_small", weights=None,
                     strategy={"type": "gradual", "epochs_per_stage": 1, "groups_per_stage": 3},
                     hyperparameters=FAST)
    assert [s["unfreeze"] for s in job["strategy"]["plan"]] == [["head"], ["stage4", "stage3", "stage2"],
                                                                ["stage1", "stem"]]
    job = wait_for(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["epoch"] >= 2


def test_listings_paginate_newest_first(client, target_archive):
    ids = [upload(client, target_archive).json()["id"] for _ in range(3)]
    page = client.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client.get("/v1/datasets", params={"limit": 1, "after": ids[1]}).json()
    assert rest["data"][0]["id"] == ids[0]
    assert client.get(f"/v1/datasets/{ids[0]}").json()["id"] == ids[0]

    jobs = [create_job(client, dataset_id=ids[0], base_model="resnet18", weights=None,
                       strategy={"type": "full", "epochs_per_stage": 500},
                       early_stopping={"patience": 500}, hyperparameters={"max_epochs": 500, **FAST}) for _ in range(2)]
    for j in jobs:
        client.post(f"/v1/jobs/{j['id']}/cancel")
    for j in jobs:  # an idle worker may have started one: it then ends at its next batch
        assert wait_for(client, j["id"], timeout=60)["status"] == "cancelled"
    cancelled = listing(client, "/v1/jobs", status="cancelled", limit=1)
    positions = [[j["id"] for j in cancelled].index(x["id"]) for x in jobs]
    assert positions[1] < positions[0], "newest first"
    assert all(j["status"] == "cancelled" for j in cancelled)


def test_model_catalogue(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
    assert {"resnet18", "resnet34", "resnet50", "mobilenet_v3_small"} <= set(models)
    assert [g["name"] for g in models["resnet50"]["groups"]] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert models["resnet18"]["image_size"] == 224 and all(g["params"] > 0 for g in models["resnet18"]["groups"])
    assert models["mobilenet_v3_small"]["groups"][-1]["name"] == "head"
