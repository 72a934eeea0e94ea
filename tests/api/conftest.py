"""An app over a fresh archive, driven in-process by Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from safekeeper.api.app import create_app
from safekeeper.archive import Archive
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
