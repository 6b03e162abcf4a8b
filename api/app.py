"""The FastAPI application: routers, the single error body, authentication and the streaming upload limit."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import datasets, jobs, models_catalogue
from api.auth import Authenticate
from api.deps import error_response
from api.schemas import ErrorBody
from models.errors import ServiceError, out_of_space
from models.settings import get_settings

log = logging.getLogger("unfreeze.api")


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
            return await error_response(413, "payload_too_large", message, "file")(scope, receive, send)
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
            await error_response(413, "payload_too_large", message, "file")(scope, receive, send)


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form", "header")]
    text = ".".join(parts).replace(".[", "[")
    return text or None


def _storage_full() -> JSONResponse:
    log.error("storage full while handling a request")
    return error_response(507, "insufficient_storage", "the server's storage is full, so nothing was stored; retry "
                          "later, or ask the operator to free space (UNFREEZE_STORAGE, the database's disk, the "
                          "temporary folder)")


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
        return error_response(422, "invalid_request_error", msg, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if out_of_space(exc.__cause__):  # the upload's temporary spool file could not be written
            return _storage_full()
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request_error")
        return error_response(exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _unusable_value(_: Request, exc: DataError) -> JSONResponse:
        # The database refused a value from the request, such as a NUL character in an id.
        reason = str(exc.orig).splitlines()[0]
        return error_response(422, "invalid_request_error", f"a value in the request cannot be used ({reason}); "
                              "remove control characters such as NUL")

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        if out_of_space(exc):
            return _storage_full()
        log.warning("database unavailable: %s", exc)
        return error_response(503, "service_unavailable", "the database is unavailable; retry in a few seconds",
                      headers={"Retry-After": "2"})

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        return _storage_full() if out_of_space(exc) else await _internal(request, exc)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return error_response(503, "service_unavailable", "the database connection was lost; retry",
                          headers={"Retry-After": "2"})
        return error_response(500, "internal_error", "the server failed to handle this request; it has been logged")

    settings = get_settings()
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    # Added last, so it runs first: keys and rate limits are checked before any body is read.
    app.add_middleware(Authenticate, required=settings.auth, writes_per_minute=settings.rate_limit_per_minute)
    return app


app = create_app()
