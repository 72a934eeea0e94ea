"""What every route reaches: the one open ``Archive`` the app was made with, and its
gc runs."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from safekeeper.archive import Archive
from safekeeper.engine.gc_runs import GcRunner


def archive_of(request: HTTPConnection) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def gc_runner_of(request: HTTPConnection) -> GcRunner:
    """The app's gc runs, made with the app (shared by ``/api/gc`` and the dashboard:
    one run at a time)."""
    runner: GcRunner = request.app.state.gc_runner
    return runner
