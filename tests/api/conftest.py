"""An app over a fresh archive, driven in-process by Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from safekeeper.api.app import create_app
from safekeeper.api.package_origin import create_package_app
from safekeeper.archive import Archive
from tests.api.accounts import Accounts, add_accounts
from tests.conftest import ArchiveFactory


@pytest.fixture
def app_archive(make_archive: ArchiveFactory) -> Archive:
    return make_archive()


@pytest.fixture
def app(app_archive: Archive) -> FastAPI:
    return create_app(app_archive)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.fixture
def small(make_archive: ArchiveFactory) -> Iterator[tuple[TestClient, Accounts, Archive]]:
    """A client, its accounts and the archive of an app taking uploads of at most 1 KiB."""
    archive = make_archive(**{"SAFEKEEPER__SERVER__MAX_UPLOAD_SIZE": "1KiB"})
    made = add_accounts(archive)
    with TestClient(create_app(archive), base_url="http://127.0.0.1") as test_client:
        yield test_client, made, archive


def both_origins(archive: Archive) -> ASGIApp:
    """The dashboard/API app and the package origin as one ASGI app, told apart by the
    Host header the way ``safekeeper serve``'s two listeners are by port: a TestClient
    follows ``/p`` redirects to capability URLs like a browser."""
    main = create_app(archive)
    packages = create_package_app(archive)
    package_host = urlsplit(archive.config.server.package_base).netloc.encode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"host") == package_host:
            await packages(scope, receive, send)
        else:
            await main(scope, receive, send)

    return app
