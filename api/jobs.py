"""Job routes: create (validated, planned, enqueued), list, get, metrics, events, cancel, model download."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.deps import get_session, in_order, newest_first
from api.queue import enqueue_training
from api.schemas import EventOut, JobOut, MetricOut, Page
from models import job_state
from models.catalogue import catalogue, group_names
from models.errors import ServiceError, conflict, invalid, not_found
from models.plan import resolve_plan
from models.storage import model_path
from models.spec import JobRequest
from models.tables import LOCAL_TENANT, Dataset, Event, Job, Metric

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
Status = Literal["queued", "running", "cancel_requested", "cancelled", "succeeded", "failed"]
SessionDep = Annotated[Session, Depends(get_session)]


def _job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("job", job_id, "id")
    return job


def _check_weights(session: Session, request: JobRequest) -> None:
    weights, arch = request.weights, request.base_model
    if weights is None:
        return
    if weights.startswith("job:"):
        source = session.get(Job, weights.removeprefix("job:"))
        if source is None:
            raise invalid(f"weights '{weights}': no job with that id", "weights")
        if source.status != job_state.SUCCEEDED:
            raise invalid(f"weights '{weights}': that job is {source.status}; only a succeeded job's model "
                          "can be fine-tuned", "weights")
        if source.base_model != arch:
            raise invalid(f"weights '{weights}' is a {source.base_model} model; base_model is {arch}", "weights")
        return
    known = catalogue()[arch]["weights"]
    if weights not in known:
        raise invalid(f"unknown weights '{weights}' for {arch}; use one of {', '.join(known)}, null for random "
                      "initialisation, or 'job:<id>' for an earlier job's model", "weights")


@router.post("", status_code=201, response_model=JobOut, summary="Create a fine-tuning job")
def create_job(request: JobRequest, session: SessionDep) -> JobOut:
    if session.get(Dataset, request.dataset_id) is None:
        raise not_found("dataset", request.dataset_id, "dataset_id")
    models = catalogue()
    if request.base_model not in models:
        raise invalid(f"unknown base_model '{request.base_model}'; GET /v1/models lists the choices: "
                      f"{', '.join(models)}", "base_model")
    _check_weights(session, request)
    spec = request.model_dump(mode="json", exclude={"dataset_id", "base_model", "weights"})
    spec["strategy"]["plan"] = resolve_plan(request.strategy, group_names(request.base_model))
    spec["hyperparameters"]["image_size"] = request.hyperparameters.image_size or models[request.base_model]["image_size"]
    job = job_state.create_job(session, tenant_id=LOCAL_TENANT, dataset_id=request.dataset_id, base_model=request.base_model,
                               weights=request.weights, spec=spec)
    session.commit()
    try:
        enqueue_training(job.id)
    except Exception as exc:  # broker unreachable: nothing must stay half-stored
        session.execute(delete(Event).where(Event.job_id == job.id))
        session.execute(delete(Job).where(Job.id == job.id))
        session.commit()
        raise ServiceError(503, "service_unavailable", f"the job queue is unreachable ({type(exc).__name__}); "
                           "nothing was stored, retry in a moment") from exc
    return JobOut.of(job)


@router.get("", response_model=Page[JobOut])
def list_jobs(session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None,
              status: Status | None = None) -> Page[JobOut]:
    stmt = select(Job) if status is None else select(Job).where(Job.status == status)
    rows, has_more = newest_first(session, Job, stmt, after=after, limit=limit)
    return Page(data=[JobOut.of(r) for r in rows], has_more=has_more)


@router.get("/{id}", response_model=JobOut)
def get_job(id: str, session: SessionDep) -> JobOut:
    return JobOut.of(_job(session, id))


@router.get("/{id}/metrics", response_model=Page[MetricOut], summary="One row per finished epoch")
def list_metrics(id: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 after: str | None = None) -> Page[MetricOut]:
    _job(session, id)
    rows, has_more = in_order(session, Metric, select(Metric).where(Metric.job_id == id), after=after, limit=limit)
    return Page(data=[MetricOut.of(r) for r in rows], has_more=has_more)


@router.get("/{id}/events", response_model=Page[EventOut])
def list_events(id: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                after: str | None = None) -> Page[EventOut]:
    _job(session, id)
    rows, has_more = in_order(session, Event, select(Event).where(Event.job_id == id), after=after, limit=limit)
    return Page(data=[EventOut.of(r) for r in rows], has_more=has_more)


@router.post("/{id}/cancel", response_model=JobOut)
def cancel_job(id: str, session: SessionDep) -> JobOut:
    job_state.request_cancel(session, id)
    session.commit()
    session.expire_all()
    return JobOut.of(_job(session, id))


@router.get("/{id}/model", response_class=FileResponse, summary="The best model as safetensors",
            responses={200: {"content": {"application/octet-stream": {}}}})
def download_model(id: str, session: SessionDep) -> FileResponse:
    job = _job(session, id)
    if job.status != job_state.SUCCEEDED:
        raise conflict(f"job {id} is {job.status}; its model can be downloaded once it has succeeded")
    path = model_path(id)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{id}.safetensors")
