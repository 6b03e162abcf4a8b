"""Tenants and API keys: another tenant's items answer exactly as missing ones, every /v1 route needs a live key,
the keys command, the per-key write rate limit, and UNFREEZE_AUTH=off."""

import re
import subprocess
import sys
import uuid

import httpx
import pytest

from scripts.digits import archive_members, digit_images, write_archive
from tests.service.conftest import ROOT, authed, new_key, start_api, stop, upload, wait_for
from tests.service.test_bad_input import assert_error

MISSING_DATASET, MISSING_JOB = "ds_000000000000000000000000", "job_000000000000000000000000"
TINY_JOB = {"base_model": "resnet18", "weights": None, "strategy": {"type": "head_only", "epochs_per_stage": 1},
            "hyperparameters": {"image_size": 16}}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory):
    members = archive_members({k: v[:20] for k, v in digit_images([0, 1]).items()})
    return write_archive(tmp_path_factory.mktemp("tenants") / "two-digits.zip", members)


@pytest.fixture(scope="module")
def owner(stack):
    with authed(stack.url, new_key(stack, unique("owner"))) as c:
        yield c


@pytest.fixture(scope="module")
def intruder(stack):
    with authed(stack.url, new_key(stack, unique("intruder"))) as c:
        yield c


@pytest.fixture(scope="module")
def owned(owner, tiny_archive):
    """The owner's dataset and succeeded job (with metrics, events and a model)."""
    dataset = upload(owner, tiny_archive).json()
    job = owner.post("/v1/jobs", json={"dataset_id": dataset["id"], **TINY_JOB}).json()
    job = wait_for(owner, job["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    return {"dataset": dataset["id"], "job": job["id"]}


# Each request names a dataset and a job; the intruder sends it with the owner's ids and with missing ones.
REQUESTS = {
    "get-dataset": lambda c, ds, job: c.get(f"/v1/datasets/{ds}"),
    "get-job": lambda c, ds, job: c.get(f"/v1/jobs/{job}"),
    "metrics": lambda c, ds, job: c.get(f"/v1/jobs/{job}/metrics"),
    "events": lambda c, ds, job: c.get(f"/v1/jobs/{job}/events"),
    "cancel": lambda c, ds, job: c.post(f"/v1/jobs/{job}/cancel"),
    "model": lambda c, ds, job: c.get(f"/v1/jobs/{job}/model"),
    "list-datasets-after": lambda c, ds, job: c.get("/v1/datasets", params={"after": ds}),
    "list-jobs-after": lambda c, ds, job: c.get("/v1/jobs", params={"after": job}),
    "job-on-dataset": lambda c, ds, job: c.post("/v1/jobs", json={"dataset_id": ds, **TINY_JOB}),
}


@pytest.mark.parametrize("name", REQUESTS, ids=list(REQUESTS))
def test_another_tenants_items_answer_as_missing_ones(owner, intruder, owned, name):
    request = REQUESTS[name]
    theirs = request(intruder, owned["dataset"], owned["job"])
    missing = request(intruder, MISSING_DATASET, MISSING_JOB)
    assert theirs.status_code in (404, 422), theirs.text
    assert theirs.status_code == missing.status_code, "the same answer as for an id that does not exist"
    as_missing = theirs.text.replace(owned["dataset"], MISSING_DATASET).replace(owned["job"], MISSING_JOB)
    assert as_missing == missing.text
    assert request(owner, owned["dataset"], owned["job"]).status_code not in (404, 422), "the owner sees them"


def test_fine_tuning_another_tenants_model_is_refused_as_missing(owner, intruder, owned, tiny_archive):
    own_dataset = upload(intruder, tiny_archive).json()["id"]
    body = {"dataset_id": own_dataset, **TINY_JOB, "weights": f"job:{owned['job']}"}
    theirs = intruder.post("/v1/jobs", json=body)
    assert_error(theirs, 422, f"weights 'job:{owned['job']}': no job with that id", "weights")
    missing = intruder.post("/v1/jobs", json={**body, "weights": f"job:{MISSING_JOB}"})
    assert theirs.json()["error"]["message"].replace(owned["job"], MISSING_JOB) == missing.json()["error"]["message"]
    assert owner.post("/v1/jobs", json={**body, "dataset_id": owned["dataset"]}).status_code == 201


def test_listings_show_only_the_tenants_own_items(owner, intruder, owned, tiny_archive, client):
    own_dataset = upload(intruder, tiny_archive).json()["id"]
    for path in ("/v1/datasets", "/v1/jobs"):
        seen = {item["id"] for item in intruder.get(path, params={"limit": 100}).json()["data"]}
        assert not seen & {owned["dataset"], owned["job"]}, f"{path} shows another tenant's items"
    assert [d["id"] for d in intruder.get("/v1/datasets").json()["data"]][0] == own_dataset
    for status in ("succeeded", "cancelled", "queued"):
        assert owned["job"] not in {j["id"] for j in intruder.get("/v1/jobs", params={"status": status}).json()["data"]}
    owners_datasets = {d["id"] for d in owner.get("/v1/datasets", params={"limit": 100}).json()["data"]}
    assert owned["dataset"] in owners_datasets and own_dataset not in owners_datasets
    assert own_dataset not in {d["id"] for d in client.get("/v1/datasets", params={"limit": 100}).json()["data"]}


def test_cancelling_another_tenants_running_job_leaves_it_alone(owner, intruder, owned):
    job = owner.post("/v1/jobs", json={"dataset_id": owned["dataset"], "base_model": "resnet18", "weights": None,
                                       "strategy": {"type": "full", "epochs_per_stage": 50},
                                       "hyperparameters": {"image_size": 16, "max_epochs": 50}}).json()
    assert_error(intruder.post(f"/v1/jobs/{job['id']}/cancel"), 404, "no job with id")
    assert owner.get(f"/v1/jobs/{job['id']}").json()["status"] in ("queued", "running")
    assert owner.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert wait_for(owner, job["id"], timeout=60)["status"] == "cancelled"


def v1_operations(stack) -> list[tuple[str, str]]:
    """Every (method, path) under /v1 in the live OpenAPI schema, with placeholder ids."""
    paths = httpx.get(f"{stack.url}/openapi.json").json()["paths"]
    return sorted((method.upper(), re.sub(r"\{[^}]+\}", "x", path))
                  for path, operations in paths.items() if path.startswith("/v1") for method in operations)


@pytest.mark.parametrize("header", [None, "Bearer ufz_not-a-key", "Basic dXNlcjpwYXNz", "Bearer"],
                         ids=["missing", "wrong", "not-bearer", "empty-bearer"])
def test_every_v1_route_needs_a_key(stack, header):
    operations = v1_operations(stack)
    assert len(operations) >= 12 and ("POST", "/v1/datasets") in operations
    headers = {"Authorization": header} if header else {}
    for method, path in operations + [("GET", "/v1/nowhere")]:
        response = httpx.request(method, f"{stack.url}{path}", headers=headers)
        assert_error(response, 401, "API key", "Authorization")
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
    assert httpx.get(f"{stack.url}/healthz").status_code == 200, "/healthz is open"


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(stack):
    # Over the upload limit and without a key: the key is checked first.
    response = httpx.post(f"{stack.url}/v1/datasets", files={"file": ("big.zip", b"x" * (4 * 1024 * 1024))})
    assert_error(response, 401, "API key")


def keys_cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "api.keys", *args], cwd=ROOT, env=stack.env, capture_output=True,
                          text=True)


def test_keys_command_creates_lists_and_revokes(stack):
    tenant = unique("cli")
    created = keys_cli(stack, "create", "--tenant", tenant)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"ufz_[A-Za-z0-9_-]{43}", key), "the last line is the key alone"
    key_id = re.search(r"\b(key_[0-9a-f]+)\b", created.stdout).group(1)
    with authed(stack.url, key) as c:
        assert c.get("/v1/datasets").json() == {"data": [], "has_more": False}, "a new tenant starts empty"

    listed = keys_cli(stack, "list").stdout
    row = next(line for line in listed.splitlines() if line.startswith(key_id))
    assert tenant in row and key[:12] in row and row.rstrip().endswith("-"), row
    assert key not in listed, "the key itself is never shown again"

    second = keys_cli(stack, "create", "--tenant", tenant).stdout.strip().splitlines()[-1]
    revoked = keys_cli(stack, "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    with authed(stack.url, key) as c:
        assert_error(c.get("/v1/datasets"), 401, "unknown or revoked", "Authorization")
    with authed(stack.url, second) as c:
        assert c.get("/v1/datasets").status_code == 200, "revoking one key leaves the tenant's others working"
    row = next(line for line in keys_cli(stack, "list").stdout.splitlines() if line.startswith(key_id))
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$", row), "list shows when it was revoked"

    unknown = keys_cli(stack, "revoke", "key_nope")
    assert unknown.returncode == 1 and "no key with id 'key_nope'" in unknown.stderr


def second_api(stack, tmp_path_factory, name: str, **env: str):
    """Another API process on the stack's database, with `env` changed; yields its URL."""
    proc, url = start_api({**stack.env, **env}, tmp_path_factory.mktemp(name) / "api.log")
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def limited_api(stack, tmp_path_factory):
    """A limit of 3 writes per key per minute."""
    yield from second_api(stack, tmp_path_factory, "limited", UNFREEZE_RATE_LIMIT_PER_MINUTE="3")


def test_writes_over_the_rate_limit_get_429_with_retry_after(stack, limited_api):
    with authed(limited_api, new_key(stack, unique("busy"))) as busy, \
            authed(limited_api, new_key(stack, unique("calm"))) as calm:
        for _ in range(3):
            assert_error(busy.post(f"/v1/jobs/{MISSING_JOB}/cancel"), 404)
        refused = busy.post("/v1/jobs", json={"dataset_id": MISSING_DATASET, "base_model": "resnet18"})
        assert_error(refused, 429, "3 write requests in the last minute")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert busy.get("/v1/jobs").status_code == 200, "reads are not limited"
        assert_error(calm.post(f"/v1/jobs/{MISSING_JOB}/cancel"), 404, "no job")  # each key has its own budget
    assert_error(httpx.post(f"{limited_api}/v1/jobs/{MISSING_JOB}/cancel"), 401)  # no key: 401, never 429


@pytest.fixture(scope="module")
def open_api(stack, tmp_path_factory):
    """UNFREEZE_AUTH=off."""
    yield from second_api(stack, tmp_path_factory, "open", UNFREEZE_AUTH="off")


def test_auth_off_serves_everyone_as_the_local_tenant(stack, open_api, tiny_archive, client):
    with httpx.Client(base_url=open_api, timeout=60) as anyone:
        assert anyone.get("/v1/models").status_code == 200
        dataset = upload(anyone, tiny_archive).json()
        assert anyone.get(f"/v1/datasets/{dataset['id']}").status_code == 200
    with authed(stack.url, new_key(stack, "local")) as local:
        assert local.get(f"/v1/datasets/{dataset['id']}").status_code == 200, "it is the tenant local's"
    assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 404
    with authed(open_api, "ufz_ignored") as c:
        assert c.get(f"/v1/datasets/{dataset['id']}").status_code == 200, "a key is ignored when auth is off"
