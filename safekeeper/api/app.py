"""``create_app``: the one ASGI app ``safekeeper serve`` runs.

The app holds one open ``Archive`` (database, stores, configuration) in
``app.state.archive``; routes reach it through ``api.state.archive_of(request)``. Each feature
area is a router in its own module, included here.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from safekeeper.api import (
    admin,
    auth,
    blobs,
    errors,
    launch,
    metrics,
    operations,
    package_api,
    refs,
)
from safekeeper.api.errors import error_response
from safekeeper.api.package_redirects import PackageRedirects, is_package_request
from safekeeper.api.request_metrics import timed
from safekeeper.archive import Archive
from safekeeper.dashboard import install as install_dashboard
from safekeeper.engine.gc_runs import GcRunner


class SafekeeperApp(FastAPI):
    """FastAPI, with the old package URLs (``/p/...``) answered first: redirects to the
    package origin (``api.package_redirects``); content is never served here. Other
    HTTP requests are timed (``api.request_metrics``)."""

    package_serving: PackageRedirects
    #: More header lines than this answer 431 (their total size is bounded by the
    #: HTTP server: ``api.http_server``).
    max_header_count: int = 100

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope["headers"]) > self.max_header_count:
            await _too_many_headers(scope, receive, send)
        elif is_package_request(scope):
            scope["app"] = self
            await self.package_serving(scope, receive, send)
        elif scope["type"] == "http" and _has_body(scope):
            await timed(super().__call__, scope, *_close_if_unread(receive, send))
        elif scope["type"] == "http":
            await timed(super().__call__, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def _close_if_unread(receive: Receive, send: Send) -> tuple[Receive, Send]:
    """An answer given before the request body was read (a refusal: not signed in, too
    large, another site) closes the connection: otherwise the server would go on
    reading, and discarding, whatever the client still sends to keep it alive."""
    finished = False

    async def counted_receive() -> Message:
        nonlocal finished
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            finished = True
        return message

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start" and not finished:
            headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return counted_receive, closing_send


async def _too_many_headers(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(431, "headers_too_large", "too many request header lines")
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


def create_app(archive: Archive) -> FastAPI:
    app = SafekeeperApp(
        title="safekeeper",
        version="1",
        openapi_url="/api/openapi.json",
        # No Swagger page: it loads its scripts from a public CDN (unpinned, no
        # integrity check, broken offline). /api/openapi.json is the reference.
        docs_url=None,
        redoc_url=None,
        # No OpenTelemetry here: otherwise FastAPI asks the global providers on every
        # request (~7 µs, a tenth of serving a small package member).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.archive = archive
    app.state.gc_runner = GcRunner(archive)
    app.package_serving = PackageRedirects()
    app.max_header_count = archive.config.server.max_header_count
    errors.install(app)
    for router in (
        auth.router,
        admin.router,
        blobs.router,
        refs.router,
        launch.router,  # before package_api: its upload route takes any key
        package_api.router,
        operations.router,
        metrics.router,
    ):
        app.include_router(router)

    install_dashboard(app)
    return app
