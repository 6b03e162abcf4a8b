"""Every strategy runs end to end through the API, with its stages as planned."""

import pytest

from tests.service.conftest import create_job, listing, wait_for

STRATEGIES = {
    "gradual": {"type": "gradual", "epochs_per_stage": 1, "groups_per_stage": 2},
    "explicit": {"type": "explicit", "stages": [{"unfreeze": ["head", "layer4"], "epochs": 1},
                                                {"unfreeze": ["layer3", "layer2"], "epochs": 1, "lr": 5e-4}]},
    "full": {"type": "full", "epochs_per_stage": 2, "schedule": "cosine"},
    "head_only": {"type": "head_only", "epochs_per_stage": 2, "schedule": "one_cycle"},
    "lp_ft": {"type": "lp_ft", "epochs_per_stage": 1},
    "chain_thaw": {"type": "chain_thaw", "epochs_per_stage": 1, "schedule": "slanted_triangular"},
    "auto": {"type": "auto", "epochs_per_stage": 1, "groups_per_stage": 2},
}


@pytest.fixture(scope="module")
def small_target(client, target_archive):
    with target_archive.open("rb") as f:
        response = client.post("/v1/datasets", files={"file": (target_archive.name, f)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.parametrize("name", list(STRATEGIES), ids=list(STRATEGIES))
def test_strategy_runs_end_to_end(client, small_target, name):
    # min_delta 0 and a patience longer than any stage: every planned stage runs.
    job = create_job(client, dataset_id=small_target, base_model="resnet18", weights=None,
                     strategy=STRATEGIES[name], early_stopping={"patience": 5, "min_delta": 0.0},
                     hyperparameters={"image_size": 16, "batch_size": 64, "max_epochs": 20})
    plan = job["strategy"]["plan"]
    job = wait_for(client, job["id"], timeout=240)
    assert job["status"] == "succeeded", job["error"]
    events = listing(client, f"/v1/jobs/{job['id']}/events")
    started = [e["data"] for e in events if e["type"] == "stage_started"]
    metrics = listing(client, f"/v1/jobs/{job['id']}/metrics")
    assert [m["epoch"] for m in metrics] == list(range(1, job["epoch"] + 1))
    assert started[0]["unfrozen_groups"] == plan[0]["train"]
    for stage in started:
        planned = plan[stage["stage"] - 1]
        if planned["auto"]:
            decision = next(e["data"] for e in events
                            if e["type"] == "unfreeze_decision" and e["data"]["stage"] == stage["stage"])
            assert stage["unfreeze"] == decision["unfreeze"] and len(decision["chosen"]) <= 2
        else:
            assert stage["unfrozen_groups"] == planned["train"], f"stage {stage['stage']} trains what was planned"
        rows = [m for m in metrics if m["stage"] == stage["stage"]]
        assert rows and all(m["unfrozen_groups"] == stage["unfrozen_groups"] for m in rows)
    if name == "chain_thaw":
        assert len(started) == len(plan), "chain-thaw runs every step, improving or not"
