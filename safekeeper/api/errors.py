"""safekeeper's errors as HTTP answers: a status and a JSON body with a ``code``.

Every error a route lets escape becomes ``{"code": ..., "message": ...}``; clients
branch on ``code``, people read ``message``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    Conflict,
    NamespaceReserved,
    NotFound,
    PackageRejected,
    PolicyDenied,
    RateLimited,
    SafekeeperError,
    StoreError,
    TransientStoreError,
)

_STATUS: tuple[tuple[type[SafekeeperError], int], ...] = (
    (NotFound, 404),
    (BadInput, 400),
    (AlreadyExists, 409),
    (Conflict, 409),
    (PolicyDenied, 409),
    (TransientStoreError, 503),
    (StoreError, 502),
)


def status_of(error: SafekeeperError) -> int:
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return int(getattr(error, "status", status))
    return int(getattr(error, "status", 500))


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(SafekeeperError)
    async def _safekeeper_error(_request: Request, exc: SafekeeperError) -> JSONResponse:
        response = error_response(status_of(exc), exc.code, str(exc))
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        member = getattr(exc, "member", None)
        if isinstance(exc, PackageRejected) and member is not None:
            response = JSONResponse(
                {"code": exc.code, "message": str(exc), "member": member},
                status_code=status_of(exc),
            )
        if isinstance(exc, NamespaceReserved):
            response = JSONResponse(
                {"code": exc.code, "message": str(exc), "allowed_prefix": exc.allowed_prefix},
                status_code=status_of(exc),
            )
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(422, "bad_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response
