"""Response bodies. Every listing is `{"data": [...], "has_more": bool}`; ids are opaque strings."""

from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, field_serializer

T = TypeVar("T")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @field_serializer("*", when_used="json")
    def _utc(self, value: Any) -> Any:
        # SQLite hands back naive datetimes; all stored times are UTC.
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat().replace("+00:00", "Z")
        return value


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


class DatasetOut(_Out):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    classes: list[str]
    num_samples: int
    class_counts: dict[str, int]
    split_counts: dict[str, dict[str, int]] | None
    has_val_split: bool
    bytes: int
    sha256: str
    created_at: datetime


class PlanStage(BaseModel):
    stage: int
    unfreeze: list[str]
    train: list[str] | None = None  # None for an auto stage: chosen while the job runs
    epochs: int
    lr: float
    auto: bool = False


class StrategyOut(BaseModel):
    type: str
    epochs_per_stage: int
    groups_per_stage: int
    lr: float
    lr_decay: float
    train_bn: bool
    stages: list[dict[str, Any]] | None
    schedule: str = "constant"
    warmup_frac: float = 0.1
    finetune_lr: float | None = None
    plan: list[PlanStage]


class Best(BaseModel):
    monitor: str
    value: float | None
    stage: int | None
    epoch: int | None


class JobOut(_Out):
    id: str
    object: Literal["job"] = "job"
    status: Literal["queued", "running", "cancel_requested", "cancelled", "succeeded", "failed"]
    dataset_id: str
    base_model: str
    weights: str | None
    strategy: StrategyOut
    early_stopping: dict[str, Any]
    hyperparameters: dict[str, Any]
    validation_split: float
    seed: int
    stage: int | None
    epoch: int
    progress: float
    best: Best | None
    stopped_reason: str | None
    error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Any) -> "JobOut":
        fields = {k: getattr(job, k) for k in cls.model_fields if k in job.__table__.columns}
        return cls(**fields, **{k: job.spec[k] for k in
                                ("strategy", "early_stopping", "hyperparameters", "validation_split", "seed")})


class MetricOut(_Out):
    id: str
    stage: int
    epoch: int
    unfrozen_groups: list[str]
    lr: dict[str, float]
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_precision: float
    val_recall: float
    val_f1: float
    duration_s: float
    samples_per_s: float
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> "MetricOut":
        return cls.model_validate({**{k: getattr(row, k) for k in cls.model_fields if k != "id"}, "id": str(row.id)})


class EventOut(_Out):
    id: str
    type: str
    message: str
    data: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> "EventOut":
        return cls(id=str(row.id), type=row.type, message=row.message, data=row.data, created_at=row.created_at)


class GroupOut(BaseModel):
    name: str
    modules: list[str]
    params: int


class ModelOut(BaseModel):
    name: str
    family: str
    image_size: int
    min_image_size: int = 1
    fixed_image_size: bool = False
    groups: list[GroupOut]
    head_layer: str
    weights: list[str]
    default_weights: str


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERRORS = {
    400: ("The upload is not a usable dataset archive; the message says why", {}),
    401: ("No API key, or an unknown or revoked one", {"WWW-Authenticate": "Bearer"}),
    404: ("No such item for this tenant (another tenant's items are never visible)", {}),
    409: ("A state conflict, or an Idempotency-Key reused with another request or still in progress", {}),
    413: ("The request body is over UNFREEZE_MAX_UPLOAD_BYTES", {}),
    422: ("Invalid request; `param` names the offending field", {}),
    429: ("Too many write requests with this API key; retry after Retry-After seconds", {"Retry-After": "seconds"}),
    503: ("The database or the job queue is unreachable; nothing was stored, retry", {"Retry-After": "seconds"}),
    507: ("The server's storage ran full while storing the request; nothing was stored", {}),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the single error body."""
    return {status: {"model": ErrorBody, "description": _ERRORS[status][0],
                     "headers": {name: {"description": text, "schema": {"type": "string"}}
                                 for name, text in _ERRORS[status][1].items()}}
            for status in statuses}
