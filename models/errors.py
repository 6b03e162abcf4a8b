"""Domain errors: a type, a message a person can act on, and the offending parameter."""

import errno
import sqlite3
from dataclasses import dataclass


@dataclass
class ServiceError(Exception):
    status: int
    type: str
    message: str
    param: str | None = None

    def body(self) -> dict:
        return {"error": {"type": self.type, "message": self.message, "param": self.param}}


def invalid(message: str, param: str | None = None) -> ServiceError:
    return ServiceError(422, "invalid_request_error", message, param)


def bad_upload(message: str, param: str | None = "file") -> ServiceError:
    return ServiceError(400, "invalid_upload", message, param)


def not_found(kind: str, id_: str, param: str | None = None) -> ServiceError:
    return ServiceError(404, "not_found", f"no {kind} with id '{id_}'", param)


def conflict(message: str, param: str | None = None) -> ServiceError:
    return ServiceError(409, "conflict", message, param)


def out_of_space(exc: BaseException | None) -> bool:
    """Whether `exc` is the server's disk (or quota) running full: an OSError, or the database's own
    disk-full error (SQLite's SQLITE_FULL, Postgres's SQLSTATE 53100) wrapped by SQLAlchemy."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or getattr(orig, "sqlstate", None) == "53100"
