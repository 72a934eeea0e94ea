"""Findings of the outside security review (issue 13), each pinned by a test that
failed on the code before its fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from safekeeper.archive import Archive
from safekeeper.services.access import accounts as accounts_service
from safekeeper.services.access.erasure import split_erasure
from tests.api.accounts import Accounts
from tests.api.accounts import accounts_fixture as accounts_fixture
from tests.packages.zips import build_html_package


def _put(client: TestClient, made: Accounts, user: str, ref: str, body: bytes) -> str:
    answer = client.post(f"/api/blobs?ref={ref}", content=body, headers=made.headers(user))
    assert answer.status_code == 201, answer.text
    sha: str = answer.json()["sha256"]
    return sha


# -- 12: erasure takes only what is the user's -------------------------------------


@pytest.mark.parametrize(
    ("references", "taken", "others"),
    [
        ([], [], []),
        ([("a:1", 7), ("a:2", None)], ["a:1", "a:2"], []),
        ([("a:1", 7), ("a:2", 8)], ["a:1"], ["a:2"]),
        ([("a:1", 8), ("a:2", 9)], [], ["a:1", "a:2"]),
    ],
)
def test_split_erasure(
    references: list[tuple[str, int | None]], taken: list[str], others: list[str]
) -> None:
    assert split_erasure(7, references) == (taken, others)


def test_erasure_refuses_and_lists_what_colleagues_set_in_the_users_namespace(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    own = _put(client, accounts, "alice", "acme.alice-files:diary", b"alice's diary")
    bobs = _put(client, accounts, "bob", "acme.alice-files:report", b"bob's report")
    refused = client.delete("/api/users/alice?erase=true", headers=accounts.headers("root"))
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "conflict"
    assert "acme.alice-files:report" in refused.json()["message"]
    assert "acme.alice-files:diary" not in refused.json()["message"]
    # Nothing changed: alice is there, both references and their bytes too.
    users = client.get("/api/users", headers=accounts.headers("root")).json()
    assert "alice" in {user["name"] for user in users}
    for user, sha in (("alice", own), ("bob", bobs)):
        answer = client.get(f"/api/blobs/{sha}", headers=accounts.headers(user))
        assert answer.status_code == 200
    # Once bob's reference is gone, only alice's own is taken.
    removed = client.delete(
        "/api/namespaces/acme.alice-files/refs/report", headers=accounts.headers("bob")
    )
    assert removed.status_code in (200, 204), removed.text
    erased = client.delete("/api/users/alice?erase=true", headers=accounts.headers("root"))
    assert erased.status_code == 200, erased.text
    assert erased.json()["blobs"] == [own]


# -- 6: a new password revokes tokens; tokens, roles, passwords need re-authentication -


def _bearer_works(client: TestClient, made: Accounts, user: str) -> bool:
    return client.get("/api/auth/session", headers=made.headers(user)).status_code == 200


def test_changing_a_password_revokes_the_users_api_tokens(
    client: TestClient, accounts: Accounts
) -> None:
    from tests.api.accounts import PASSWORD

    own = client.post(
        "/api/auth/password",
        json={"current_password": PASSWORD, "new_password": "a new password 1"},
        headers=accounts.headers("alice"),
    )
    assert own.status_code == 200, own.text
    assert not _bearer_works(client, accounts, "alice")
    assert _bearer_works(client, accounts, "bob")
    by_admin = client.patch(
        "/api/users/bob",
        json={"password": "a new password 2", "current_password": PASSWORD},
        headers=accounts.headers("root"),
    )
    assert by_admin.status_code == 200, by_admin.text
    assert not _bearer_works(client, accounts, "bob")


def test_tokens_roles_and_passwords_need_the_current_password(
    client: TestClient, accounts: Accounts
) -> None:
    from tests.api.accounts import PASSWORD

    alice, root = accounts.headers("alice"), accounts.headers("root")
    no_password = client.post("/api/auth/tokens", json={"name": "x"}, headers=alice)
    assert no_password.status_code == 422
    wrong = client.post(
        "/api/auth/tokens", json={"name": "x", "current_password": "wrong guess"}, headers=alice
    )
    assert wrong.status_code == 401 and wrong.json()["code"] == "bad_credentials"
    right = client.post(
        "/api/auth/tokens", json={"name": "x", "current_password": PASSWORD}, headers=alice
    )
    assert right.status_code == 201
    for change in ({"role": "admin"}, {"password": "another password"}):
        missing = client.patch("/api/users/alice", json=change, headers=root)
        assert missing.status_code == 400, change
        bad = client.patch(
            "/api/users/alice", json={**change, "current_password": "nope nope"}, headers=root
        )
        assert bad.status_code == 401, change
    # An admin setting their own password needs their current one too.
    own = client.patch("/api/users/root", json={"password": "root's new one"}, headers=root)
    assert own.status_code == 400
    users = {u["name"]: u for u in client.get("/api/users", headers=root).json()}
    assert users["alice"]["role"] == "member"
    promoted = client.patch(
        "/api/users/alice", json={"role": "operator", "current_password": PASSWORD}, headers=root
    )
    assert promoted.status_code == 200 and promoted.json()["role"] == "operator"


# -- 10: odd input is a 4xx with a code, never a 500 -------------------------------


def test_odd_input_answers_4xx_json(client: TestClient, accounts: Accounts) -> None:
    from tests.api.accounts import login

    csrf = login(client, "ops")
    odd = "é"
    answers = [
        client.get("/api/auth/session", headers={"X-CSRF-Token": odd.encode()}),
        client.post(
            "/api/auth/sessions/revoke-others",
            headers={"X-CSRF-Token": odd.encode()},
        ),
        client.delete("/api/auth/sessions/%C3%A9", headers={"X-CSRF-Token": csrf}),
    ]
    for answer in answers:
        assert answer.status_code < 500, answer.text
    assert answers[1].status_code == 403 and answers[1].json()["code"] == "csrf_failed"
    assert answers[2].status_code == 404 and answers[2].json()["code"] == "not_found"
    # The connection (and the session) still work afterwards.
    assert client.get("/api/auth/session").status_code == 200


# -- 8: no cross-tenant dedup oracle -----------------------------------------------


def test_another_tenants_bytes_leave_no_trace_in_import_or_blob_info(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    import io

    from safekeeper.services.packaging.bundles import export_namespace
    from tests.conftest import FakeClock

    clock = app_archive.clock
    assert isinstance(clock, FakeClock)
    secret = b"acme's quarterly numbers"
    sha = _put(client, accounts, "alice", "acme.files:q3", secret)
    # Verified and read in acme's time.
    assert client.get(f"/api/blobs/{sha}", headers=accounts.headers("alice")).content == secret
    clock.advance(days=30)
    # olga (tenant "other") comes by the same bytes in a bundle a month later.
    bundle = io.BytesIO()
    export_namespace(app_archive, "acme.files", bundle)
    imported = client.post(
        "/api/namespaces/other.olga-files/import",
        content=bundle.getvalue(),
        headers=accounts.headers("olga"),
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["blobs_skipped"] == 0 and imported.json()["blobs_stored"] == 1
    info = client.get(f"/api/blobs/{sha}/info", headers=accounts.headers("olga")).json()
    yesterday = clock() - timedelta(days=1)

    def moment(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)

    assert moment(info["created_at"]) == clock()
    times = [moment(copy[f]) for copy in info["copies"] for f in ("verified_at", "last_access")]
    assert all(t is None or t > yesterday for t in times)
    # The admin still sees the storage facts.
    admin_info = client.get(f"/api/blobs/{sha}/info", headers=accounts.headers("root")).json()
    assert moment(admin_info["created_at"]) < yesterday


# -- 9: a failed request creates nothing ---------------------------------------------


def test_a_rejected_upload_leaves_no_namespace_behind(
    small: tuple[TestClient, Accounts, Archive],
) -> None:
    client, made, _archive = small
    too_big = b"x" * 4096
    for path in (
        "/api/blobs?ref=acme.fresh-a:k",
        "/api/namespaces/acme.fresh-b/packages/k",
        "/api/namespaces/acme.fresh-c/import",
    ):
        answer = client.post(path, content=too_big, headers=made.headers("alice"))
        assert answer.status_code == 413, (path, answer.text)
    names = {n["name"] for n in client.get("/api/namespaces", headers=made.headers("root")).json()}
    assert not names & {"acme.fresh-a", "acme.fresh-b", "acme.fresh-c"}
    # Nobody squats the name: a colleague can still take it.
    taken = client.post("/api/blobs?ref=acme.fresh-a:k", content=b"ok", headers=made.headers("bob"))
    assert taken.status_code == 201, taken.text


# -- 13: security events are audited -----------------------------------------------


def test_account_and_credential_changes_and_failed_sign_ins_are_audited(
    client: TestClient, accounts: Accounts
) -> None:
    from tests.api.accounts import PASSWORD

    root, alice = accounts.headers("root"), accounts.headers("alice")
    again = {"current_password": PASSWORD}
    steps = [
        client.post("/api/tenants", json={"name": "initech"}, headers=root),
        client.post(
            "/api/users",
            json={"name": "ivan", "tenant": "initech", "role": "member", "password": PASSWORD},
            headers=root,
        ),
        client.patch("/api/users/ivan", json={"role": "operator", **again}, headers=root),
        client.patch("/api/users/ivan", json={"password": "ivan's new one", **again}, headers=root),
        client.patch("/api/users/ivan", json={"disabled": True}, headers=root),
        client.post("/api/auth/tokens", json={"name": "ci", **again}, headers=alice),
        client.delete("/api/users/ivan", headers=root),
        client.delete("/api/tenants/initech", headers=root),
        client.post("/api/auth/login", json={"user": "bob", "password": "a wrong guess"}),
    ]
    assert [step.status_code for step in steps] == [201, 201, 200, 200, 200, 201, 200, 200, 401]
    token_id = steps[5].json()["id"]
    revoked = client.delete(f"/api/auth/tokens/{token_id}", headers=alice)
    assert revoked.status_code == 204
    events = client.get("/api/audit?rule=security", headers=root).json()
    seen = {(e["action"], e["evidence"]["user"] or e["evidence"]["tenant"]) for e in events}
    assert seen >= {
        ("tenant-created", "initech"),
        ("user-created", "ivan"),
        ("role-changed", "ivan"),
        ("password-set", "ivan"),
        ("user-disabled", "ivan"),
        ("token-created", "alice"),
        ("token-revoked", "alice"),
        ("user-deleted", "ivan"),
        ("tenant-deleted", "initech"),
        ("signin-failed", "bob"),
    }
    by_action = {e["action"]: e for e in events}
    assert by_action["role-changed"]["actor"] == "api:root"
    assert by_action["role-changed"]["evidence"]["detail"] == "member -> operator"
    assert by_action["signin-failed"]["evidence"]["ip"] == "testclient"
    assert all(e["at"] for e in events)
    # Nothing secret: no password and no token in any event.
    text = str(events)
    assert PASSWORD not in text and "a wrong guess" not in text
    assert steps[5].json()["token"] not in text
    # Operators do not read other people's account history.
    operator_view = client.get("/api/audit?rule=security", headers=accounts.headers("ops"))
    assert operator_view.status_code == 200 and operator_view.json() == []


# -- 14: smaller items -----------------------------------------------------------------


def test_every_file_the_default_setup_creates_is_private(tmp_path: Path) -> None:
    """init, put, a user and a gc (which opens the sessions database): nothing in the
    data directory is readable or writable by group or others."""
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}

    def run(*args: str, stdin: bytes = b"") -> None:
        done = subprocess.run(
            [sys.executable, "-m", "safekeeper", *args],
            input=stdin,
            capture_output=True,
            env=environ,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()

    old = os.umask(0o022)  # the usual default: what the fix must not rely on
    try:
        run("init", str(data))
        run("--data-dir", str(data), "put", "-", "--ref", "docs:a", stdin=b"secret bytes")
        run(
            "--data-dir", str(data), "users", "add", "ann", "--tenant", "acme", "--role",
            "admin", "--create-tenant", "--password-stdin", stdin=b"a long password\n",
        )  # fmt: skip
        run("--data-dir", str(data), "gc")
    finally:
        os.umask(old)
    made = [data, *data.rglob("*")]
    names = {path.name for path in made}
    assert {"safekeeper.db", "safekeeper.toml"} <= names, names
    assert any(name.startswith("sessions.db") for name in names), names
    loose = [f"{p} {oct(p.stat().st_mode & 0o777)}" for p in made if p.stat().st_mode & 0o077]
    assert loose == []


def test_users_of_a_deleted_tenant_are_not_listed_as_active(
    client: TestClient, accounts: Accounts
) -> None:
    root = accounts.headers("root")
    assert client.delete("/api/tenants/other", headers=root).status_code == 200
    listed = {u["name"] for u in client.get("/api/users", headers=root).json()}
    assert listed.isdisjoint({"otto", "olga"}) and "alice" in listed


def test_no_swagger_page_from_a_cdn(client: TestClient) -> None:
    assert client.get("/api/docs").status_code == 404
    assert client.get("/api/openapi.json").status_code == 200


# -- 9: nobody but an admin takes a name another tenant could want -----------------


def test_a_member_cannot_squat_a_name_another_tenant_could_want(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    mine = _put(client, accounts, "olga", "other.mine:memo", b"olga's memo")
    exported = client.get("/api/namespaces/other.mine/export", headers=accounts.headers("olga"))
    assert exported.status_code == 200, exported.text
    zip_headers = {"Content-Type": "application/zip"}

    def attempts(namespace: str, user: str) -> list[httpx.Response]:
        headers = accounts.headers(user)
        return [
            client.post(f"/api/blobs?ref={namespace}:k", content=b"bytes", headers=headers),
            client.put(f"/api/namespaces/{namespace}/refs/k", json={"blob": mine}, headers=headers),
            client.post(
                f"/api/namespaces/{namespace}/packages/k",
                content=build_html_package(),
                headers={**zip_headers, **headers},
            ),
            client.post(
                f"/api/namespaces/{namespace}/import", content=exported.content, headers=headers
            ),
        ]

    def names() -> set[str]:
        listed = client.get("/api/namespaces", headers=accounts.headers("root")).json()
        return {n["name"] for n in listed}

    for user in ("olga", "otto"):  # a member and an operator of tenant "other"
        for refused in attempts("course", user):
            assert refused.status_code == 403, refused.text
            assert refused.json()["code"] == "namespace_reserved"
            assert refused.json()["allowed_prefix"] == "other."
            assert "other.course" in refused.json()["message"]
    assert "course" not in names()
    # An admin gives the name to acme: it works for acme's users, and is still refused
    # to other's, with the same answer as before it existed.
    accounts_service.assign_namespaces(app_archive, "acme", ["course"], create=True)
    alices = _put(client, accounts, "alice", "course:intro", b"alice's intro")
    answer = client.put(
        "/api/namespaces/course/refs/again", json={"blob": alices}, headers=accounts.headers("bob")
    )
    assert answer.status_code == 200, answer.text
    again = client.post("/api/blobs?ref=course:k", content=b"x", headers=accounts.headers("olga"))
    assert again.status_code == 403 and again.json()["code"] == "namespace_reserved"
    # A member still creates any name of their own tenant, by each path.
    for n, made in enumerate(attempts("other.course", "olga")):
        assert made.status_code in (200, 201), (n, made.text)
    assert "other.course" in names()
