"""The FastAPI application: routers, the single error body, and the streaming upload limit."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import datasets, jobs, models_catalogue
from api.schemas import ErrorBody
from models.errors import ServiceError
from models.settings import get_settings

log = logging.getLogger("unfreeze.api")


def _error(status: int, type_: str, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ServiceError(status, type_, message, param).body(), status_code=status, headers=headers)


class UploadLimit:
    """Refuses request bodies over `max_bytes` with 413 while they stream in, before they are stored."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        message = (f"the upload is larger than the {limit}-byte limit (UNFREEZE_MAX_UPLOAD_BYTES); "
                   "split the dataset or raise the limit")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return await _error(413, "payload_too_large", message, "file")(scope, receive, send)
        received = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            msg = await receive()
            received += len(msg.get("body", b""))
            if received > limit:
                exceeded = True
                return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg: Message) -> None:
            if not exceeded:
                await send(msg)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await _error(413, "payload_too_large", message, "file")(scope, receive, send)


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form")]
    text = ".".join(parts).replace(".[", "[")
    return text or None


def create_app() -> FastAPI:
    app = FastAPI(title="Unfreeze", version="1", description="Self-hosted fine-tuning with staged unfreezing.",
                  responses={"default": {"model": ErrorBody, "description": "Error"}})
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.include_router(models_catalogue.router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0]
        param = _param(tuple(first.get("loc", ())))
        if first.get("type") == "missing" and param == "file":
            msg = "no file was sent; upload the archive as multipart/form-data field 'file'"
        elif first.get("type") == "extra_forbidden":
            msg = f"unknown field '{param}'; check the spelling against the documented job request"
        else:
            msg = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if len(errors) > 1:
            msg += f" (and {len(errors) - 1} more problem(s))"
        return _error(422, "invalid_request_error", msg, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return _error(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return _error(503, "service_unavailable", "the database is unavailable; retry in a few seconds",
                      headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return _error(503, "service_unavailable", "the database connection was lost; retry",
                          headers={"Retry-After": "2"})
        return _error(500, "internal_error", "the server failed to handle this request; it has been logged")

    app.add_middleware(UploadLimit, max_bytes=get_settings().max_upload_bytes)
    return app


app = create_app()
