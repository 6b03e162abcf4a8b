"""The real stack for integration tests: a fresh Postgres database, Redis, a `celery worker` process and
the API served by uvicorn, all started once per test session, with an API key of the tenant "tests"."""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from api.keys import create_key

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
UPLOAD_LIMIT = 3 * 1024 * 1024
RATE_LIMIT = 100_000  # writes per key per minute: never reached by the suite (test_tenants tests a small one)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


def wait_log(log: Path, text: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"'{text}' not in {log} after {timeout}s:\n{log.read_text()[-3000:]}")


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    database_url: str
    storage: Path
    worker_log: Path
    api_log: Path
    key: str  # of the tenant "tests", created with `python -m api.keys create`


def _check_services() -> None:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:  # the message says how to fix the machine, not the test
        pytest.exit(f"Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379) must be running: {exc}. "
                    "`.ci/run` starts them; DEVELOPERS.md has the commands.", returncode=3)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [BIN / "celery", "-A", "worker", "worker", "--loglevel", "INFO", "-Q", env["UNFREEZE_QUEUE"],
         "--without-mingle", "--without-gossip", "--hostname", f"test-{uuid.uuid4().hex[:6]}@%h"],
        cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)
    wait_log(log, "ready.", proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    _check_services()
    tmp = tmp_path_factory.mktemp("stack")
    name = f"unfreeze_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("UNFREEZE_", "CELERY_"))},
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": REDIS_URL,
        "UNFREEZE_QUEUE": f"test-{name}",
        "UNFREEZE_STORAGE": str(tmp / "storage"),
        "UNFREEZE_VAR": str(tmp / "var"),
        "UNFREEZE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "UNFREEZE_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
        "TORCH_HOME": str(tmp / "torch"),
        "PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run([BIN / "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = new_key_with_cli(env, "tests")
    worker_log, api_log = tmp / "worker.log", tmp / "api.log"
    worker = start_worker(env, worker_log)
    api = subprocess.Popen([BIN / "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)],
                           cwd=ROOT, env=env, stdout=api_log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", api, api_log)
        yield Stack(f"http://127.0.0.1:{port}", env, database_url, tmp / "storage", worker_log, api_log, key)
    finally:
        stop(api)
        stop(worker)
        redis.Redis.from_url(REDIS_URL).delete(env["UNFREEZE_QUEUE"])
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def new_key_with_cli(env: dict[str, str], tenant: str) -> str:
    """A new API key for `tenant`, made by `python -m api.keys create`, which prints it as its last line."""
    run = subprocess.run([sys.executable, "-m", "api.keys", "create", "--tenant", tenant], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return run.stdout.strip().splitlines()[-1]


def new_key(stack: Stack, tenant: str) -> str:
    """A new API key for `tenant` (created if needed), made directly in the stack's database."""
    engine = create_engine(stack.database_url)
    try:
        with Session(engine) as session:
            _, key = create_key(session, tenant=tenant)
            session.commit()
    finally:
        engine.dispose()
    return key


def authed(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, timeout=120, headers=headers)


@pytest.fixture(scope="session")
def client(stack) -> Iterator[httpx.Client]:
    """Sends the key of the tenant "tests"."""
    with authed(stack.url, stack.key) as c:
        yield c


@pytest.fixture
def tenant_client(stack) -> Iterator:
    """Makes clients of other tenants: `tenant_client("name")` is an httpx.Client with a new key of "name"."""
    clients: list[httpx.Client] = []

    def make(tenant: str) -> httpx.Client:
        clients.append(authed(stack.url, new_key(stack, tenant)))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def start_api(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """Another API process (uvicorn) with `env`, e.g. the stack's with other settings; returns it and its URL."""
    port = free_port()
    proc = subprocess.Popen([BIN / "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env={**env, "PORT": str(port)}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc, log)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def upload(client: httpx.Client, path: Path, **form) -> httpx.Response:
    with path.open("rb") as f:
        return client.post("/v1/datasets", files={"file": (path.name, f)}, data=form)


def create_job(client: httpx.Client, **body) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def wait_for(client: httpx.Client, job_id: str, statuses=("succeeded", "failed", "cancelled"),
             timeout: float = 300, every: float = 0.2, on_poll=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if on_poll:
            on_poll(job)
        if job["status"] in statuses:
            return job
        time.sleep(every)
    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")


def listing(client: httpx.Client, path: str, **params) -> list[dict]:
    """Every item of a paginated listing, following `after` cursors."""
    items, after = [], None
    while True:
        page = client.get(path, params={**params, **({"after": after} if after else {})}).json()
        items += page["data"]
        if not page["has_more"]:
            return items
        after = page["data"][-1]["id"]
