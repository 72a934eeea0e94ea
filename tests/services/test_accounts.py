"""Tenants and users: every change that takes access away ends the sessions at once."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.db.models import ApiToken, User
from safekeeper.errors import AlreadyExists, BadInput, NotFound, Unauthenticated
from safekeeper.services.access import accounts, sessions, tokens
from safekeeper.services.access.login_throttle import LoginThrottle

PASSWORD = "correct horse battery"


def _throttle(archive: Archive) -> LoginThrottle:
    return LoginThrottle(1000, archive.config.server.login_window)


def _sign_in(archive: Archive, name: str, password: str = PASSWORD) -> str:
    return accounts.sign_in(archive, _throttle(archive), name, password)[0]


def _dead(archive: Archive, token: str) -> bool:
    try:
        sessions.validate(archive, token)
    except Unauthenticated as exc:
        return exc.code == "session_revoked"
    return False


@pytest.fixture
def people(archive: Archive) -> dict[str, list[str]]:
    """alice and bob in acme, carol in globex; three sessions each (three clients)."""
    for name, tenant in (("alice", "acme"), ("bob", "acme"), ("carol", "globex")):
        accounts.add_user(
            archive, name, tenant=tenant, role="member", password=PASSWORD, create_tenant=True
        )
    return {name: [_sign_in(archive, name) for _ in range(3)] for name in ("alice", "bob", "carol")}


def _alive(archive: Archive, people: dict[str, list[str]]) -> dict[str, int]:
    return {name: sum(not _dead(archive, t) for t in toks) for name, toks in people.items()}


Change = Callable[[Archive], object]

CHANGES: dict[str, tuple[Change, set[str]]] = {
    "disable": (lambda a: accounts.set_disabled(a, "alice", True), {"alice"}),
    "soft delete": (lambda a: accounts.delete_users(a, ["alice"]), {"alice"}),
    "hard delete": (lambda a: accounts.delete_users(a, ["alice"], hard=True), {"alice"}),
    "bulk delete": (lambda a: accounts.delete_users(a, ["alice", "carol"]), {"alice", "carol"}),
    "tenant delete": (lambda a: accounts.delete_tenant(a, "acme"), {"alice", "bob"}),
    "password": (lambda a: accounts.set_password(a, "alice", "another password"), {"alice"}),
    "role": (lambda a: accounts.set_role(a, "alice", "operator"), {"alice"}),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_revocation_path_ends_all_sessions_of_the_affected(
    archive: Archive, people: dict[str, list[str]], change: str
) -> None:
    apply, affected = CHANGES[change]
    apply(archive)
    alive = _alive(archive, people)
    assert alive == {name: 0 if name in affected else 3 for name in people}


@pytest.mark.parametrize("change", ["disable", "soft delete", "tenant delete"])
def test_the_recheck_refuses_even_if_the_sessions_survived(
    archive: Archive,
    people: dict[str, list[str]],
    change: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash between the catalog commit and the sessions DELETE (injected: the
    DELETE never happens) still leaves no request signed in."""
    with monkeypatch.context() as patch:
        patch.setattr(sessions, "end_user_sessions", lambda *a, **k: 0)
        patch.setattr(sessions, "end_tenant_sessions", lambda *a, **k: 0)
        CHANGES[change][0](archive)
    assert all(_dead(archive, t) for t in people["alice"])
    assert not any(_dead(archive, t) for t in people["carol"])


def test_password_change_by_the_user_rotates_the_current_session(
    archive: Archive, people: dict[str, list[str]]
) -> None:
    current, *others = people["alice"]
    rotated = accounts.set_password(archive, "alice", "new password!", current_token=current)
    assert rotated is not None and rotated != current
    assert all(_dead(archive, t) for t in [current, *others])
    assert sessions.validate(archive, rotated).user_name == "alice"
    with pytest.raises(Unauthenticated):
        _sign_in(archive, "alice")
    assert _sign_in(archive, "alice", "new password!")


def test_disabled_deleted_and_tenantless_users_cannot_sign_in(
    archive: Archive, people: dict[str, list[str]]
) -> None:
    accounts.set_disabled(archive, "alice", True)
    accounts.delete_users(archive, ["carol"])
    accounts.delete_tenant(archive, "acme")
    for name in ("alice", "bob", "carol"):
        with pytest.raises(Unauthenticated):
            _sign_in(archive, name)
    accounts.set_disabled(archive, "alice", False)
    with pytest.raises(Unauthenticated):  # still: her tenant is gone
        _sign_in(archive, "alice")


def test_disable_and_delete_revoke_api_tokens(
    archive: Archive, people: dict[str, list[str]]
) -> None:
    alice_id = sessions.validate(archive, people["alice"][0]).user_id
    bob_id = sessions.validate(archive, people["bob"][0]).user_id
    _, alice_token = tokens.create_token(archive, alice_id, "ci")
    _, bob_token = tokens.create_token(archive, bob_id, "ci")
    assert tokens.validate(archive, alice_token).user_name == "alice"
    accounts.set_disabled(archive, "alice", True)
    accounts.set_disabled(archive, "alice", False)
    with pytest.raises(Unauthenticated):  # re-enabling does not bring the token back
        tokens.validate(archive, alice_token)
    accounts.delete_users(archive, ["bob"], hard=True)
    with pytest.raises(Unauthenticated):
        tokens.validate(archive, bob_token)
    with archive.db.read() as session:
        assert session.scalar(select(User).where(User.name == "bob")) is None
        assert session.scalars(select(ApiToken.user_id)).all() == [alice_id]


def test_bulk_delete_is_all_or_nothing(archive: Archive, people: dict[str, list[str]]) -> None:
    with pytest.raises(NotFound, match="nobody"):
        accounts.delete_users(archive, ["alice", "nobody"])
    assert _alive(archive, people)["alice"] == 3
    assert [u.name for u in accounts.list_users(archive)] == ["alice", "bob", "carol"]


def test_bad_input_is_refused(archive: Archive) -> None:
    accounts.add_tenant(archive, "acme")
    with pytest.raises(AlreadyExists):
        accounts.add_tenant(archive, "acme")
    with pytest.raises(NotFound):
        accounts.add_user(archive, "x1", tenant="nope", role="member", password=PASSWORD)
    with pytest.raises(BadInput, match="role"):
        accounts.add_user(archive, "x1", tenant="acme", role="root", password=PASSWORD)
    with pytest.raises(BadInput, match="password"):
        accounts.add_user(archive, "x1", tenant="acme", role="member", password="short")
    with pytest.raises(BadInput, match="user name"):
        accounts.add_user(archive, "../x", tenant="acme", role="member", password=PASSWORD)
    accounts.add_user(archive, "x1", tenant="acme", role="member", password=PASSWORD)
    with pytest.raises(AlreadyExists):
        accounts.add_user(archive, "x1", tenant="acme", role="member", password=PASSWORD)
    assert [(t.name, t.users) for t in accounts.list_tenants(archive)] == [("acme", 1)]


def test_passwords_are_stored_as_argon2id(archive: Archive) -> None:
    accounts.add_user(
        archive, "dora", tenant="t", role="admin", password=PASSWORD, create_tenant=True
    )
    with archive.db.read() as session:
        stored = session.scalar(select(User.password_hash).where(User.name == "dora"))
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored
