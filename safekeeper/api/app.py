"""``create_app``: the one ASGI app ``safekeeper serve`` runs.

The app holds one open ``Archive`` (database, stores, configuration) in
``app.state.archive``; routes reach it through ``api.state.archive_of(request)``. Each feature
area is a router in its own module, included here.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from safekeeper.api import admin, auth, blobs, errors, launch, operations, package_api, refs
from safekeeper.api.package_redirects import PackageRedirects, is_package_request
from safekeeper.archive import Archive
from safekeeper.dashboard import install as install_dashboard


class SafekeeperApp(FastAPI):
    """FastAPI, with the old package URLs (``/p/...``) answered first: redirects to the
    package origin (``api.package_redirects``); content is never served here."""

    package_serving: PackageRedirects

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_package_request(scope):
            scope["app"] = self
            await self.package_serving(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(archive: Archive) -> FastAPI:
    app = SafekeeperApp(
        title="safekeeper",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        # No OpenTelemetry here: otherwise FastAPI asks the global providers on every
        # request (~7 µs, a tenth of serving a small package member).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.archive = archive
    app.package_serving = PackageRedirects()
    errors.install(app)
    for router in (
        auth.router,
        admin.router,
        blobs.router,
        refs.router,
        launch.router,  # before package_api: its upload route takes any key
        package_api.router,
        operations.router,
    ):
        app.include_router(router)

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness: answers when the server is up."""
        return {"status": "ok"}

    install_dashboard(app)
    return app
