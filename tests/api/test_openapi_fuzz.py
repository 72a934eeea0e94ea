"""Schemathesis against the published OpenAPI spec: no generated request gets a 5xx.

Every operation of the app (auth, admin, data, operations and ``/p`` serving) is
fuzzed twice: without credentials and as an admin with a bearer token. The archive
holds one uploaded blob under a reference, so some generated ids and names land on
something that exists.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from safekeeper.api.app import create_app
from safekeeper.archive import Archive
from tests.api.accounts import Accounts, add_accounts
from tests.conftest import ArchiveFactory

pytestmark = pytest.mark.slow

FUZZ_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture
def fuzz_archive(make_archive: ArchiveFactory) -> Archive:
    return make_archive()


@pytest.fixture
def fuzz_accounts(fuzz_archive: Archive) -> Accounts:
    accounts = add_accounts(fuzz_archive)
    fuzz_archive.put_bytes(b"fuzz me", ref="course:lesson/one:draft")
    return accounts


@pytest.fixture
def api_schema(fuzz_archive: Archive, fuzz_accounts: Accounts) -> schemathesis.BaseSchema:
    app = create_app(fuzz_archive)
    return schemathesis.openapi.from_asgi("/api/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")
# Zip and bundle uploads are raw bytes, like application/octet-stream.
schemathesis.serializer.alias("application/zip", "application/octet-stream")
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


def _describe(case: schemathesis.Case[Any]) -> str:
    return f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.200}"


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_server_error_unauthenticated(case: schemathesis.Case[Any]) -> None:
    response = case.call()
    assert response.status_code < 500, _describe(case) + f" -> {response.text[:300]}"


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_server_error_as_admin(case: schemathesis.Case[Any], fuzz_accounts: Accounts) -> None:
    response = case.call(headers=fuzz_accounts.headers("root"))
    assert response.status_code < 500, _describe(case) + f" -> {response.text[:300]}"
