"""Job routes: create (validated, planned, enqueued), list, get, metrics, events, cancel, model download.

Each tenant sees only its own jobs: another tenant's job, its metrics, events and model answer 404.
"""

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api import idempotency
from api.auth import TenantId
from api.datasets import tenant_dataset
from api.deps import get_session, in_order, newest_first
from api.idempotency import IdempotencyKeyHeader
from api.queue import enqueue_training
from api.schemas import EventOut, JobOut, MetricOut, Page, error_responses
from models import job_state
from models.catalogue import catalogue, group_names
from models.errors import ServiceError, conflict, invalid, not_found
from models.plan import resolve_plan
from models.storage import model_path
from models.spec import JobRequest
from models.tables import Event, Job, Metric

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422, 503))
Status = Literal["queued", "running", "cancel_requested", "cancelled", "succeeded", "failed"]
SessionDep = Annotated[Session, Depends(get_session)]


def _job(session: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job `job_id`; 404 when there is none, or it is another tenant's."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise not_found("job", job_id, "id")
    return job


def _check_weights(session: Session, tenant_id: str, request: JobRequest) -> None:
    weights, arch = request.weights, request.base_model
    if weights is None:
        return
    if weights.startswith("job:"):
        source = session.get(Job, weights.removeprefix("job:"))
        if source is None or source.tenant_id != tenant_id:
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


@router.post("", status_code=201, response_model=JobOut, summary="Create a fine-tuning job",
             responses=error_responses(404, 409, 413, 429))
def create_job(request: JobRequest, session: SessionDep, tenant: TenantId,
               idempotency_key: IdempotencyKeyHeader = None) -> JobOut | JSONResponse:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return idempotency.run_once(session, tenant_id=tenant, endpoint="POST /v1/jobs", key=idempotency_key,
                                fingerprint=idempotency.request_hash(canonical),
                                create=lambda: _create_job(session, tenant, request))


def _create_job(session: Session, tenant_id: str, request: JobRequest) -> JobOut:
    tenant_dataset(session, tenant_id, request.dataset_id)
    models = catalogue()
    if request.base_model not in models:
        raise invalid(f"unknown base_model '{request.base_model}'; GET /v1/models lists the choices: "
                      f"{', '.join(models)}", "base_model")
    _check_weights(session, tenant_id, request)
    spec = request.model_dump(mode="json", exclude={"dataset_id", "base_model", "weights"})
    spec["strategy"]["plan"] = resolve_plan(request.strategy, group_names(request.base_model))
    model = models[request.base_model]
    native, size = model["image_size"], request.hyperparameters.image_size
    if size and size != native and model.get("fixed_image_size"):
        raise invalid(f"{request.base_model} only takes {native}x{native} images (its position embedding fixes "
                      "the size); leave hyperparameters.image_size unset", "hyperparameters.image_size")
    if size and size < model.get("min_image_size", 1):
        raise invalid(f"{request.base_model} needs images of at least {model['min_image_size']}x"
                      f"{model['min_image_size']} px (its downsampling leaves nothing of smaller ones); set "
                      f"hyperparameters.image_size to at least {model['min_image_size']}, or leave it unset for "
                      f"{native}", "hyperparameters.image_size")
    spec["hyperparameters"]["image_size"] = size or native
    job = job_state.create_job(session, tenant_id=tenant_id, dataset_id=request.dataset_id,
                               base_model=request.base_model, weights=request.weights, spec=spec)
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
def list_jobs(session: SessionDep, tenant: TenantId, limit: Annotated[int, Query(ge=1, le=100)] = 20,
              after: str | None = None, status: Status | None = None) -> Page[JobOut]:
    stmt = select(Job) if status is None else select(Job).where(Job.status == status)
    rows, has_more = newest_first(session, Job, stmt, tenant_id=tenant, after=after, limit=limit)
    return Page(data=[JobOut.of(r) for r in rows], has_more=has_more)


@router.get("/{id}", response_model=JobOut, responses=error_responses(404))
def get_job(id: str, session: SessionDep, tenant: TenantId) -> JobOut:
    return JobOut.of(_job(session, tenant, id))


@router.get("/{id}/metrics", response_model=Page[MetricOut], summary="One row per finished epoch",
            responses=error_responses(404))
def list_metrics(id: str, session: SessionDep, tenant: TenantId, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 after: str | None = None) -> Page[MetricOut]:
    _job(session, tenant, id)
    rows, has_more = in_order(session, Metric, select(Metric).where(Metric.job_id == id), after=after, limit=limit)
    return Page(data=[MetricOut.of(r) for r in rows], has_more=has_more)


@router.get("/{id}/events", response_model=Page[EventOut], responses=error_responses(404))
def list_events(id: str, session: SessionDep, tenant: TenantId, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                after: str | None = None) -> Page[EventOut]:
    _job(session, tenant, id)
    rows, has_more = in_order(session, Event, select(Event).where(Event.job_id == id), after=after, limit=limit)
    return Page(data=[EventOut.of(r) for r in rows], has_more=has_more)


@router.post("/{id}/cancel", response_model=JobOut, responses=error_responses(404, 409, 413, 429))
def cancel_job(id: str, session: SessionDep, tenant: TenantId) -> JobOut:
    _job(session, tenant, id)
    job_state.request_cancel(session, id)
    session.commit()
    session.expire_all()
    return JobOut.of(_job(session, tenant, id))


@router.get("/{id}/model", response_class=FileResponse, summary="The best model as safetensors",
            responses={200: {"content": {"application/octet-stream": {}}}, **error_responses(404, 409)})
def download_model(id: str, session: SessionDep, tenant: TenantId) -> FileResponse:
    job = _job(session, tenant, id)
    if job.status != job_state.SUCCEEDED:
        raise conflict(f"job {id} is {job.status}; its model can be downloaded once it has succeeded")
    path = model_path(id)
    if not path.exists():
        raise ServiceError(410, "gone", f"the model file of job {id} is no longer in storage "
                           "(UNFREEZE_STORAGE was cleared or moved); run the job again")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{id}.safetensors")
