"""Sessions: token format, hashed storage, rotation, sign-out, timeouts, the re-check."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from safekeeper.archive import Archive
from safekeeper.db.models import User
from safekeeper.db.session_models import LoginSession
from safekeeper.errors import NotFound, RateLimited, Unauthenticated
from safekeeper.services.access import accounts, sessions
from safekeeper.services.access.login_throttle import LoginThrottle
from tests.conftest import ArchiveFactory, FakeClock

PASSWORD = "correct horse battery"


def _throttle(archive: Archive) -> LoginThrottle:
    server = archive.config.server
    return LoginThrottle(server.login_attempts, server.login_window)


@pytest.fixture
def alice(archive: Archive) -> str:
    accounts.add_user(
        archive, "alice", tenant="acme", role="member", password=PASSWORD, create_tenant=True
    )
    return "alice"


def _sign_in(archive: Archive, name: str = "alice", **kw: str | None) -> str:
    token, _ = accounts.sign_in(archive, _throttle(archive), name, PASSWORD, **kw)  # type: ignore[arg-type]
    return token


def _code(archive: Archive, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        sessions.validate(archive, token)
    return caught.value.code


def test_token_has_256_bits_and_a_url_safe_format(archive: Archive, alice: str) -> None:
    tokens = {_sign_in(archive) for _ in range(3)}
    assert len(tokens) == 3
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
        assert len(base64.urlsafe_b64decode(token + "=")) == 32
    many = {sessions.new_token() for _ in range(2000)}
    assert len(many) == 2000  # no repeats: the bits are random


def test_only_the_hash_is_stored(archive: Archive, alice: str) -> None:
    token = _sign_in(archive, ip="10.0.0.1", user_agent="pytest")
    with archive.sessions_db.read() as session:
        rows = session.scalars(select(LoginSession)).all()
    assert [row.token_hash for row in rows] == [hashlib.sha256(token.encode()).hexdigest()]
    assert rows[0].ip == "10.0.0.1" and rows[0].user_agent == "pytest"
    stored = " ".join(str(vars(row)) for row in rows)
    assert token not in stored


def test_validate_returns_the_principal(archive: Archive, alice: str) -> None:
    token = _sign_in(archive)
    principal = sessions.validate(archive, token)
    assert (principal.user_name, principal.tenant_name, principal.role, principal.via) == (
        "alice",
        "acme",
        "member",
        "session",
    )
    assert principal.session_token_hash == sessions.hash_token(token)


def test_login_rotates_the_pre_login_token(archive: Archive, alice: str) -> None:
    old = _sign_in(archive)
    new = _sign_in(archive, replacing=old)
    assert new != old
    assert _code(archive, old) == "session_revoked"
    assert sessions.validate(archive, new).user_name == "alice"


def test_sign_out_kills_the_token(archive: Archive, alice: str) -> None:
    token = _sign_in(archive)
    sessions.end_session(archive, token)
    assert _code(archive, token) == "session_revoked"
    assert _code(archive, "never-issued") == "session_revoked"


def test_idle_timeout(archive: Archive, alice: str, clock: FakeClock) -> None:
    token = _sign_in(archive)
    clock.advance(minutes=29)
    sessions.validate(archive, token)  # activity moves the idle expiry
    clock.advance(minutes=29)
    sessions.validate(archive, token)
    clock.advance(minutes=30, seconds=1)
    assert _code(archive, token) == "session_expired"
    assert _code(archive, token) == "session_revoked"  # the expired row is gone


def test_absolute_timeout(archive: Archive, alice: str, clock: FakeClock) -> None:
    token = _sign_in(archive)
    for _ in range(12 * 4 - 1):
        clock.advance(minutes=15)
        sessions.validate(archive, token)
    clock.advance(minutes=15)
    assert _code(archive, token) == "session_expired"


def test_wrong_password_and_unknown_user_look_the_same(archive: Archive, alice: str) -> None:
    throttle = _throttle(archive)
    for name, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
        with pytest.raises(Unauthenticated) as caught:
            accounts.sign_in(archive, throttle, name, password)
        assert caught.value.code == "bad_credentials"
        assert str(caught.value) == "wrong user name or password"


def test_throttle_per_account_and_per_address(
    archive: Archive, alice: str, clock: FakeClock
) -> None:
    throttle = LoginThrottle(3, archive.config.server.login_window)
    for n in range(3):
        with pytest.raises(Unauthenticated):
            accounts.sign_in(archive, throttle, "alice", "wrong password", ip=f"10.0.0.{n}")
    # the account waits a short backoff (never the whole window), even from a fresh address
    with pytest.raises(RateLimited) as caught:
        accounts.sign_in(archive, throttle, "alice", PASSWORD, ip="10.9.9.9")
    assert caught.value.retry_after == 1
    # one address guessing many names is stopped too
    for n in range(3):
        with pytest.raises(Unauthenticated):
            accounts.sign_in(archive, throttle, f"guess{n}", "x" * 8, ip="10.1.1.1")
    with pytest.raises(RateLimited):
        accounts.sign_in(archive, throttle, "someone", "x" * 8, ip="10.1.1.1")
    clock.advance(minutes=15)
    token, _ = accounts.sign_in(archive, throttle, "alice", PASSWORD, ip="10.1.1.1")
    assert sessions.validate(archive, token).user_name == "alice"


def test_guesses_slow_an_account_down_but_never_lock_its_owner_out(
    archive: Archive, alice: str, clock: FakeClock
) -> None:
    """Ten wrong passwords from rotating addresses used to lock the owner out for the
    whole window; now the owner waits at most ``login_max_backoff``."""
    throttle = LoginThrottle.from_config(archive.config.server)
    for n in range(10):
        clock.advance(seconds=throttle.account_delay(n).total_seconds())
        with pytest.raises(Unauthenticated):
            accounts.sign_in(archive, throttle, "alice", "wrong password", ip=f"10.0.0.{n}")
    with pytest.raises(RateLimited) as caught:
        accounts.sign_in(archive, throttle, "alice", PASSWORD, ip="192.0.2.7")
    assert 0 < caught.value.retry_after <= 60
    clock.advance(seconds=60)
    token, _ = accounts.sign_in(archive, throttle, "alice", PASSWORD, ip="192.0.2.7")
    assert sessions.validate(archive, token).user_name == "alice"


@pytest.mark.parametrize(
    ("failures", "seconds"), [(0, 0), (2, 0), (3, 1), (4, 2), (6, 8), (9, 60), (1000, 60)]
)
def test_account_backoff_doubles_up_to_the_cap(failures: int, seconds: int) -> None:
    throttle = LoginThrottle(10, timedelta(minutes=15))
    assert throttle.account_delay(failures) == timedelta(seconds=seconds)


def test_list_and_revoke_one_or_others(archive: Archive, alice: str) -> None:
    first, second, third = (_sign_in(archive) for _ in range(3))
    current = sessions.hash_token(second)
    views = sessions.list_sessions(
        archive, sessions.validate(archive, first).user_id, current_token_hash=current
    )
    assert len(views) == 3 and [v.current for v in views].count(True) == 1
    assert all(re.fullmatch(r"[0-9a-f]{16}", v.id) for v in views)
    assert not {v.id for v in views} & {sessions.hash_token(t)[:16] for t in (first, second, third)}
    user_id = sessions.validate(archive, first).user_id
    target = next(v.id for v in views if v.id == sessions.public_id(sessions.hash_token(first)))
    sessions.revoke_session(archive, user_id, target)
    assert _code(archive, first) == "session_revoked"
    with pytest.raises(NotFound):
        sessions.revoke_session(archive, user_id, target)
    assert sessions.end_user_sessions(archive, [user_id], keep_token_hash=current) == 1
    assert _code(archive, third) == "session_revoked"
    assert sessions.validate(archive, second).user_name == "alice"


def test_touch_is_rate_limited(archive: Archive, alice: str, clock: FakeClock) -> None:
    token = _sign_in(archive)
    clock.advance(seconds=30)
    sessions.validate(archive, token)
    with archive.sessions_db.read() as session:
        row = session.scalars(select(LoginSession)).one()
    assert row.last_seen == row.created_at  # within a minute: no write
    clock.advance(seconds=31)
    sessions.validate(archive, token)
    with archive.sessions_db.read() as session:
        row = session.scalars(select(LoginSession)).one()
    assert row.last_seen == clock.now
    assert row.idle_expires_at == clock.now + archive.config.server.session_idle_timeout


def test_concurrent_guesses_cannot_outrun_the_throttle(archive: Archive, alice: str) -> None:
    """Guesses in flight together each count before their hash is checked: a burst of
    parallel requests gets no more tries than the limit."""
    throttle = LoginThrottle(3, archive.config.server.login_window)
    start = threading.Barrier(12)

    def guess(n: int) -> str:
        start.wait()
        try:
            accounts.sign_in(archive, throttle, "alice", f"wrong password {n}", ip=f"10.0.0.{n}")
        except Unauthenticated:
            return "checked"
        except RateLimited:
            return "throttled"
        return "signed in"

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(guess, range(12)))
    assert outcomes.count("checked") == 3
    assert outcomes.count("throttled") == 9


def test_a_success_does_not_count_against_the_address(archive: Archive, alice: str) -> None:
    throttle = LoginThrottle(2, archive.config.server.login_window)
    for _ in range(5):
        accounts.sign_in(archive, throttle, "alice", PASSWORD, ip="10.0.0.1")
    with pytest.raises(Unauthenticated):
        accounts.sign_in(archive, throttle, "alice", "wrong password", ip="10.0.0.1")


def test_a_remembered_answer_never_outlives_a_commit(
    archive: Archive, alice: str, clock: FakeClock
) -> None:
    """On SQLite a thread reuses a validation while neither database changed; every
    change is a commit by some other connection, so the next check sees it."""
    token = _sign_in(archive)
    principal = sessions.validate(archive, token)
    assert sessions.validate(archive, token) == principal
    if archive.db.dialect == "sqlite":
        # The remembered answer is used: this thread's reads are only data_version now.
        traced: list[str] = []
        for database in (archive.db, archive.sessions_db):
            database.quick._local.connection.set_trace_callback(traced.append)
        sessions.validate(archive, token)
        assert traced and all(sql == "PRAGMA data_version" for sql in traced)
        for database in (archive.db, archive.sessions_db):
            database.quick._local.connection.set_trace_callback(None)
    # A commit from elsewhere (another process, a raw connection): disabled at once.
    with archive.db.engine.begin() as connection:
        connection.execute(update(User).where(User.name == "alice").values(disabled_at=clock()))
    assert _code(archive, token) == "session_revoked"


def test_a_remembered_answer_ends_at_expiry_without_any_commit(
    archive: Archive, alice: str, clock: FakeClock
) -> None:
    token = _sign_in(archive)
    sessions.validate(archive, token)
    sessions.validate(archive, token)
    clock.advance(minutes=30, seconds=1)  # idle expiry: nothing was written meanwhile
    assert _code(archive, token) == "session_expired"


def test_expired_sessions_are_purged_at_sign_in_and_by_purge(
    archive: Archive, alice: str, clock: FakeClock
) -> None:
    accounts.add_user(archive, "bob", tenant="acme", role="member", password=PASSWORD)
    _sign_in(archive)
    _sign_in(archive, "bob")
    clock.advance(minutes=31)  # both idle-expired; neither presented again

    def holders() -> list[int]:
        with archive.sessions_db.read() as session:
            return sorted(session.scalars(select(LoginSession.user_id)))

    assert len(holders()) == 2
    _sign_in(archive)  # alice's expired row goes with her new sign-in; bob's stays
    assert len(holders()) == 2
    assert sessions.purge_expired(archive) == 1  # bob's
    assert len(holders()) == 1


def test_ids_of_hard_deleted_users_tenants_and_tokens_are_never_reused(
    archive: Archive, alice: str
) -> None:
    """A session row left behind by a crash between deleting a user and deleting their
    sessions must not become a session of the next user created (here an admin of
    another tenant): ids are never reused, on SQLite too."""
    from safekeeper.db.models import ApiToken, Tenant
    from safekeeper.services.access import tokens

    token = _sign_in(archive)
    accounts.add_tenant(archive, "gone")
    with archive.db.read() as session:
        old_user = session.scalars(select(User.id).where(User.name == "alice")).one()
        old_tenant = session.scalars(select(Tenant.id).where(Tenant.name == "gone")).one()
    tokens.create_token(archive, old_user, "t")
    with archive.db.read() as session:
        old_token = session.scalars(select(ApiToken.id)).one()
    # The crash: the user's row and tokens go, their session rows stay.
    with archive.db.write() as session:
        accounts.hard_delete_users(session, [old_user])
        session.delete(session.get_one(Tenant, old_tenant))
    accounts.add_tenant(archive, "gone2")
    accounts.add_user(
        archive, "mallory", tenant="other", role="admin", password=PASSWORD, create_tenant=True
    )
    with archive.db.read() as session:
        new_user = session.scalars(select(User.id).where(User.name == "mallory")).one()
        new_tenants = set(session.scalars(select(Tenant.id)))
    tokens.create_token(archive, new_user, "t")
    with archive.db.read() as session:
        new_token = session.scalars(select(ApiToken.id)).one()
    assert new_user > old_user
    assert max(new_tenants) > old_tenant
    assert new_token > old_token
    assert _code(archive, token) == "session_revoked"


def test_a_session_whose_tenant_differs_from_its_accounts_is_refused(
    archive: Archive, alice: str
) -> None:
    """Even if an id did come round again, the tenant stored at sign-in must match."""
    token = _sign_in(archive)
    keep = _sign_in(archive)
    with archive.sessions_db.write() as session:
        session.execute(
            update(LoginSession)
            .where(LoginSession.token_hash == sessions.hash_token(token))
            .values(tenant_id=LoginSession.tenant_id + 1000)
        )
    assert _code(archive, token) == "session_revoked"
    # Only that row goes: the account's own sessions stay.
    assert sessions.validate(archive, keep).user_name == "alice"


def test_a_session_in_use_never_idles_out_even_under_the_touch_interval(
    make_archive: ArchiveFactory, clock: FakeClock
) -> None:
    """With an idle timeout (30 s) under the 60 s touch interval, a session used every
    20 s used to expire after 30 s all the same."""
    archive = make_archive(SAFEKEEPER__SERVER__SESSION_IDLE_TIMEOUT="30s")
    accounts.add_user(
        archive, "alice", tenant="acme", role="member", password=PASSWORD, create_tenant=True
    )
    token = _sign_in(archive)
    for _ in range(6):
        clock.advance(seconds=20)
        assert sessions.validate(archive, token).user_name == "alice"
    clock.advance(seconds=31)
    assert _code(archive, token) == "session_expired"
