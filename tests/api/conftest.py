"""An app over a fresh archive, driven in-process by Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from safekeeper.api.app import create_app
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
