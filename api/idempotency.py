"""`Idempotency-Key` on creating requests: a retry with the same key and request replays the first response.

A key is claimed by inserting its row before the work starts, so of two concurrent first uses only one
creates: the other finds the primary key taken and gets 409. The row keeps a hash of the request and, once
the work is done, the response. A request that fails deletes its row, so a retry with the key can go ahead.
Keys are scoped per tenant and endpoint and do not expire.
"""

import hashlib
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, TypeVar

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.errors import conflict
from models.tables import IdempotencyKey, utcnow

# A claim whose request never finished (its API process died) may be taken over after this long.
ABANDONED_AFTER = timedelta(minutes=15)

IdempotencyKeyHeader = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="Makes retries safe: a repeat with the same key and the same request returns the first response "
                "and stores nothing new; the same key with another request gets 409.")]
Out = TypeVar("Out", bound=BaseModel)


def request_hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def run_once(session: Session, *, tenant_id: str, endpoint: str, key: str | None, fingerprint: str,
             create: Callable[[], Out], status_code: int = 201) -> Out | JSONResponse:
    """`create()` once per (tenant, endpoint, key); a repeat gets the stored response of the first call.

    `fingerprint` is the request's hash: the same key with another fingerprint is a 409 conflict.
    Without a key, `create()` simply runs.
    """
    if key is None:
        return create()
    ident = {"tenant_id": tenant_id, "endpoint": endpoint, "key": key}
    replay = _claim(session, ident, fingerprint)
    if replay is not None:
        return replay
    try:
        result = create()
    except BaseException:
        session.rollback()
        session.execute(delete(IdempotencyKey).filter_by(**ident))
        session.commit()
        raise
    session.execute(update(IdempotencyKey).filter_by(**ident)
                    .values(status_code=status_code, response=result.model_dump(mode="json")))
    session.commit()
    return result


def _claim(session: Session, ident: dict[str, str], fingerprint: str) -> JSONResponse | None:
    """Claim the key for this request (None), or the first request's response to replay."""
    session.add(IdempotencyKey(**ident, request_hash=fingerprint, created_at=utcnow()))
    try:
        session.commit()
        return None
    except IntegrityError:
        session.rollback()
    row = session.scalar(select(IdempotencyKey).filter_by(**ident))
    key, endpoint = ident["key"], ident["endpoint"]
    if row is not None and row.request_hash != fingerprint:
        raise conflict(f"Idempotency-Key '{key}' was already used for a different request to {endpoint}; "
                       "send a new key with a new request", "Idempotency-Key")
    if row is None or row.status_code is None:
        if row is not None and _take_over_abandoned(session, ident):
            return None
        raise conflict(f"a request with Idempotency-Key '{key}' is still in progress; retry once it has finished",
                       "Idempotency-Key")
    return JSONResponse(row.response, status_code=row.status_code, headers={"Idempotent-Replayed": "true"})


def _take_over_abandoned(session: Session, ident: dict[str, str]) -> bool:
    taken = session.execute(update(IdempotencyKey).filter_by(**ident).where(
        IdempotencyKey.status_code.is_(None), IdempotencyKey.created_at < utcnow() - ABANDONED_AFTER,
    ).values(created_at=utcnow())).rowcount == 1
    session.commit()
    return taken
