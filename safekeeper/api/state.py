"""What every route reaches: the one open ``Archive`` the app was made with."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from safekeeper.archive import Archive


def archive_of(request: HTTPConnection) -> Archive:
    archive: Archive = request.app.state.archive
    return archive
