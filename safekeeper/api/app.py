"""``create_app``: the one ASGI app ``safekeeper serve`` runs.

The app holds one open ``Archive`` (database, stores, configuration) in
``app.state.archive``; routes reach it through ``archive_of(request)``. Each feature
area is a router in its own module, included here.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from safekeeper.api import admin, auth, errors
from safekeeper.api import packages as package_serving
from safekeeper.archive import Archive
from safekeeper.dashboard import install as install_dashboard


def archive_of(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def create_app(archive: Archive) -> FastAPI:
    app = FastAPI(
        title="safekeeper",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.archive = archive
    errors.install(app)
    app.include_router(auth.router)
    app.include_router(admin.router)
    package_serving.install(app)
    # Imported here, not at the top: these routers import ``archive_of`` from this module.
    from safekeeper.api import blobs, operations, package_api, refs

    for data_router in (blobs.router, refs.router, package_api.router, operations.router):
        app.include_router(data_router)

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness: answers when the server is up."""
        return {"status": "ok"}

    install_dashboard(app)
    return app
