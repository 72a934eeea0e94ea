"""Packages and bundles over HTTP: upload, validation errors, listing, publish, export,
import, size limits and tenant isolation."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from safekeeper.archive import Archive
from safekeeper.db.models import Blob
from tests.api.accounts import Accounts, accounts_fixture, add_accounts  # noqa: F401
from tests.packages.zips import build_html_package, build_scorm12, build_symlink

ZIP_HEADERS = {"Content-Type": "application/zip"}


def upload(
    client: TestClient, accounts: Accounts, user: str, path: str, data: bytes, **params: str
) -> httpx.Response:
    response: httpx.Response = client.post(
        f"/api/namespaces/{path}",
        content=data,
        params=params,
        headers={**ZIP_HEADERS, **accounts.headers(user)},
    )
    return response


def blob_count(archive: Archive) -> int:
    with archive.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Blob)) or 0)


def test_upload_a_scorm_package(client: TestClient, accounts: Accounts) -> None:
    response = upload(client, accounts, "alice", "acme.course/packages/units/one", build_scorm12())
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["namespace"], body["key"], body["label"]) == ("acme.course", "units/one", "draft")
    assert body["kind"] == "scorm12"
    assert body["entry"] == "sco/index.html"
    assert body["play_url"] == "/p/acme.course/units/one/draft/sco/index.html"
    assert body["member_count"] > 1


def test_list_packages_with_play_urls(client: TestClient, accounts: Accounts) -> None:
    upload(client, accounts, "alice", "acme.course/packages/one", build_scorm12())
    upload(client, accounts, "alice", "acme.course/packages/two", build_html_package(), label="v2")
    publish = client.post(
        "/api/namespaces/acme.course/publish/one", headers=accounts.headers("bob")
    )
    assert publish.status_code == 200
    listed = client.get(
        "/api/namespaces/acme.course/packages", headers=accounts.headers("bob")
    ).json()
    assert [(p["key"], p["label"], p["kind"], p["play_url"]) for p in listed] == [
        ("one", "draft", "scorm12", "/p/acme.course/one/draft/sco/index.html"),
        ("one", "published", "scorm12", "/p/acme.course/one/published/sco/index.html"),
        ("two", "v2", "html", "/p/acme.course/two/v2/index.html"),
    ]


def test_rejected_package_is_400_with_member_and_stores_nothing(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    response = upload(client, accounts, "alice", "acme.course/packages/bad", build_symlink())
    assert response.status_code == 400
    body = response.json()
    assert body["code"] not in ("bad_input", "error")
    assert body["member"] == "link"
    assert blob_count(app_archive) == 0


def test_not_a_zip_is_400(client: TestClient, accounts: Accounts, app_archive: Archive) -> None:
    response = upload(client, accounts, "alice", "acme.course/packages/bad", b"not a zip at all")
    assert response.status_code == 400
    assert blob_count(app_archive) == 0


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("POST", "/api/namespaces/acme.course/packages/x", "namespace_reserved"),
        ("GET", "/api/namespaces/acme.course/packages", "not_found"),
        ("GET", "/api/namespaces/acme.course/export", "not_found"),
        ("POST", "/api/namespaces/acme.course/import", "namespace_reserved"),
    ],
)
def test_other_tenants_namespace_is_404_or_reserved(
    client: TestClient, accounts: Accounts, method: str, path: str, code: str
) -> None:
    upload(client, accounts, "alice", "acme.course/packages/one", build_scorm12())
    response = client.request(
        method, path, content=build_html_package(), headers=accounts.headers("olga")
    )
    # Reads answer like a missing namespace; writes are refused like any name
    # outside olga's tenant, existing or not (security finding 9).
    assert response.status_code == (403 if code == "namespace_reserved" else 404)
    assert response.json()["code"] == code


def test_export_then_import_into_another_namespace(client: TestClient, accounts: Accounts) -> None:
    upload(client, accounts, "alice", "acme.course/packages/one", build_scorm12())
    exported = client.get("/api/namespaces/acme.course/export", headers=accounts.headers("alice"))
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/x-tar"
    assert int(exported.headers["content-length"]) == len(exported.content)
    imported = client.post(
        "/api/namespaces/acme.copy/import",
        content=exported.content,
        headers=accounts.headers("bob"),
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["references_created"] == 1
    # The archive held the bytes already; a member is not told (issue 13, finding 8).
    assert (imported.json()["blobs_stored"], imported.json()["blobs_skipped"]) == (1, 0)
    listed = client.get(
        "/api/namespaces/acme.copy/packages", headers=accounts.headers("alice")
    ).json()
    assert [(p["key"], p["label"], p["kind"]) for p in listed] == [("one", "draft", "scorm12")]


def test_truncated_bundle_imports_nothing(client: TestClient, accounts: Accounts) -> None:
    upload(client, accounts, "alice", "acme.course/packages/one", build_scorm12())
    exported = client.get("/api/namespaces/acme.course/export", headers=accounts.headers("alice"))
    response = client.post(
        "/api/namespaces/acme.copy/import",
        content=exported.content[: exported.content.index(b"PK\x03\x04") + 100],
        headers=accounts.headers("alice"),
    )
    assert response.status_code == 400
    # A failed request creates nothing, not even the namespace (issue 13, finding 9).
    listed = client.get("/api/namespaces/acme.copy/refs", headers=accounts.headers("alice"))
    assert listed.status_code == 404


@pytest.mark.parametrize("path", ["acme.course/packages/big", "acme.course/import"])
def test_uploads_over_the_limit_are_413(
    small: tuple[TestClient, Accounts, Archive], path: str
) -> None:
    client, accounts, archive = small
    data = build_scorm12()
    assert len(data) > 1024

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 256):
            yield data[start : start + 256]

    for body in (data, chunks()):
        response = client.post(
            f"/api/namespaces/{path}", content=body, headers=accounts.headers("alice")
        )
        assert response.status_code == 413
        assert response.json()["code"] == "too_large"
    assert blob_count(archive) == 0
