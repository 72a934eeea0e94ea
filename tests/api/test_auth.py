"""The auth API: cookies, CSRF, rotation, sign-out, revocation across clients, tokens,
throttling and the admin endpoints."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from safekeeper.archive import Archive
from safekeeper.services.access import accounts
from tests.conftest import ArchiveFactory

PASSWORD = "correct horse battery"
BASE = "http://127.0.0.1"


@pytest.fixture
def app_archive(make_archive: ArchiveFactory) -> Archive:
    archive = make_archive(SAFEKEEPER__SERVER__LOGIN_ATTEMPTS="3")
    for name, tenant, role in (
        ("root", "ops", "admin"),
        ("alice", "acme", "member"),
        ("olga", "acme", "operator"),
        ("carol", "globex", "member"),
    ):
        accounts.add_user(
            archive, name, tenant=tenant, role=role, password=PASSWORD, create_tenant=True
        )
    return archive


@pytest.fixture
def clients(app: FastAPI) -> Iterator[list[TestClient]]:
    """Separate browsers: each has its own cookie jar."""
    opened = [TestClient(app, base_url=BASE) for _ in range(3)]
    yield opened
    for each in opened:
        each.close()


def _login(client: TestClient, user: str, password: str = PASSWORD) -> str:
    response = client.post("/api/auth/login", json={"user": user, "password": password})
    assert response.status_code == 200, response.text
    csrf: str = response.json()["csrf_token"]
    client.headers["X-CSRF-Token"] = csrf
    return csrf


def _code(response: object) -> str:
    return str(response.json()["code"])  # type: ignore[attr-defined]


def test_login_cookie_flags(client: TestClient) -> None:
    response = client.post("/api/auth/login", json={"user": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["user"] == "alice" and response.json()["role"] == "member"
    cookie = response.headers["set-cookie"]
    parts = {p.strip().split("=")[0].lower() for p in cookie.split(";")}
    assert cookie.startswith("sk_session=") and {"httponly", "path"} <= parts
    assert "samesite=lax" in cookie.lower() and "Path=/" in cookie
    assert "secure" not in parts  # plain HTTP on loopback: a Secure cookie would never return


def test_cookie_is_secure_off_loopback(app: FastAPI) -> None:
    for base in ("https://127.0.0.1", "http://files.example.com"):
        with TestClient(app, base_url=base) as remote:
            response = remote.post("/api/auth/login", json={"user": "alice", "password": PASSWORD})
            assert "secure" in response.headers["set-cookie"].lower()


def test_bad_credentials_and_validation(client: TestClient) -> None:
    wrong = client.post("/api/auth/login", json={"user": "alice", "password": "nope nope"})
    assert wrong.status_code == 401 and _code(wrong) == "bad_credentials"
    assert client.post("/api/auth/login", json={"user": "a b"}).status_code == 422
    assert client.get("/api/auth/session").status_code == 401
    bad = client.get("/api/auth/session", headers={"Authorization": "Basic abc"})
    assert bad.status_code == 401 and _code(bad) == "unauthenticated"


def test_rotation_on_login_kills_the_old_token(clients: list[TestClient]) -> None:
    first, thief, _ = clients
    _login(first, "alice")
    old = first.cookies["sk_session"]
    thief.cookies.set("sk_session", old)  # a token planted before sign-in (fixation)
    assert thief.get("/api/auth/session").status_code == 200
    _login(first, "alice")
    assert first.cookies["sk_session"] != old
    assert first.get("/api/auth/session").json()["user"] == "alice"
    replay = thief.get("/api/auth/session")
    assert replay.status_code == 401 and _code(replay) == "session_revoked"


def test_logout_kills_the_token_server_side(clients: list[TestClient]) -> None:
    browser, copy, _ = clients
    _login(browser, "alice")
    token = browser.cookies["sk_session"]
    assert browser.post("/api/auth/logout").status_code == 204
    copy.cookies.set("sk_session", token)
    replay = copy.get("/api/auth/session")
    assert replay.status_code == 401 and _code(replay) == "session_revoked"


def test_csrf_required_for_cookie_writes(client: TestClient) -> None:
    csrf = _login(client, "alice")
    del client.headers["X-CSRF-Token"]
    for headers in ({}, {"X-CSRF-Token": "0" * 64}):
        refused = client.post("/api/auth/sessions/revoke-others", headers=headers)
        assert refused.status_code == 403 and _code(refused) == "csrf_failed"
    ok = client.post("/api/auth/sessions/revoke-others", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    assert client.get("/api/auth/session").json()["csrf_token"] == csrf


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/api/users/alice", {"disabled": True}),
        ("PATCH", "/api/users/alice", {"role": "operator", "current_password": PASSWORD}),
        ("PATCH", "/api/users/alice", {"password": "a new password", "current_password": PASSWORD}),
        ("DELETE", "/api/users/alice", None),
        ("DELETE", "/api/users/alice?hard=true", None),
        ("POST", "/api/users/bulk-delete", {"names": ["alice", "carol"]}),
        ("DELETE", "/api/tenants/acme", None),
        ("DELETE", "/api/users/alice/sessions", None),
    ],
)
def test_admin_revocation_signs_out_every_client(
    app: FastAPI, clients: list[TestClient], method: str, path: str, body: object
) -> None:
    for each in clients:
        _login(each, "alice")
    with TestClient(app, base_url=BASE) as admin:
        _login(admin, "root")
        done = admin.request(method, path, json=body)
        assert done.status_code == 200, done.text
        assert admin.get("/api/auth/session").status_code == 200  # the admin is untouched
    for each in clients:
        after = each.get("/api/auth/session")
        assert after.status_code == 401 and _code(after) == "session_revoked"


def test_own_password_change_rotates_this_session(clients: list[TestClient]) -> None:
    mine, other, _ = clients
    _login(mine, "alice")
    _login(other, "alice")
    before = mine.cookies["sk_session"]
    changed = mine.post(
        "/api/auth/password", json={"current_password": PASSWORD, "new_password": "fresh pass 1"}
    )
    assert changed.status_code == 200
    mine.headers["X-CSRF-Token"] = changed.json()["csrf_token"]
    assert mine.cookies["sk_session"] != before
    assert mine.get("/api/auth/session").status_code == 200
    assert _code(other.get("/api/auth/session")) == "session_revoked"
    wrong = mine.post(
        "/api/auth/password", json={"current_password": PASSWORD, "new_password": "x" * 9}
    )
    assert wrong.status_code == 401


def test_list_and_revoke_sessions(clients: list[TestClient]) -> None:
    for each in clients:
        _login(each, "alice")
    listed = clients[0].get("/api/auth/sessions").json()
    assert len(listed) == 3 and [s["current"] for s in listed].count(True) == 1
    other = next(s["id"] for s in listed if not s["current"])
    assert clients[0].delete(f"/api/auth/sessions/{other}").status_code == 204
    assert clients[0].delete(f"/api/auth/sessions/{other}").status_code == 404
    assert [c.get("/api/auth/session").status_code for c in clients].count(401) == 1
    assert clients[0].post("/api/auth/sessions/revoke-others").json() == {"ended": 1}
    assert [c.get("/api/auth/session").status_code for c in clients] == [200, 401, 401]


def test_api_tokens(client: TestClient, app: FastAPI) -> None:
    _login(client, "alice")
    made = client.post("/api/auth/tokens", json={"name": "ci", "current_password": PASSWORD})
    assert made.status_code == 201
    token = made.json()["token"]
    assert token.startswith("skt_") and len(token) == 4 + 43
    assert "token" not in client.get("/api/auth/tokens").json()[0]
    with TestClient(app, base_url=BASE) as program:
        auth = {"Authorization": f"Bearer {token}"}
        me = program.get("/api/auth/session", headers=auth).json()
        assert (me["user"], me["via"], me["csrf_token"]) == ("alice", "token", None)
        # bearer requests need no CSRF header
        second = program.post(
            "/api/auth/tokens", json={"name": "ci2", "current_password": PASSWORD}, headers=auth
        )
        assert second.status_code == 201
        assert client.delete(f"/api/auth/tokens/{made.json()['id']}").status_code == 204
        assert program.get("/api/auth/session", headers=auth).status_code == 401
        assert program.get("/api/auth/tokens/x").status_code in (401, 405)


def test_login_is_rate_limited(clients: list[TestClient]) -> None:
    attacker, other_address, _ = clients
    for _ in range(3):
        assert (
            attacker.post(
                "/api/auth/login", json={"user": "alice", "password": "guessing"}
            ).status_code
            == 401
        )
    limited = attacker.post("/api/auth/login", json={"user": "alice", "password": PASSWORD})
    assert limited.status_code == 429 and _code(limited) == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    # TestClient connects from one address, so the per-address count blocks others too
    assert (
        other_address.post(
            "/api/auth/login", json={"user": "carol", "password": PASSWORD}
        ).status_code
        == 429
    )


def test_roles_and_tenant_scoped_listing(clients: list[TestClient]) -> None:
    member, operator, admin = clients
    _login(member, "alice")
    _login(operator, "olga")
    _login(admin, "root")
    assert member.get("/api/users").status_code == 403
    assert [u["name"] for u in operator.get("/api/users").json()] == ["alice", "olga"]
    assert [u["name"] for u in admin.get("/api/users").json()] == ["alice", "carol", "olga", "root"]
    assert operator.patch("/api/users/alice", json={"role": "admin"}).status_code == 403
    assert admin.patch("/api/users/nobody", json={"role": "admin"}).status_code == 404
    assert admin.patch("/api/users/alice", json={}).status_code == 400
    assert admin.post("/api/tenants", json={"name": "initech"}).status_code == 201
    assert admin.post("/api/tenants", json={"name": "initech"}).status_code == 409
    new = admin.post(
        "/api/users",
        json={"name": "ivan", "tenant": "initech", "role": "member", "password": PASSWORD},
    )
    assert new.status_code == 201 and new.json()["tenant"] == "initech"
    tenants = {t["name"]: t["users"] for t in admin.get("/api/tenants").json()}
    assert tenants["initech"] == 1


def test_erase_over_http(clients: list[TestClient], app_archive: Archive) -> None:
    admin, alice, _ = clients
    _login(admin, "root")
    _login(alice, "alice")
    from safekeeper.services.access import sessions, tenancy

    principal = sessions.validate(app_archive, alice.cookies["sk_session"])
    with app_archive.db.write() as session:
        tenancy.claim_namespace(session, principal, "acme.alice-files", app_archive.clock())
    blob = app_archive.put_bytes(b"private", ref="acme.alice-files:note").sha256
    erased = admin.delete("/api/users/alice?erase=true")
    assert erased.status_code == 200
    assert erased.json()["blobs"] == [blob] and erased.json()["sessions_ended"] == 1
    assert _code(alice.get("/api/auth/session")) == "session_revoked"


def test_openapi_lists_the_auth_routes(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    for path in ("/api/auth/login", "/api/auth/sessions/{session_id}", "/api/users/bulk-delete"):
        assert path in paths


def test_guessing_the_current_password_is_rate_limited(clients: list[TestClient]) -> None:
    """A stolen session must not become an unthrottled way to guess the password."""
    mine = clients[0]
    _login(mine, "alice")
    for n in range(3):
        guess = {"current_password": f"guess number {n}", "new_password": "fresh pass 1"}
        assert mine.post("/api/auth/password", json=guess).status_code == 401
    right = {"current_password": PASSWORD, "new_password": "fresh pass 1"}
    limited = mine.post("/api/auth/password", json=right)
    assert limited.status_code == 429 and _code(limited) == "rate_limited"
