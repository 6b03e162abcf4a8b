"""The production path (docker-compose.yml + Dockerfile) agrees with the code and the README.

No Docker engine is needed: the compose file is parsed with PyYAML (which resolves the x-env / x-app
anchors and merge keys), the Dockerfile is read as text. README checks skip only while README.md
does not exist.
"""

import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from models.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"

API_COMMAND = "uvicorn api.app:app --host 0.0.0.0 --port 8000"
WORKER_COMMAND = "celery -A worker worker --loglevel INFO --pool solo --concurrency 1 --prefetch-multiplier 1"
MIGRATE_COMMAND = "alembic upgrade head"

STORAGE_PATH = "/data"
ENV = {
    "DATABASE_URL": "postgresql+psycopg://unfreeze:unfreeze@postgres:5432/unfreeze",
    "CELERY_BROKER_URL": "redis://redis:6379/0",
    "UNFREEZE_STORAGE": STORAGE_PATH,
    "PORT": "8000",
}
# Read by torch itself, not by models.settings.
NOT_SETTINGS = {"TORCH_HOME"}

APP_SERVICES = ("api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def readme() -> str:
    if not README.exists():
        pytest.skip("README.md does not exist yet")
    return README.read_text()


def _argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def _volume_mounts(service: dict) -> dict[str, str]:
    """target -> source of the service's volumes (short or long syntax)."""
    mounts = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            source, target = vol.split(":")[:2]
        else:
            source, target = vol.get("source"), vol["target"]
        mounts[target] = source
    return mounts


def _depends_on(service: dict) -> dict[str, str | None]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: None for name in deps}
    return {name: (spec or {}).get("condition") for name, spec in deps.items()}


def test_services_exist(compose):
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(compose["services"])


def test_worker_reserves_an_nvidia_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count") == 1
        for d in devices
    ), devices


@pytest.mark.parametrize("name, expected", [("api", API_COMMAND), ("worker", WORKER_COMMAND),
                                            ("migrate", MIGRATE_COMMAND)])
def test_commands(compose, name, expected):
    command = compose["services"][name]["command"]
    assert _argv(command) == shlex.split(expected)
    if isinstance(command, str):
        assert command == expected


def test_dockerfile_default_command_is_the_api():
    cmd = re.search(r"^CMD\s+(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert cmd, "Dockerfile has no CMD"
    text = cmd.group(1).strip()
    argv = yaml.safe_load(text) if text.startswith("[") else shlex.split(text)
    assert argv == shlex.split(API_COMMAND)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment(compose, name):
    env = _environment(compose["services"][name])
    for key, value in ENV.items():
        assert env.get(key) == value, (name, key)


def test_environment_names_are_settings_aliases(compose):
    aliases = {field.alias for field in Settings.model_fields.values() if field.alias}
    for name in APP_SERVICES:
        unknown = set(_environment(compose["services"][name])) - aliases - NOT_SETTINGS
        assert not unknown, f"{name} sets variables models.settings does not read: {sorted(unknown)}"


def test_migrations_run_before_api_and_worker(compose):
    services = compose["services"]
    for name in APP_SERVICES:
        deps = _depends_on(services[name])
        assert deps.get("migrate") == "service_completed_successfully", (name, deps)
    migrate_deps = _depends_on(services["migrate"])
    assert migrate_deps.get("postgres") == "service_healthy"
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]


def test_storage_is_a_named_volume_in_api_and_worker(compose):
    named = set(compose.get("volumes") or {})
    sources = set()
    for name in APP_SERVICES:
        source = _volume_mounts(compose["services"][name]).get(STORAGE_PATH)
        assert source, f"{name} does not mount a volume at {STORAGE_PATH}"
        assert source in named, f"{name}: {source!r} is not a top-level named volume"
        sources.add(source)
    assert len(sources) == 1, "api and worker must share the storage volume"
    # Postgres keeps its data in a named volume too.
    pg = _volume_mounts(compose["services"]["postgres"]).get("/var/lib/postgresql/data")
    assert pg in named


def test_dockerfile_pins_torch():
    text = DOCKERFILE.read_text()
    assert "torch==2.14.1" in text
    assert "torchvision==0.29.1" in text
    assert re.search(r"^FROM\s+python:3\.11-slim", text, re.MULTILINE)
    assert re.search(r"^USER\s+(?!root\b|0\b)\S+", text, re.MULTILINE), "the image must not run as root"


def test_readme_documents_compose(readme):
    assert "docker compose" in readme.lower(), "README.md has no docker compose section"
    for command in (API_COMMAND, WORKER_COMMAND):
        assert command in readme, f"README.md does not document {command!r}"
    for name in ENV:
        assert name in readme, f"README.md does not mention {name}"
