"""Every bad input gets a 4xx with the single error body, stores nothing, and leaves the service serving."""

import io
import tarfile
import zipfile

import pytest

from scripts.digits import archive_members, digit_images
from tests.service.conftest import UPLOAD_LIMIT

PNG = archive_members({"a": digit_images([0])["0"][:1]})[0][1]


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def two_classes(**extra: bytes) -> dict[str, bytes]:
    return {"cat/1.png": PNG, "cat/2.png": PNG, "dog/1.png": PNG, "dog/2.png": PNG, **extra}


BAD_UPLOADS = [
    ("not-an-archive", b"just some text, not an archive", 400, "not a .zip or .tar.gz"),
    ("empty-file", b"", 400, "empty"),
    ("truncated-zip", zip_of(two_classes())[:-30], 400, "corrupt or truncated"),
    ("truncated-tar-gz", tar_of(two_classes())[:-20], 400, "corrupt or truncated"),
    ("no-images", zip_of({"README.txt": b"hello"}), 400, "holds no images"),
    ("single-class", zip_of({"cat/1.png": PNG, "cat/2.png": PNG}), 400, "at least 2 class"),
    ("class-with-one-image", zip_of({**two_classes(), "bird/1.png": PNG}), 400,
     "class 'bird' has 1 image; each class needs at least 2"),
    ("undecodable-images", zip_of(two_classes(**{"cat/notes.png": b"text renamed .png", "dog/x.jpg": PNG[:40]})),
     400, r"2 file\(s\) are not decodable images: cat/notes.png .*dog/x.jpg"),
    ("absolute-path", zip_of(two_classes(**{"/etc/evil.png": PNG})), 400, "absolute path or '..'"),
    ("dot-dot-path", tar_of(two_classes(**{"../evil/x.png": PNG})), 400, "absolute path or '..'"),
    ("image-outside-class-folder", zip_of(two_classes(**{"loose.png": PNG})), 400, "not inside a class folder"),
]


def stored_state(client, stack) -> tuple[int, list[str]]:
    datasets = client.get("/v1/datasets", params={"limit": 100}).json()["data"]
    folder = stack.storage / "datasets"
    return len(datasets), sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_error(response, status: int, match: str | None = None, param: str | None = None) -> None:
    import re

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"type", "message", "param"}
    assert "Traceback" not in error["message"]
    if match:
        assert re.search(match, error["message"]), error["message"]
    if param:
        assert error["param"] == param


@pytest.mark.parametrize(("name", "payload", "status", "match"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload_is_refused_and_nothing_is_stored(client, stack, name, payload, status, match):
    before = stored_state(client, stack)
    response = client.post("/v1/datasets", files={"file": (f"{name}.zip", payload)})
    assert_error(response, status, match, "file")
    assert stored_state(client, stack) == before, "nothing half-stored"
    assert client.get("/healthz").status_code == 200


def test_junk_from_archivers_is_ignored(client):
    payload = zip_of(two_classes(**{"__MACOSX/cat/._1.png": b"junk", "cat/.DS_Store": b"junk", ".hidden": b"x"}))
    response = client.post("/v1/datasets", files={"file": ("mac.zip", payload)})
    assert response.status_code == 201, response.text
    assert response.json()["class_counts"] == {"cat": 2, "dog": 2}


def test_one_wrapping_folder_is_accepted(client):
    payload = zip_of({f"pets/{k}": v for k, v in two_classes().items()})
    response = client.post("/v1/datasets", files={"file": ("pets.zip", payload)})
    assert response.status_code == 201 and response.json()["classes"] == ["cat", "dog"]


def test_wrong_multipart_field(client):
    response = client.post("/v1/datasets", files={"archive": ("x.zip", zip_of(two_classes()))})
    assert_error(response, 422, "multipart/form-data field 'file'", "file")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_over_the_limit_gets_413(client, stack, chunked):
    before = stored_state(client, stack)
    body = b"x" * (UPLOAD_LIMIT + 1024)
    if chunked:
        boundary = "unfreeze-boundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.zip\"\r\n"
                "Content-Type: application/zip\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def stream():
            yield head
            for i in range(0, len(body), 65536):
                yield body[i:i + 65536]
            yield tail

        response = client.post("/v1/datasets", content=stream(),
                               headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    else:
        response = client.post("/v1/datasets", files={"file": ("big.zip", body)})
    assert_error(response, 413, "limit")
    assert stored_state(client, stack) == before
    assert client.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def small_dataset(client):
    response = client.post("/v1/datasets", files={"file": ("small.zip", zip_of(two_classes()))})
    assert response.status_code == 201
    return response.json()["id"]


BAD_JOBS = [
    ("unknown-base-model", {"base_model": "resnet9000"}, 422, "unknown base_model 'resnet9000'", "base_model"),
    ("unknown-group", {"strategy": {"type": "explicit", "stages": [{"unfreeze": ["head", "layer9"]}]}}, 422,
     "stage 1 names unknown group 'layer9'", "strategy.stages[0].unfreeze"),
    ("group-twice", {"strategy": {"type": "explicit", "stages": [{"unfreeze": ["head"]}, {"unfreeze": ["head"]}]}},
     422, "unfreezes 'head' again", "strategy.stages[1].unfreeze"),
    ("explicit-without-stages", {"strategy": {"type": "explicit"}}, 422, "needs strategy.stages", "strategy"),
    ("zero-lr", {"strategy": {"lr": 0}}, 422, "greater than 0", "strategy.lr"),
    ("negative-lr", {"strategy": {"lr": -0.1}}, 422, "greater than 0", "strategy.lr"),
    ("zero-epochs-per-stage", {"strategy": {"epochs_per_stage": 0}}, 422, "greater than 0", "strategy.epochs_per_stage"),
    ("zero-batch-size", {"hyperparameters": {"batch_size": 0}}, 422, "greater than or equal to 2",
     "hyperparameters.batch_size"),
    ("validation-split-0", {"validation_split": 0}, 422, "greater than 0", "validation_split"),
    ("validation-split-1", {"validation_split": 1}, 422, "less than 1", "validation_split"),
    ("unknown-field", {"stratgy": {}}, 422, "unknown field 'stratgy'", "stratgy"),
    ("unknown-weights", {"weights": "IMAGENET9K"}, 422, "unknown weights 'IMAGENET9K'", "weights"),
    ("weights-of-missing-job", {"weights": "job:job_nope"}, 422, "no job with that id", "weights"),
    ("vit-custom-image-size", {"base_model": "vit_b_16", "hyperparameters": {"image_size": 64}}, 422,
     "only takes 224x224", "hyperparameters.image_size"),
    ("image-too-small-for-alexnet", {"base_model": "alexnet", "hyperparameters": {"image_size": 32}}, 422,
     "alexnet needs images of at least 63x63 px", "hyperparameters.image_size"),
    ("unknown-dataset", {"dataset_id": "ds_missing"}, 404, "no dataset with id 'ds_missing'", "dataset_id"),
]


@pytest.mark.parametrize(("name", "change", "status", "match", "param"), BAD_JOBS, ids=[b[0] for b in BAD_JOBS])
def test_bad_job_is_refused_and_nothing_is_stored(client, small_dataset, name, change, status, match, param):
    before = len(client.get("/v1/jobs", params={"limit": 100}).json()["data"])
    body = {"dataset_id": small_dataset, "base_model": "resnet18", **change}
    assert_error(client.post("/v1/jobs", json=body), status, match, param)
    assert len(client.get("/v1/jobs", params={"limit": 100}).json()["data"]) == before
    assert client.get("/healthz").status_code == 200


def test_unknown_ids_and_cursors(client):
    assert_error(client.get("/v1/jobs/job_missing"), 404, "no job with id 'job_missing'")
    assert_error(client.get("/v1/jobs/job_missing/metrics"), 404)
    assert_error(client.post("/v1/jobs/job_missing/cancel"), 404)
    assert_error(client.get("/v1/datasets/ds_missing"), 404, "no dataset")
    assert_error(client.get("/v1/jobs", params={"after": "job_missing"}), 422, "earlier page", "after")
    assert_error(client.get("/v1/jobs", params={"status": "sleeping"}), 422, param="status")
    assert_error(client.get("/v1/nowhere"), 404)


@pytest.mark.parametrize("path", ["/v1/jobs/a%00b", "/v1/datasets/a%00b", "/v1/jobs/a%00b/events",
                                  "/v1/jobs?after=a%00b", "/v1/datasets?after=a%00b"],
                         ids=["job", "dataset", "events", "jobs-after", "datasets-after"])
def test_nul_characters_are_refused_not_a_server_error(client, path):
    assert_error(client.get(path), 422, "NUL")


def test_nul_characters_in_a_job_request_are_refused(client, small_dataset):
    assert_error(client.post("/v1/jobs", json={"dataset_id": "ds_\x00", "base_model": "resnet18"}), 422, "NUL")
    assert_error(client.post("/v1/jobs", json={"dataset_id": small_dataset, "base_model": "resnet18",
                                               "weights": "job:\x00"}), 422, "NUL")


@pytest.mark.parametrize("after", ["99999999999999999999", "\u00b2", "-1"],
                         ids=["out-of-range", "superscript", "negative"])
def test_bad_metric_and_event_cursors(client, small_dataset, after):
    job = client.post("/v1/jobs", json={"dataset_id": small_dataset, "base_model": "resnet18", "weights": None,
                                        "strategy": {"type": "head_only", "epochs_per_stage": 1},
                                        "hyperparameters": {"image_size": 16}}).json()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    for rows in ("metrics", "events"):
        assert_error(client.get(f"/v1/jobs/{job['id']}/{rows}", params={"after": after}), 422, "earlier page", "after")
