"""The dashboard's routes fuzzed like the API's (schemathesis cannot see them: they
are not in the OpenAPI schema): every page and form route, signed in as an admin with
a valid CSRF token, gets generated path segments, query parameters and form fields —
non-ASCII, huge numbers, empty strings — and must answer without a 5xx."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safekeeper.api.app import create_app
from safekeeper.dashboard import pages_account, pages_ops, pages_packages
from safekeeper.services.access import accounts
from tests.conftest import ArchiveFactory

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"
#: Routes that start background work or end the session the fuzz runs in.
SKIPPED = {("POST", "/plan/run"), ("POST", "/signout")}

values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "0", "-1", str(10**30), "é", "%C3%A9", "../..", "a:b:c", "7d", "9" * 12 + "d"]
    ),
)


@pytest.fixture
def app_client(make_archive: ArchiveFactory) -> Iterator[tuple[TestClient, FastAPI]]:
    archive = make_archive()
    accounts.add_user(
        archive, "ada", tenant="acme", role="admin", password=PASSWORD, create_tenant=True
    )
    archive.put_bytes(b"fuzz me", ref="course:lesson:draft")
    app = create_app(archive)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, app


def _dashboard_routes() -> list[tuple[str, str, list[str], list[str]]]:
    found = []
    routes = [*pages_account.router.routes, *pages_ops.router.routes]
    for route in [*routes, *pages_packages.router.routes]:
        if not isinstance(route, APIRoute) or route.include_in_schema:
            continue
        fields = [p.name for p in route.dependant.query_params]
        form = [p.name for p in route.dependant.body_params]
        for dependency in route.dependant.dependencies:
            form += [p.name for p in dependency.body_params]
        for method in sorted(route.methods):
            if (method, route.path) not in SKIPPED:
                found.append((method, route.path, fields, form))
    return found


def _sign_in(client: TestClient) -> str:
    client.post("/signin", data={"username": "ada", "password": PASSWORD})
    match = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', client.get("/sessions").text)
    assert match is not None
    return match.group(1)


def _fuzz(
    client: TestClient,
    csrf: str,
    method: str,
    path: str,
    query_names: list[str],
    form_names: list[str],
) -> None:
    names = re.findall(r"{(\w+)(?::path)?}", path)

    @settings(
        max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(
        segments=st.fixed_dictionaries({n: values for n in names}),
        query=st.fixed_dictionaries({n: values for n in query_names}),
        form=st.fixed_dictionaries({n: values for n in form_names if n != "csrf_token"}),
    )
    def check(segments: dict[str, str], query: dict[str, str], form: dict[str, str]) -> None:
        url = path
        for name, value in segments.items():
            url = re.sub("{" + name + "(?::path)?}", quote(value, safe="") or "x", url)
        data = {**form, "csrf_token": csrf} if method == "POST" else None
        answer = client.request(method, url, params=query, data=data, follow_redirects=False)
        assert answer.status_code < 500, f"{method} {url} {query} {form}: {answer.text[:300]}"

    check()


def test_no_dashboard_route_answers_5xx(app_client: tuple[TestClient, FastAPI]) -> None:
    client, _app = app_client
    routes = _dashboard_routes()
    assert len(routes) > 20
    csrf = _sign_in(client)
    for method, path, query_names, form_names in routes:
        _fuzz(client, csrf, method, path, query_names, form_names)
