"""Domain errors: a type, a message a person can act on, and the offending parameter."""

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
