"""Who is calling: every request under /v1 carries `Authorization: Bearer <key>`, and the key names its tenant.

`Authenticate` checks the key and the per-key write rate limit as ASGI middleware, before any body is read,
so an unauthenticated or throttled upload costs nothing. Routes read the caller's tenant with `TenantId`.
With UNFREEZE_AUTH=off every request is the local tenant's and shares one rate-limit bucket.
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import error_response
from api.keys import Caller, caller_of
from api.ratelimit import SlidingWindow
from models.db import get_sessionmaker
from models.tables import LOCAL_TENANT

WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
LOCAL_CALLER = Caller(key_id=None, tenant_id=LOCAL_TENANT)

bearer = HTTPBearer(auto_error=False, description="An API key from `python -m api.keys create --tenant NAME`.")


def _bearer_token(scope: Scope) -> str | None:
    value = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _lookup(key: str) -> Caller | None:
    with get_sessionmaker()() as session:
        return caller_of(session, key)


def _unauthorized(message: str, challenge: str) -> JSONResponse:
    return error_response(401, "authentication_error", message, "Authorization", {"WWW-Authenticate": challenge})


class Authenticate:
    """Refuses /v1 requests without a live API key (401) and write requests over the key's rate (429)."""

    def __init__(self, app: ASGIApp, *, required: bool, writes_per_minute: int) -> None:
        self.app = app
        self.required = required
        self.limiter = SlidingWindow(writes_per_minute) if writes_per_minute else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"] + "/").startswith("/v1/"):
            return await self.app(scope, receive, send)
        caller = await self._authenticate(scope) if self.required else LOCAL_CALLER
        if not isinstance(caller, Caller):
            return await caller(scope, receive, send)
        if self.limiter is not None and scope["method"] in WRITE_METHODS:
            wait = self.limiter.hit(caller.key_id or caller.tenant_id)
            if wait:
                return await error_response(
                    429, "rate_limit_exceeded", f"this API key made {self.limiter.limit} write requests in the last "
                    f"minute, the most allowed (UNFREEZE_RATE_LIMIT_PER_MINUTE); retry in {wait} s",
                    headers={"Retry-After": str(wait)})(scope, receive, send)
        scope.setdefault("state", {})["tenant_id"] = caller.tenant_id
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Caller | JSONResponse:
        key = _bearer_token(scope)
        if key is None:
            return _unauthorized("no API key; send one as 'Authorization: Bearer <key>' (an administrator creates "
                                 "keys with `python -m api.keys create --tenant NAME`)", "Bearer")
        try:
            caller = await run_in_threadpool(_lookup, key)
        except DBAPIError as exc:
            if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                raise
            return error_response(503, "service_unavailable", "the database is unavailable; retry in a few seconds",
                                  headers={"Retry-After": "2"})
        if caller is None:
            return _unauthorized("the API key is unknown or revoked; check it, or ask for a new one",
                                 'Bearer error="invalid_token"')
        return caller


def tenant_id(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The caller's tenant, as `Authenticate` found it (`bearer` only declares the scheme in the OpenAPI schema)."""
    return request.state.tenant_id


TenantId = Annotated[str, Depends(tenant_id)]
