"""`Idempotency-Key` on POST /v1/datasets and POST /v1/jobs: a retry returns the first response and stores
nothing new, another request with the same key is a 409, failures free the key, concurrent first uses create once."""

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.service.conftest import listing
from tests.service.test_bad_input import assert_error, two_classes, zip_of

TINY_JOB = {"base_model": "resnet18", "weights": None, "strategy": {"type": "head_only", "epochs_per_stage": 1},
            "hyperparameters": {"image_size": 16, "max_epochs": 1}}


def key() -> str:
    return f"retry-{uuid.uuid4()}"


def post_dataset(client, payload: bytes, idempotency_key: str | None, **form):
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return client.post("/v1/datasets", files={"file": ("pets.zip", payload)}, data=form, headers=headers)


def post_job(client, body: dict, idempotency_key: str):
    return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": idempotency_key})


def stored_datasets(client, stack) -> tuple[int, int]:
    folder = stack.storage / "datasets"
    return len(listing(client, "/v1/datasets", limit=100)), len(list(folder.iterdir())) if folder.exists() else 0


@pytest.fixture(scope="module")
def dataset_id(client):
    return post_dataset(client, zip_of(two_classes()), None).json()["id"]


def test_a_retried_upload_returns_the_first_dataset(client, stack):
    k, payload = key(), zip_of(two_classes())
    first = post_dataset(client, payload, k, name="pets")
    assert first.status_code == 201, first.text
    before = stored_datasets(client, stack)
    again = post_dataset(client, payload, k, name="pets")
    assert again.status_code == 201 and again.json() == first.json(), "the same status and body"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert stored_datasets(client, stack) == before, "no new row, no new folder"


@pytest.mark.parametrize("change", ["other-name", "other-file"])
def test_an_upload_reusing_a_key_for_another_request_gets_409(client, stack, change):
    k, payload = key(), zip_of(two_classes())
    assert post_dataset(client, payload, k, name="pets").status_code == 201
    before = stored_datasets(client, stack)
    other = post_dataset(client, payload, k, name="cats") if change == "other-name" else \
        post_dataset(client, zip_of(two_classes(**{"cat/3.png": two_classes()["cat/1.png"]})), k, name="pets")
    assert_error(other, 409, "already used for a different request to POST /v1/datasets", "Idempotency-Key")
    assert stored_datasets(client, stack) == before


def test_a_retried_job_returns_the_first_job(client, dataset_id):
    k, body = key(), {"dataset_id": dataset_id, **TINY_JOB}
    first = post_job(client, body, k)
    assert first.status_code == 201, first.text
    before = len(listing(client, "/v1/jobs", limit=100))
    # The same request, written differently: key order and whitespace do not matter.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    again = client.post("/v1/jobs", content=reordered,
                        headers={"Idempotency-Key": k, "Content-Type": "application/json"})
    assert again.status_code == 201 and again.json() == first.json(), "the same status and body"
    assert len(listing(client, "/v1/jobs", limit=100)) == before, "no second job"


def test_a_job_reusing_a_key_for_another_request_gets_409(client, dataset_id):
    k, body = key(), {"dataset_id": dataset_id, **TINY_JOB}
    assert post_job(client, body, k).status_code == 201
    before = len(listing(client, "/v1/jobs", limit=100))
    assert_error(post_job(client, {**body, "seed": 7}, k), 409, "already used for a different request to "
                 "POST /v1/jobs", "Idempotency-Key")
    assert len(listing(client, "/v1/jobs", limit=100)) == before


def test_keys_are_scoped_per_tenant_and_endpoint(client, tenant_client, dataset_id):
    k = key()
    job = post_job(client, {"dataset_id": dataset_id, **TINY_JOB}, k)
    assert job.status_code == 201
    dataset = post_dataset(client, zip_of(two_classes()), k)
    assert dataset.status_code == 201 and dataset.json()["id"] != job.json()["id"], "another endpoint, another key"
    theirs = post_dataset(tenant_client(f"other-{uuid.uuid4().hex[:8]}"), zip_of(two_classes()), k)
    assert theirs.status_code == 201 and theirs.json()["id"] != dataset.json()["id"], "another tenant's key"


def test_a_failed_request_frees_its_key(client, dataset_id):
    k = key()
    assert_error(post_job(client, {"dataset_id": "ds_missing", **TINY_JOB}, k), 404)
    assert post_job(client, {"dataset_id": dataset_id, **TINY_JOB}, k).status_code == 201, "the retry goes ahead"

    k = key()
    assert_error(post_dataset(client, b"not an archive", k), 400)
    assert post_dataset(client, zip_of(two_classes()), k).status_code == 201


def test_concurrent_first_uses_create_once(client, stack, target_archive):
    k, payload = key(), target_archive.read_bytes()  # about 900 images to decode: the requests overlap
    before = stored_datasets(client, stack)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: post_dataset(client, payload, k), range(4)))
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created) == 1, [r.text for r in responses]
    for r in responses:
        if r.status_code != 201:
            assert_error(r, 409, "still in progress", "Idempotency-Key")
    assert stored_datasets(client, stack) == (before[0] + 1, before[1] + 1), "stored once"


def test_an_overlong_key_is_refused(client, dataset_id):
    assert_error(post_job(client, {"dataset_id": dataset_id, **TINY_JOB}, "k" * 256), 422, param="Idempotency-Key")
