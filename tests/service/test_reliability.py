"""Jobs survive faults, with real processes: a SIGKILLed worker, a duplicated task message, a Redis
restart and a Postgres outage. This module runs its own stack (own database, private Redis, short
leases) so that it can break things."""

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from models import job_state
from models.broker import TRAIN_TASK
from models.tables import Job, utcnow
from tests.service.conftest import BIN, PG_ADMIN, ROOT, free_port, listing, stop, wait_for, wait_http, wait_log
from tests.service.faults import OutageProxy, PrivateRedis

LEASE_S = 6
SPEC = {"base_model": "resnet18", "weights": None, "strategy": {"type": "full", "epochs_per_stage": 6, "lr_decay": 1},
        "early_stopping": {"patience": 6}, "hyperparameters": {"image_size": 32, "batch_size": 32}}


@dataclass
class FaultyStack:
    url: str
    env: dict[str, str]
    database_url: str
    redis: PrivateRedis
    db_proxy: OutageProxy
    tmp: Path
    workers: list[subprocess.Popen]

    def start_worker(self, name: str) -> subprocess.Popen:
        log = self.tmp / f"worker-{name}.log"
        proc = subprocess.Popen([BIN / "celery", "-A", "worker", "worker", "--loglevel", "INFO",
                                 "--without-mingle", "--without-gossip", "--hostname", f"{name}@%h"],
                                cwd=ROOT, env=self.env, stdout=log.open("a"), stderr=subprocess.STDOUT)
        wait_log(log, "ready.", proc)
        self.workers.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"worker-{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Iterator[FaultyStack]:
    tmp = tmp_path_factory.mktemp("faulty")
    name = f"unfreeze_faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    private_redis = PrivateRedis(free_port(), tmp)
    private_redis.start()
    proxy = OutageProxy(5432)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("UNFREEZE_", "CELERY_"))},
           "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{name}",
           "CELERY_BROKER_URL": private_redis.url, "UNFREEZE_STORAGE": str(tmp / "storage"),
           "UNFREEZE_VAR": str(tmp / "var"), "UNFREEZE_AUTH": "off", "UNFREEZE_LEASE_SECONDS": str(LEASE_S),
           "UNFREEZE_REAPER_INTERVAL_SECONDS": "1", "UNFREEZE_MAX_ATTEMPTS": "3", "PYTHONUNBUFFERED": "1"}
    subprocess.run([BIN / "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)
    api_log = tmp / "api.log"
    api = subprocess.Popen([BIN / "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)],
                           cwd=ROOT, env=env, stdout=api_log.open("w"), stderr=subprocess.STDOUT)
    stack = FaultyStack(f"http://127.0.0.1:{port}", env, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
                        private_redis, proxy, tmp, [])
    try:
        wait_http(f"{stack.url}/healthz", api, api_log)
        yield stack
    finally:
        for proc in [api, *stack.workers]:
            stop(proc)
        private_redis.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def http(faulty) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=faulty.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def dataset_id(http, target_archive) -> str:
    with target_archive.open("rb") as f:
        response = http.post("/v1/datasets", files={"file": (target_archive.name, f)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture(autouse=True)
def no_workers_left(faulty):
    yield
    for proc in faulty.workers:
        stop(proc)
    faulty.workers.clear()


def submit(http, dataset_id, **changes) -> str:
    response = http.post("/v1/jobs", json={"dataset_id": dataset_id, **SPEC, **changes})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def metrics_of(http, job_id) -> list[dict]:
    return listing(http, f"/v1/jobs/{job_id}/metrics")


def wait_metrics(http, job_id, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(metrics_of(http, job_id)) < count:
        assert time.monotonic() < deadline, f"job {job_id} did not reach {count} epochs"
        time.sleep(0.1)


def test_sigkilled_worker_costs_at_most_the_current_epoch(faulty, http, dataset_id):
    first = faulty.start_worker("first")
    job_id = submit(http, dataset_id)
    wait_metrics(http, job_id, 2)
    time.sleep(0.3)  # into epoch 3, or still writing epoch 2's checkpoint
    first.send_signal(signal.SIGKILL)
    first.wait()
    rows_at_kill = len(metrics_of(http, job_id))
    faulty.start_worker("second")
    job = wait_for(http, job_id, timeout=180)
    assert job["status"] == "succeeded", job["error"]

    metrics = metrics_of(http, job_id)
    assert [m["epoch"] for m in metrics] == list(range(1, job["epoch"] + 1)), "one row per epoch, none lost or doubled"
    events = listing(http, f"/v1/jobs/{job_id}/events")
    resumed = [e for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["data"]["attempt"] == 2
    # An epoch's row is written just before its checkpoint, so the kill may land between the two.
    assert rows_at_kill - 1 <= resumed[0]["data"]["from_epoch"] <= rows_at_kill, \
        "resumed from the last checkpoint: at most the current epoch is lost"
    assert resumed[0]["data"]["from_epoch"] >= 1
    assert [e["type"] for e in events].count("requeued") == 1

    uninterrupted = wait_for(http, submit(http, dataset_id), timeout=180)
    assert uninterrupted["epoch"] == job["epoch"], "the same number of epochs as an uninterrupted run"
    again = metrics_of(http, uninterrupted["id"])
    assert [round(m["val_loss"], 5) for m in again] == [round(m["val_loss"], 5) for m in metrics], \
        "the resumed run continues exactly where the killed one was"


def test_duplicate_delivery_trains_once(faulty, http, dataset_id):
    faulty.start_worker("a")
    faulty.start_worker("b")
    job_id = submit(http, dataset_id, strategy={"type": "full", "epochs_per_stage": 3, "lr_decay": 1})
    producer = Celery(broker=faulty.redis.url)
    producer.send_task(TRAIN_TASK, args=[job_id], queue="unfreeze")  # the broker delivering the same job a second time
    producer.send_task(TRAIN_TASK, args=[job_id], queue="unfreeze")
    job = wait_for(http, job_id, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    types = [e["type"] for e in listing(http, f"/v1/jobs/{job_id}/events")]
    assert types.count("started") == 1 and "resumed" not in types, types
    assert [m["epoch"] for m in metrics_of(http, job_id)] == [1, 2, 3]
    time.sleep(1)
    skipped = (faulty.log("a") + faulty.log("b")).count(f"job {job_id} is not claimable")
    assert skipped == 2, "both extra deliveries were refused by the conditional claim"


def test_redis_restart_during_a_running_job(faulty, http, dataset_id):
    faulty.start_worker("solo")
    job_id = submit(http, dataset_id)
    wait_metrics(http, job_id, 2)
    faulty.redis.restart(down_s=1.0)
    job = wait_for(http, job_id, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert [m["epoch"] for m in metrics_of(http, job_id)] == list(range(1, job["epoch"] + 1))
    after = wait_for(http, submit(http, dataset_id, strategy={"type": "head_only", "epochs_per_stage": 1}),
                     timeout=120)
    assert after["status"] == "succeeded", "the API and the worker reconnected to the restarted broker"


def test_postgres_outage_gets_503_and_loses_nothing(faulty, http, dataset_id):
    faulty.start_worker("pg")
    job_id = submit(http, dataset_id)
    wait_metrics(http, job_id, 1)
    import threading

    outage = threading.Thread(target=faulty.db_proxy.outage, args=(3.0,))
    outage.start()
    time.sleep(0.5)
    during = http.get(f"/v1/jobs/{job_id}")
    outage.join()
    assert during.status_code == 503, during.text
    assert during.json()["error"]["type"] == "service_unavailable" and during.headers["retry-after"]
    deadline = time.monotonic() + 30
    while http.get(f"/v1/jobs/{job_id}").status_code != 200:
        assert time.monotonic() < deadline, "the API recovers once the database is back"
        time.sleep(0.2)
    job = wait_for(http, job_id, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert [m["epoch"] for m in metrics_of(http, job_id)] == list(range(1, job["epoch"] + 1)), \
        "the worker retried its writes: no metrics row lost"


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(faulty, http, dataset_id):
    job_id = submit(http, dataset_id)
    engine = create_engine(faulty.database_url)
    with Session(engine) as session, session.begin():
        for attempt in (1, 2, 3):  # three workers claim it and die: their leases run out at once
            assert job_state.claim(session, job_id, worker=f"w{attempt}", lease_s=-1, max_attempts=3) == attempt
        assert job_state.claim(session, job_id, worker="w4", lease_s=60, max_attempts=3) is None
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job.status == "failed" and "giving up after 3 attempts" in job.error
        assert job.finished_at <= utcnow()
    engine.dispose()


def test_cancel_stops_a_running_job_promptly(faulty, http, dataset_id):
    faulty.start_worker("cancel")
    job_id = submit(http, dataset_id, strategy={"type": "full", "epochs_per_stage": 50, "lr_decay": 1},
                    early_stopping={"patience": 50}, hyperparameters={"image_size": 32, "max_epochs": 50})
    wait_metrics(http, job_id, 1)
    asked = time.monotonic()
    assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = wait_for(http, job_id, timeout=30, every=0.05)
    # The lease keeper polls every second and the loop reads its flag after every batch (a batch of 32
    # images at 32x32 takes well under a second here); validation of 746 images is the longest gap.
    assert job["status"] == "cancelled" and time.monotonic() - asked < 4.0
