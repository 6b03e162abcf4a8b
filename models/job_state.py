"""Every change of a job's state, as conditional updates on its row: the row is the job.

Both the API (create, cancel) and the worker (claim, progress, finish) go through these functions.
"""

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from models.errors import conflict, not_found
from models.tables import Event, Job, Metric, utcnow

QUEUED, RUNNING, CANCEL_REQUESTED = "queued", "running", "cancel_requested"
CANCELLED, SUCCEEDED, FAILED = "cancelled", "succeeded", "failed"
TERMINAL = (CANCELLED, SUCCEEDED, FAILED)
ACTIVE = (RUNNING, CANCEL_REQUESTED)


def add_event(session: Session, job_id: str, type: str, message: str, data: dict[str, Any] | None = None) -> None:
    session.add(Event(job_id=job_id, type=type, message=message, data=data or {}, created_at=utcnow()))


def create_job(session: Session, *, tenant_id: str, dataset_id: str, base_model: str, weights: str | None,
               spec: dict[str, Any]) -> Job:
    job = Job(tenant_id=tenant_id, status=QUEUED, dataset_id=dataset_id, base_model=base_model, weights=weights,
              spec=spec, epoch=0, progress=0.0, attempts=0, created_at=utcnow())
    session.add(job)
    session.flush()
    add_event(session, job.id, "queued", f"job queued: {base_model} on dataset {dataset_id}")
    return job


def _transition(session: Session, job_id: str, from_: tuple[str, ...], *, worker: str | None = None,
                **values: Any) -> bool:
    """Set `values` only if the job is in one of the `from_` statuses (and held by `worker`, if given)."""
    held = () if worker is None else (Job.worker == worker,)
    result = session.execute(update(Job).where(Job.id == job_id, Job.status.in_(from_), *held).values(**values))
    return result.rowcount == 1


def request_cancel(session: Session, job_id: str) -> None:
    """Cancel a queued job at once; ask a running one to stop at its next batch boundary."""
    if _transition(session, job_id, (QUEUED,), status=CANCELLED, finished_at=utcnow(), stopped_reason="cancelled"):
        add_event(session, job_id, "cancel_requested", "cancel requested while queued")
        add_event(session, job_id, "cancelled", "job cancelled before it started")
        return
    if _transition(session, job_id, (RUNNING,), status=CANCEL_REQUESTED):
        add_event(session, job_id, "cancel_requested", "cancel requested; the worker stops at the next batch")
        return
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise not_found("job", job_id, "id")
    if status in TERMINAL:
        raise conflict(f"job {job_id} has already ended ({status}); only queued or running jobs can be cancelled")


def claim(session: Session, job_id: str, *, worker: str, lease_s: float, max_attempts: int) -> int | None:
    """Take the job for `worker` with a lease, in one conditional update; returns the attempt number.

    Only a queued job, or a running one whose lease expired (its worker died), can be claimed, so two
    deliveries of the same task never train at once. Past `max_attempts` the job fails instead.
    """
    now = utcnow()
    attempt = session.scalar(
        update(Job)
        .where(Job.id == job_id,
               or_(Job.status == QUEUED, and_(Job.status == RUNNING, Job.lease_expires_at < now)))
        .values(status=RUNNING, attempts=Job.attempts + 1, worker=worker, heartbeat_at=now,
                lease_expires_at=now + timedelta(seconds=lease_s), started_at=func.coalesce(Job.started_at, now))
        .returning(Job.attempts))
    if attempt is None:
        return None
    if attempt > max_attempts:
        error = f"the job was interrupted {attempt - 1} times (worker lost); giving up after {max_attempts} attempts"
        finish(session, job_id, FAILED, f"job failed: {error}", worker=worker, error=error)
        return None
    if attempt == 1:
        add_event(session, job_id, "started", f"worker {worker} started the job", {"attempt": 1, "worker": worker})
    return attempt


def heartbeat(session: Session, job_id: str, *, worker: str, lease_s: float) -> str | None:
    """Renew `worker`'s lease; returns the job's status, or None if the worker no longer holds the job."""
    now = utcnow()
    return session.scalar(
        update(Job).where(Job.id == job_id, Job.worker == worker, Job.status.in_(ACTIVE))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s)).returning(Job.status))


def reap(session: Session, *, resend_queued_after_s: float) -> list[str]:
    """Recover jobs whose worker stopped renewing its lease; returns the ids whose task must be sent again.

    A running job goes back to queued (its next claim resumes from the last checkpoint); a job whose
    cancel was requested ends cancelled; a job queued for long without being claimed (its message may
    have been lost with a broker restart) is sent again: a duplicate message is harmless, claims are
    conditional.
    """
    now = utcnow()
    expired = Job.lease_expires_at < now
    for job_id in session.scalars(update(Job).where(Job.status == CANCEL_REQUESTED, expired)
                                  .values(status=CANCELLED, finished_at=now, stopped_reason="cancelled",
                                          lease_expires_at=None).returning(Job.id)):
        add_event(session, job_id, "cancelled", "job cancelled (its worker stopped before it could)")
    requeued = list(session.scalars(update(Job).where(Job.status == RUNNING, expired)
                                    .values(status=QUEUED, worker=None, lease_expires_at=None, heartbeat_at=now)
                                    .returning(Job.id)))
    for job_id in requeued:
        add_event(session, job_id, "requeued", "the worker running this job stopped renewing its lease; "
                  "it is queued again and resumes from its last checkpoint")
    stale = now - timedelta(seconds=resend_queued_after_s)
    resend = list(session.scalars(update(Job).where(Job.status == QUEUED,
                                                    func.coalesce(Job.heartbeat_at, Job.created_at) < stale)
                                  .values(heartbeat_at=now).returning(Job.id)))
    return requeued + resend


def _insert_ignoring_duplicates(session: Session, table: type, values: dict[str, Any]) -> None:
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(table).values(**values).on_conflict_do_nothing())


def record_epoch(session: Session, job_id: str, metrics: dict[str, Any], *, worker: str, progress: float,
                 best: dict[str, Any]) -> None:
    """One metrics row per (job, epoch), written idempotently (a resumed epoch adds no second row), and only
    by the worker holding the job."""
    if _transition(session, job_id, ACTIVE, worker=worker, epoch=metrics["epoch"], stage=metrics["stage"],
                   progress=progress, best=best):
        _insert_ignoring_duplicates(session, Metric, {"job_id": job_id, "created_at": utcnow(), **metrics})


def set_stage(session: Session, job_id: str, stage: int, *, worker: str) -> None:
    _transition(session, job_id, ACTIVE, worker=worker, stage=stage)


def finish(session: Session, job_id: str, status: str, message: str, *, worker: str,
           event_data: dict[str, Any] | None = None, **values: Any) -> bool:
    """End `worker`'s active job with a terminal `status`; False if it ended already or another worker holds it."""
    if not _transition(session, job_id, ACTIVE, worker=worker, status=status, finished_at=utcnow(),
                       lease_expires_at=None, **values):
        return False
    add_event(session, job_id, status, message, event_data)
    return True
