"""The web dashboard: server-rendered pages for operators and users.

``install(app)`` adds the page routers and the static files to the one app
``safekeeper serve`` runs; the pages call the same services as the CLI and the API.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from safekeeper.dashboard import pages_account, pages_ops, pages_packages
from safekeeper.dashboard.web import HERE


def install(app: FastAPI) -> None:
    app.include_router(pages_account.router)
    app.include_router(pages_ops.router)
    app.include_router(pages_packages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
