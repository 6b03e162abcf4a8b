"""Dataset routes: upload (validated synchronously), list, get; each tenant sees only its own datasets."""

import hashlib
import re
import shutil
from pathlib import Path
from typing import IO, Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import idempotency
from api.archive import Limits, ingest
from api.auth import TenantId
from api.deps import get_session, newest_first
from api.idempotency import IdempotencyKeyHeader
from api.schemas import DatasetOut, Page, error_responses
from models.errors import not_found
from models.settings import get_settings
from models.tables import Dataset, new_id, utcnow

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 422, 503))


def _copy_hashing(src: IO[bytes], dest: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return digest.hexdigest(), size


def _default_name(filename: str | None) -> str:
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.tar|\.zip)$", "", Path(filename or "dataset").name, flags=re.I)
    return stem[:255] or "dataset"


def tenant_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    """The tenant's dataset `dataset_id`; 404 when there is none, or it is another tenant's."""
    row = session.get(Dataset, dataset_id)
    if row is None or row.tenant_id != tenant_id:
        raise not_found("dataset", dataset_id, "dataset_id")
    return row


@router.post("", status_code=201, response_model=DatasetOut, summary="Upload an image-folder archive",
             responses=error_responses(400, 409, 413, 429, 507))
def upload_dataset(
    file: Annotated[UploadFile, File(description=".zip or .tar.gz of <class>/<image> (optionally train/, val/)")],
    session: Annotated[Session, Depends(get_session)],
    tenant: TenantId,
    name: Annotated[str | None, Form(max_length=255)] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> DatasetOut | JSONResponse:
    settings = get_settings()
    dataset_id = new_id("ds")
    root = settings.storage_dir / "datasets"
    incoming = root / f".incoming-{dataset_id}"
    final = root / dataset_id
    incoming.mkdir(parents=True)
    archive = incoming / "upload"

    def store() -> DatasetOut:
        try:
            summary = ingest(archive, incoming / "data", Limits(settings.max_archive_members,
                                                               settings.max_extracted_bytes))
            archive.unlink()
            incoming.rename(final)
            row = Dataset(id=dataset_id, tenant_id=tenant, name=name or _default_name(file.filename),
                          classes=summary.classes, class_counts=summary.class_counts,
                          split_counts=summary.split_counts, num_samples=summary.num_samples,
                          has_val_split=summary.has_val_split, bytes=size, sha256=sha256, created_at=utcnow())
            session.add(row)
            session.commit()
        except BaseException:
            # Free the space at once: a full disk may be what failed, and the idempotency key's row must go next.
            shutil.rmtree(incoming, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            raise
        return DatasetOut.model_validate(row)

    try:
        sha256, size = _copy_hashing(file.file, archive)
        return idempotency.run_once(session, tenant_id=tenant, endpoint="POST /v1/datasets", key=idempotency_key,
                                    fingerprint=idempotency.request_hash(sha256, name or ""), create=store)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(session: Annotated[Session, Depends(get_session)], tenant: TenantId,
                  limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None) -> Page[DatasetOut]:
    rows, has_more = newest_first(session, Dataset, select(Dataset), tenant_id=tenant, after=after, limit=limit)
    return Page(data=[DatasetOut.model_validate(r) for r in rows], has_more=has_more)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404))
def get_dataset(dataset_id: str, session: Annotated[Session, Depends(get_session)], tenant: TenantId) -> DatasetOut:
    return DatasetOut.model_validate(tenant_dataset(session, tenant, dataset_id))
