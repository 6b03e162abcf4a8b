"""Request-scoped dependencies, the error response, and cursor pagination."""

from collections.abc import Iterator
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from models.db import get_sessionmaker
from models.errors import ServiceError, invalid


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


def error_response(status: int, type_: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The single error body, `{"error": {"type", "message", "param"}}`, as a response."""
    return JSONResponse(ServiceError(status, type_, message, param).body(), status_code=status, headers=headers)


def newest_first(session: Session, table: Any, stmt: Select, *, tenant_id: str, after: str | None,
                 limit: int) -> tuple[list, bool]:
    """A page of the tenant's `table` rows, newest first, after the row whose id is `after`."""
    stmt = stmt.where(table.tenant_id == tenant_id)
    if after is not None:
        cursor = session.scalar(select(table.created_at).where(table.id == after, table.tenant_id == tenant_id))
        if cursor is None:
            raise invalid(f"'after' must be the id of an item from an earlier page; '{after}' is not one", "after")
        stmt = stmt.where(or_(table.created_at < cursor, and_(table.created_at == cursor, table.id < after)))
    rows = list(session.scalars(stmt.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def in_order(session: Session, table: Any, stmt: Select, *, after: str | None, limit: int) -> tuple[list, bool]:
    """A page of `table` rows in the order they were written, after the row whose id is `after`."""
    if after is not None:
        if not (after.isascii() and after.isdigit() and int(after) < 2**63):
            raise invalid(f"'after' must be the id of an item from an earlier page; '{after}' is not one", "after")
        stmt = stmt.where(table.id > int(after))
    rows = list(session.scalars(stmt.order_by(table.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
