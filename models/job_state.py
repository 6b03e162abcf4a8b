"""Every change of a job's state, as conditional updates on its row: the row is the job.

Both the API (create, cancel) and the worker (claim, progress, finish) go through these functions.
"""

from typing import Any

from sqlalchemy import select, update
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


def _transition(session: Session, job_id: str, from_: tuple[str, ...], **values: Any) -> bool:
    """Set `values` only if the job is in one of the `from_` statuses; True when it was."""
    result = session.execute(update(Job).where(Job.id == job_id, Job.status.in_(from_)).values(**values))
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


def claim(session: Session, job_id: str) -> bool:
    """Move a queued job to running; False if another delivery got it first or it was cancelled."""
    if not _transition(session, job_id, (QUEUED,), status=RUNNING, started_at=utcnow()):
        return False
    add_event(session, job_id, "started", "a worker started the job")
    return True


def is_cancel_requested(session: Session, job_id: str) -> bool:
    return session.scalar(select(Job.status).where(Job.id == job_id)) == CANCEL_REQUESTED


def _insert_ignoring_duplicates(session: Session, table: type, values: dict[str, Any]) -> None:
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(table).values(**values).on_conflict_do_nothing())


def record_epoch(session: Session, job_id: str, metrics: dict[str, Any], *, progress: float,
                 best: dict[str, Any]) -> None:
    """One metrics row per (job, epoch), written idempotently, and the job's progress."""
    _insert_ignoring_duplicates(session, Metric, {"job_id": job_id, "created_at": utcnow(), **metrics})
    _transition(session, job_id, ACTIVE, epoch=metrics["epoch"], stage=metrics["stage"], progress=progress, best=best)


def set_stage(session: Session, job_id: str, stage: int) -> None:
    _transition(session, job_id, ACTIVE, stage=stage)


def finish(session: Session, job_id: str, status: str, message: str, *, event_data: dict[str, Any] | None = None,
           **values: Any) -> bool:
    """End an active job with a terminal `status`; False if it had already ended."""
    if not _transition(session, job_id, ACTIVE, status=status, finished_at=utcnow(), **values):
        return False
    add_event(session, job_id, status, message, event_data)
    return True
