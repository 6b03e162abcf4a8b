"""`make run`: the API and one worker in the foreground, stopped together (Ctrl-C stops both).

Without DATABASE_URL and CELERY_BROKER_URL this is the embedded default: SQLite and a filesystem broker
under UNFREEZE_VAR (./var), no servers needed.
"""

import os
import signal
import subprocess
import sys
import time

from models.settings import get_settings


def main() -> int:
    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = os.path.dirname(sys.executable)
    subprocess.run([os.path.join(bin_dir, "alembic"), "upgrade", "head"], check=True)
    mode = "embedded (SQLite + filesystem broker under %s)" % settings.var_dir if settings.embedded else "servers"
    print(f"unfreeze: {mode}; API on http://127.0.0.1:{settings.port}", flush=True)
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
