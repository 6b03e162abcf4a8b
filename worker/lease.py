"""Background threads of a worker: the lease keeper of the running job, and the reaper of dead workers' jobs."""

import logging
import os
import socket
import threading
from collections.abc import Callable

from models import job_state
from models.settings import Settings
from worker.retry import in_transaction

log = logging.getLogger("unfreeze.worker")
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


class LeaseKeeper:
    """Renews this worker's lease on a job about once a second while it trains, and records whether a cancel
    was requested or the lease was lost (another worker took the job over)."""

    def __init__(self, job_id: str, *, lease_s: float) -> None:
        self.job_id = job_id
        self.lease_s = lease_s
        self.every_s = min(1.0, lease_s / 3)
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.every_s):
            try:
                status = in_transaction(lambda s: job_state.heartbeat(s, self.job_id, worker=WORKER_NAME,
                                                                      lease_s=self.lease_s), retry_for_s=0)
            except Exception as exc:  # database down: keep training; the lease holds until it expires
                log.warning("heartbeat for %s failed: %s", self.job_id, exc)
                continue
            if status is None:
                log.warning("lost the lease on %s; stopping", self.job_id)
                self.lost.set()
                return
            if status == job_state.CANCEL_REQUESTED:
                self.cancel_requested.set()


class Reaper:
    """Every `interval_s`, re-queues jobs whose worker stopped renewing its lease, and re-sends stale queued ones."""

    def __init__(self, settings: Settings, send: Callable[[str], None]) -> None:
        self.settings = settings
        self.send = send
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def reap_once(self) -> list[str]:
        resend_after = 10 * self.settings.lease_seconds
        job_ids = in_transaction(lambda s: job_state.reap(s, resend_queued_after_s=resend_after), retry_for_s=0)
        for job_id in job_ids:
            log.info("re-sending job %s", job_id)
            self.send(job_id)
        return job_ids

    def _run(self) -> None:
        while not self._stopped.wait(self.settings.reaper_interval_seconds):
            try:
                self.reap_once()
            except Exception as exc:  # database or broker down: try again next round
                log.warning("reaper round failed: %s", exc)
