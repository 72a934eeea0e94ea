"""``/api/namespaces``: listing, reading and writing references, with tenant isolation."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from safekeeper.archive import Archive
from safekeeper.services.deletion import holds
from tests.api.accounts import Accounts, accounts_fixture  # noqa: F401

ONE = b"one" * 100
TWO = b"two" * 100


def put(client: TestClient, accounts: Accounts, user: str, data: bytes, ref: str) -> str:
    response = client.post(
        "/api/blobs", content=data, params={"ref": ref}, headers=accounts.headers(user)
    )
    assert response.status_code == 201, response.text
    sha256: str = response.json()["sha256"]
    return sha256


def test_namespaces_list_only_the_tenants_own(client: TestClient, accounts: Accounts) -> None:
    put(client, accounts, "alice", ONE, "acme.course:a")
    put(client, accounts, "alice", TWO, "acme.course:b/c")
    put(client, accounts, "olga", ONE, "other.theirs:x")
    mine = client.get("/api/namespaces", headers=accounts.headers("bob")).json()
    assert [(n["name"], n["tenant"], n["references"]) for n in mine] == [("acme.course", "acme", 2)]
    theirs = client.get("/api/namespaces", headers=accounts.headers("olga")).json()
    assert [n["name"] for n in theirs] == ["other.theirs"]
    everything = client.get("/api/namespaces", headers=accounts.headers("root")).json()
    assert [n["name"] for n in everything] == ["acme.course", "other.theirs"]


def test_put_list_and_delete_a_reference(client: TestClient, accounts: Accounts) -> None:
    sha_one = put(client, accounts, "alice", ONE, "acme.course:a")
    auth = accounts.headers("alice")
    response = client.put(
        "/api/namespaces/acme.course/refs/dir/file.txt",
        params={"label": "v1"},
        json={"blob": sha_one},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    assert response.json()["key"] == "dir/file.txt"
    assert response.json()["label"] == "v1"
    listed = client.get("/api/namespaces/acme.course/refs", headers=auth).json()
    assert [(r["key"], r["label"], r["blob"]) for r in listed] == [
        ("a", "default", sha_one),
        ("dir/file.txt", "v1", sha_one),
    ]
    deleted = client.delete(
        "/api/namespaces/acme.course/refs/dir/file.txt", params={"label": "v1"}, headers=auth
    )
    assert deleted.status_code == 204
    listed = client.get("/api/namespaces/acme.course/refs", headers=auth).json()
    assert [r["key"] for r in listed] == ["a"]
    again = client.delete(
        "/api/namespaces/acme.course/refs/dir/file.txt", params={"label": "v1"}, headers=auth
    )
    assert again.status_code == 404


def test_replacing_a_reference_moves_it(client: TestClient, accounts: Accounts) -> None:
    put(client, accounts, "alice", ONE, "acme.course:a")
    sha_two = put(client, accounts, "alice", TWO, "acme.course:b")
    response = client.put(
        "/api/namespaces/acme.course/refs/a",
        json={"blob": sha_two},
        headers=accounts.headers("alice"),
    )
    assert response.json()["blob"] == sha_two


def test_cannot_reference_a_blob_of_another_tenant(client: TestClient, accounts: Accounts) -> None:
    """Knowing a hash is not enough to reach its bytes."""
    sha_one = put(client, accounts, "alice", ONE, "acme.course:a")
    response = client.put(
        "/api/namespaces/other.theirs/refs/stolen",
        json={"blob": sha_one},
        headers=accounts.headers("olga"),
    )
    assert response.status_code == 404
    listing = client.get("/api/namespaces", headers=accounts.headers("olga")).json()
    assert listing == [] or all(n["references"] == 0 for n in listing)


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/api/namespaces/acme.course/refs", "not_found"),
        ("PUT", "/api/namespaces/acme.course/refs/a", "namespace_reserved"),
        ("DELETE", "/api/namespaces/acme.course/refs/a", "not_found"),
        ("POST", "/api/namespaces/acme.course/publish/a", "not_found"),
    ],
)
def test_other_tenants_namespace_is_404_or_reserved(
    client: TestClient, accounts: Accounts, method: str, path: str, code: str
) -> None:
    sha_one = put(client, accounts, "alice", ONE, "acme.course:a")
    olga_sha = put(client, accounts, "olga", ONE, "other.theirs:a")
    assert olga_sha == sha_one
    body = {"blob": sha_one} if method == "PUT" else None
    for user in ("olga", "otto"):
        response = client.request(method, path, json=body, headers=accounts.headers(user))
        assert response.status_code == (403 if code == "namespace_reserved" else 404), response.text
        assert response.json()["code"] == code
    listed = client.get(
        "/api/namespaces/acme.course/refs", headers=accounts.headers("alice")
    ).json()
    assert [r["key"] for r in listed] == ["a"]


@pytest.mark.parametrize(
    ("path", "params", "body"),
    [
        ("/api/namespaces/bad%20name/refs/a", {}, {"blob": "0" * 64}),
        ("/api/namespaces/acme.course/refs/a//b", {}, {"blob": "0" * 64}),
        ("/api/namespaces/acme.course/refs/a", {"label": "no/slash"}, {"blob": "0" * 64}),
        ("/api/namespaces/acme.course/refs/a", {}, {"blob": "not-a-hash"}),
    ],
)
def test_malformed_reference_parts_are_400(
    client: TestClient, accounts: Accounts, path: str, params: dict[str, str], body: object
) -> None:
    response = client.put(path, params=params, json=body, headers=accounts.headers("alice"))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "bad_input"


def test_missing_body_is_422(client: TestClient, accounts: Accounts) -> None:
    response = client.put("/api/namespaces/acme.course/refs/a", headers=accounts.headers("alice"))
    assert response.status_code == 422
    assert response.json()["code"] == "bad_request"


def test_held_namespace_refuses_removal_with_409(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    put(client, accounts, "alice", ONE, "acme.course:a")
    holds.add_hold(app_archive, "acme.course", "litigation", "test")
    response = client.delete(
        "/api/namespaces/acme.course/refs/a", headers=accounts.headers("alice")
    )
    assert response.status_code == 409
    assert response.json()["code"] == "policy_denied"


def test_publish_points_published_at_the_draft(client: TestClient, accounts: Accounts) -> None:
    sha_one = put(client, accounts, "alice", ONE, "acme.course:lesson:draft")
    response = client.post(
        "/api/namespaces/acme.course/publish/lesson", headers=accounts.headers("bob")
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "namespace": "acme.course",
        "key": "lesson",
        "sha256": sha_one,
        "previous": None,
    }
    listed = client.get("/api/namespaces/acme.course/refs", headers=accounts.headers("bob")).json()
    assert {(r["label"], r["blob"]) for r in listed} == {("draft", sha_one), ("published", sha_one)}
    missing = client.post(
        "/api/namespaces/acme.course/publish/nothing", headers=accounts.headers("bob")
    )
    assert missing.status_code == 404


def test_cookie_session_needs_csrf_header_for_writes(
    client: TestClient, accounts: Accounts
) -> None:
    from tests.api.accounts import login

    sha_one = put(client, accounts, "alice", ONE, "acme.course:a")
    csrf = login(client, "bob")
    refused = client.put("/api/namespaces/acme.course/refs/b", json={"blob": sha_one})
    assert refused.status_code == 403
    assert refused.json()["code"] == "csrf_failed"
    accepted = client.put(
        "/api/namespaces/acme.course/refs/b", json={"blob": sha_one}, headers={"X-CSRF-Token": csrf}
    )
    assert accepted.status_code == 200
    assert hashlib.sha256(ONE).hexdigest() == accepted.json()["blob"]
