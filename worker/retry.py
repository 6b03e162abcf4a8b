"""Database writes that outlast a short database outage instead of losing what the engine reported."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from models.db import session_scope

log = logging.getLogger("unfreeze.worker")
T = TypeVar("T")
RETRY_FOR_S = 120.0


def _transient(exc: Exception) -> bool:
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def in_transaction(work: Callable[[Session], T], *, retry_for_s: float = RETRY_FOR_S) -> T:
    """Run `work` in a transaction, retrying it with backoff while the database is unreachable."""
    deadline, delay = time.monotonic() + retry_for_s, 0.2
    while True:
        try:
            with session_scope() as session:
                return work(session)
        except Exception as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable (%s); retrying in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
