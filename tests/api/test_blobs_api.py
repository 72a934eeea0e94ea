"""``/api/blobs``: upload (limits, references, tenancy), download (Range, ETag, HEAD), info."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from safekeeper.archive import Archive
from safekeeper.db.models import Blob
from safekeeper.stores.marker import MARKER_NAME
from tests.api.accounts import Accounts, accounts_fixture, add_accounts  # noqa: F401

DATA = bytes(range(256)) * 40  # 10240 bytes
SHA = hashlib.sha256(DATA).hexdigest()


def upload(
    client: TestClient, accounts: Accounts, user: str, data: bytes, ref: str | None
) -> dict[str, object]:
    params = {"ref": ref} if ref else {}
    response = client.post(
        "/api/blobs", content=data, params=params, headers=accounts.headers(user)
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def stored_files(archive: Archive) -> list[Path]:
    """Objects in every filesystem location, temp files included."""
    found = []
    for name in archive.config.locations:
        root = archive.config.data_dir / name
        if root.exists():
            found += [p for p in root.rglob("*") if p.is_file() and p.name != MARKER_NAME]
    return found


def blob_count(archive: Archive) -> int:
    with archive.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Blob)) or 0)


def test_upload_then_download(client: TestClient, accounts: Accounts) -> None:
    body = upload(client, accounts, "alice", DATA, "acme.course:files/a.bin")
    assert body["sha256"] == SHA
    assert body["size"] == len(DATA)
    assert body["reference"] == {
        "namespace": "acme.course",
        "key": "files/a.bin",
        "label": "default",
        "blob": SHA,
        "size": len(DATA),
        "updated_at": body["reference"]["updated_at"],  # type: ignore[index]
    }
    response = client.get(f"/api/blobs/{SHA}", headers=accounts.headers("alice"))
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["etag"] == f'"{SHA}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(DATA))


def test_upload_same_bytes_twice_is_one_blob(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    upload(client, accounts, "bob", DATA, "acme.course:b")
    assert blob_count(app_archive) == 1


def test_head_has_headers_and_no_body(client: TestClient, accounts: Accounts) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    response = client.head(f"/api/blobs/{SHA}", headers=accounts.headers("alice"))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["etag"] == f'"{SHA}"'


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=2-5", 2, 5),
        ("bytes=10000-", 10000, 10239),
        ("bytes=-3", 10237, 10239),
        ("bytes=10200-99999", 10200, 10239),
        ("bytes=4095-4096", 4095, 4096),
    ],
)
def test_range_answers_206_with_the_slice(
    client: TestClient, accounts: Accounts, header: str, start: int, end: int
) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    headers = {**accounts.headers("alice"), "Range": header}
    response = client.get(f"/api/blobs/{SHA}", headers=headers)
    assert response.status_code == 206
    assert response.content == DATA[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.headers["content-length"] == str(end - start + 1)


def test_range_outside_the_blob_is_416(client: TestClient, accounts: Accounts) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    headers = {**accounts.headers("alice"), "Range": "bytes=20000-"}
    response = client.get(f"/api/blobs/{SHA}", headers=headers)
    assert response.status_code == 416
    assert response.json()["code"] == "range_not_satisfiable"
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=5-2", "items=0-1", "bytes=0-1,4-5", "bytes=x-"])
def test_unusable_range_serves_the_whole_blob(
    client: TestClient, accounts: Accounts, header: str
) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    response = client.get(
        f"/api/blobs/{SHA}", headers={**accounts.headers("alice"), "Range": header}
    )
    assert response.status_code == 200
    assert response.content == DATA


def test_conditional_requests(client: TestClient, accounts: Accounts) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    auth = accounts.headers("alice")
    unchanged = client.get(f"/api/blobs/{SHA}", headers={**auth, "If-None-Match": f'"{SHA}"'})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    stale = client.get(
        f"/api/blobs/{SHA}", headers={**auth, "Range": "bytes=0-0", "If-Range": '"other"'}
    )
    assert stale.status_code == 200
    assert stale.content == DATA


def test_info_lists_copies_references_and_holds(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    response = client.get(f"/api/blobs/{SHA}/info", headers=accounts.headers("alice"))
    assert response.status_code == 200
    info = response.json()
    assert info["sha256"] == SHA
    assert info["size"] == len(DATA)
    assert [(c["location"], c["state"]) for c in info["copies"]] == [
        (app_archive.config.ingest_location, "present")
    ]
    assert [(r["namespace"], r["key"]) for r in info["references"]] == [("acme.course", "a")]
    assert info["holds"] == []
    assert info["unreferenced_since"] is None


def test_member_must_give_a_reference(client: TestClient, accounts: Accounts) -> None:
    response = client.post("/api/blobs", content=DATA, headers=accounts.headers("alice"))
    assert response.status_code == 400
    assert response.json()["code"] == "bad_input"


def test_admin_may_upload_without_a_reference(client: TestClient, accounts: Accounts) -> None:
    body = upload(client, accounts, "root", DATA, None)
    assert body["reference"] is None
    assert client.get(f"/api/blobs/{SHA}", headers=accounts.headers("root")).content == DATA


@pytest.mark.parametrize("path", ["/api/blobs/xyz", f"/api/blobs/{SHA[:-1]}/info"])
def test_bad_blob_id_is_400(client: TestClient, accounts: Accounts, path: str) -> None:
    response = client.get(path, headers=accounts.headers("alice"))
    assert response.status_code == 400
    assert response.json()["code"] == "bad_input"


def test_bad_reference_is_400_and_stores_nothing(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    response = client.post(
        "/api/blobs", content=DATA, params={"ref": "no-key"}, headers=accounts.headers("alice")
    )
    assert response.status_code == 400
    assert blob_count(app_archive) == 0


def test_unknown_blob_is_404(client: TestClient, accounts: Accounts) -> None:
    response = client.get(f"/api/blobs/{'0' * 64}", headers=accounts.headers("root"))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_unauthenticated_is_401(client: TestClient, accounts: Accounts) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    assert client.get(f"/api/blobs/{SHA}").status_code == 401
    assert (
        client.post("/api/blobs", content=b"x", params={"ref": "acme.course:b"}).status_code == 401
    )


@pytest.mark.parametrize(
    ("user", "status"),
    [("alice", 200), ("bob", 200), ("ops", 200), ("root", 200), ("olga", 404), ("otto", 404)],
)
def test_blobs_are_visible_through_tenant_references(
    client: TestClient, accounts: Accounts, user: str, status: int
) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    for path in (f"/api/blobs/{SHA}", f"/api/blobs/{SHA}/info"):
        response = client.get(path, headers=accounts.headers(user))
        assert response.status_code == status
    head = client.head(f"/api/blobs/{SHA}", headers=accounts.headers(user))
    assert head.status_code == status


def test_other_tenant_sees_only_its_own_references_of_shared_bytes(
    client: TestClient, accounts: Accounts
) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    upload(client, accounts, "olga", DATA, "other.theirs:b")
    info = client.get(f"/api/blobs/{SHA}/info", headers=accounts.headers("olga")).json()
    assert [(r["namespace"], r["key"]) for r in info["references"]] == [("other.theirs", "b")]


def test_upload_into_another_tenants_namespace_is_refused_and_stores_nothing(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    upload(client, accounts, "alice", b"first", "acme.course:a")
    response = client.post(
        "/api/blobs",
        content=DATA,
        params={"ref": "acme.course:x"},
        headers=accounts.headers("olga"),
    )
    # Refused like any name of another tenant, existing or not (security finding 9).
    assert response.status_code == 403 and response.json()["code"] == "namespace_reserved"
    assert blob_count(app_archive) == 1


def test_declared_size_over_the_limit_is_413(small: tuple[TestClient, Accounts, Archive]) -> None:
    client, accounts, archive = small
    response = client.post(
        "/api/blobs",
        content=b"x" * 1025,
        params={"ref": "acme.c:k"},
        headers=accounts.headers("alice"),
    )
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert blob_count(archive) == 0
    assert stored_files(archive) == []


def test_streamed_body_over_the_limit_is_413_and_leaves_nothing(
    small: tuple[TestClient, Accounts, Archive],
) -> None:
    client, accounts, archive = small

    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 300

    response = client.post(
        "/api/blobs",
        content=chunks(),
        params={"ref": "acme.c:k"},
        headers=accounts.headers("alice"),
    )
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert blob_count(archive) == 0
    assert stored_files(archive) == []


def test_body_at_the_limit_is_stored(small: tuple[TestClient, Accounts, Archive]) -> None:
    client, accounts, archive = small
    response = client.post(
        "/api/blobs",
        content=b"z" * 1024,
        params={"ref": "acme.c:k"},
        headers=accounts.headers("alice"),
    )
    assert response.status_code == 201
    assert blob_count(archive) == 1


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("bytes=0-" + "9" * 5000, 206),
        ("bytes=" + "9" * 5000 + "-", 416),
        ("bytes=-" + "9" * 5000, 206),
    ],
)
def test_huge_range_numbers_are_not_a_500(
    client: TestClient, accounts: Accounts, header: str, status: int
) -> None:
    upload(client, accounts, "alice", DATA, "acme.course:a")
    response = client.get(
        f"/api/blobs/{SHA}", headers={**accounts.headers("alice"), "Range": header}
    )
    assert response.status_code == status
    if status == 206:
        assert response.content == DATA


@pytest.mark.parametrize(
    ("headers", "files"),
    [
        ({}, {"file": ("report.pdf", DATA, "application/pdf")}),  # multipart/form-data
        ({"Content-Type": "application/x-www-form-urlencoded"}, None),  # curl --data-binary
        ({"Content-Type": "text/plain; charset=utf-8"}, None),
        ({"Content-Type": "application/json"}, None),
    ],
)
def test_upload_refuses_anything_but_raw_bytes(
    client: TestClient,
    accounts: Accounts,
    app_archive: Archive,
    headers: dict[str, str],
    files: dict[str, tuple[str, bytes, str]] | None,
) -> None:
    response = client.post(
        "/api/blobs",
        params={"ref": "acme.course:a"},
        headers={**accounts.headers("alice"), **headers},
        **({"files": files} if files else {"content": DATA}),  # type: ignore[arg-type]
    )
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert blob_count(app_archive) == 0
    assert stored_files(app_archive) == []
    # the raw bytes, labelled as such, are taken
    ok = client.post(
        "/api/blobs",
        content=DATA,
        params={"ref": "acme.course:a"},
        headers={**accounts.headers("alice"), "Content-Type": "Application/Octet-Stream"},
    )
    assert ok.status_code == 201 and ok.json()["sha256"] == SHA
