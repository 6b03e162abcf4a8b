"""`make run`: the API and one worker in the foreground, stopped together (Ctrl-C stops both).

Without DATABASE_URL and CELERY_BROKER_URL this is the embedded default: SQLite and a filesystem broker
under UNFREEZE_VAR (./var), no servers needed. There, with authentication on, every start creates an API key
of the tenant "local" and prints it.
"""

import os
import signal
import subprocess
import sys
import time

from api.keys import create_key
from models.db import session_scope
from models.settings import Settings, get_settings


def print_access(settings: Settings) -> None:
    """How to authenticate: on the embedded default, a fresh key of the tenant "local"."""
    if not settings.auth:
        print("unfreeze: authentication is off (UNFREEZE_AUTH=off); every request is the tenant local's", flush=True)
        return
    if not settings.embedded:
        print("unfreeze: requests need an API key: `python -m api.keys create --tenant NAME` makes one", flush=True)
        return
    with session_scope() as session:
        row, key = create_key(session, tenant="local")
    print(f"unfreeze: API key {row.id} of the tenant 'local', new at this start "
          "(`python -m api.keys list` and `revoke` manage keys):", flush=True)
    print(f"  {key}", flush=True)
    print(f"  curl -H 'Authorization: Bearer {key}' http://127.0.0.1:{settings.port}/v1/models", flush=True)


def main() -> int:
    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = os.path.dirname(sys.executable)
    subprocess.run([os.path.join(bin_dir, "alembic"), "upgrade", "head"], check=True)
    mode = "embedded (SQLite + filesystem broker under %s)" % settings.var_dir if settings.embedded else "servers"
    print(f"unfreeze: {mode}; API on http://127.0.0.1:{settings.port}", flush=True)
    print_access(settings)
    procs = [
        subprocess.Popen([os.path.join(bin_dir, "celery"), "-A", "worker", "worker", "--loglevel", "INFO",
                          "-Q", settings.queue, "--without-mingle", "--without-gossip"]),
        subprocess.Popen([os.path.join(bin_dir, "uvicorn"), "api.app:app", "--host", "127.0.0.1",
                          "--port", str(settings.port)]),
    ]

    def stop(*_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        stop()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return max(p.returncode or 0 for p in procs)


if __name__ == "__main__":
    sys.exit(main())
