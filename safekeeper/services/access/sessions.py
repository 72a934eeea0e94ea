"""Sign-in sessions: create (rotating), validate on every request, list, end.

A session token is 256 random bits (``secrets.token_urlsafe(32)``: 43 URL-safe
characters); only its SHA-256 is stored. Revoking a session deletes its row, so a
token whose row is gone answers ``session_revoked``; a row past its idle or absolute
expiry answers ``session_expired`` (and is deleted).

Every validation also re-reads the user and tenant from the catalog: a session of a
disabled or deleted user or tenant is refused and removed even if the service call
that ended it never reached the sessions database. That check, not the bulk DELETEs,
is what makes "no signed-in request from a disabled user" hold on every path.

On SQLite the sessions live in their own database, so ending sessions is a second
transaction after the catalog change commits; the catalog change comes first, so
from that commit on no request passes the re-check whatever the sessions table says.

On SQLite a thread remembers the sessions it validated together with both databases'
``PRAGMA data_version``: while neither database has seen a commit since, and no expiry
or touch is due, the same reads would give the same answer, so the answer is reused.
Any revocation, disabling or deletion is a commit, so the next request re-reads.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn, cast

from pydantic import Field
from sqlalchemy import bindparam, delete, select, update

from safekeeper.api.principal import Principal
from safekeeper.db import accounts as account_queries
from safekeeper.db.accounts import Account
from safekeeper.db.session_models import LoginSession
from safekeeper.errors import NotFound, Unauthenticated

if TYPE_CHECKING:
    from safekeeper.archive import Archive

TOKEN_BYTES = 32
#: last_seen and the idle expiry move at most this often: validation stays a read.
TOUCH_INTERVAL = timedelta(seconds=60)
_MAX_USER_AGENT = 500
_MAX_IP = 100

Role = Literal["admin", "operator", "member"]


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def public_id(token_hash: str) -> str:
    """A handle for a session in listings and revocation. Derived from the hash rather
    than the hash itself, so nothing a client sees is ever looked up as a credential."""
    return hashlib.sha256(b"session-id:" + token_hash.encode()).hexdigest()[:16]


def csrf_token(token: str) -> str:
    """The value a cookie-authenticated unsafe request must echo in ``X-CSRF-Token``:
    derived from the session token, which a cross-site page cannot read."""
    return hashlib.sha256(b"csrf:" + token.encode()).hexdigest()


def same_text(expected: str, presented: str) -> bool:
    """Constant-time comparison of any two strings: ``hmac.compare_digest`` raises
    TypeError on non-ASCII ``str`` (a 500 for a header or path a client chose)."""
    encoded = presented.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(expected.encode(), encoded)


def csrf_matches(token: str, presented: str | None) -> bool:
    return presented is not None and same_text(csrf_token(token), presented)


def principal_of(
    account: Account, via: Literal["session", "token"], token_hash: str | None
) -> Principal:
    return Principal(
        user_id=account.user_id,
        user_name=account.user_name,
        tenant_id=account.tenant_id,
        tenant_name=account.tenant_name,
        role=cast(Role, account.role),
        via=via,
        session_token_hash=token_hash,
    )


@dataclass(frozen=True)
class SessionView:
    id: Annotated[str, Field(description="Public handle (not the token, not its hash).")]
    created_at: datetime
    last_seen: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool


def create_session(
    archive: Archive,
    account: Account,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    replacing: str | None = None,
) -> str:
    """A new session for ``account``; returns its token (shown once, never stored).

    ``replacing``: the token the client held before (a pre-login cookie), deleted in
    the same transaction so it is dead from this moment (rotation on sign-in).
    """
    now = archive.clock()
    server = archive.config.server
    token = new_token()
    with archive.sessions_db.write() as session:
        # The user's expired sessions go here (an indexed delete); the rest with
        # ``purge_expired``, which ``safekeeper gc`` runs.
        session.execute(
            delete(LoginSession).where(
                LoginSession.user_id == account.user_id,
                (LoginSession.idle_expires_at <= now) | (LoginSession.absolute_expires_at <= now),
            )
        )
        if replacing is not None:
            session.execute(
                delete(LoginSession).where(LoginSession.token_hash == hash_token(replacing))
            )
        session.add(
            LoginSession(
                token_hash=hash_token(token),
                user_id=account.user_id,
                tenant_id=account.tenant_id,
                created_at=now,
                last_seen=now,
                idle_expires_at=now + server.session_idle_timeout,
                absolute_expires_at=now + server.session_absolute_timeout,
                ip=ip[:_MAX_IP] if ip else None,
                user_agent=user_agent[:_MAX_USER_AGENT] if user_agent else None,
            )
        )
    return token


_SESSION_ROW = select(
    LoginSession.user_id,
    LoginSession.tenant_id,
    LoginSession.last_seen,
    LoginSession.idle_expires_at,
    LoginSession.absolute_expires_at,
).where(LoginSession.token_hash == bindparam("token_hash"))


def validate(archive: Archive, token: str) -> Principal:
    """The principal a session token stands for, or Unauthenticated with code
    ``session_revoked`` / ``session_expired``."""
    return _validate(archive, token, read_only=False) or _fail_revoked()


def peek(archive: Archive, token: str) -> Principal | None:
    """``validate`` without writing: None when the answer needs a write (an expired or
    orphaned row to delete, last_seen to move); then call ``validate``. Lets the HTTP
    layer answer most requests on the event loop when the reads are local (SQLite)."""
    return _validate(archive, token, read_only=True)


def _fail_revoked() -> NoReturn:
    raise Unauthenticated("the session has ended; sign in again", "session_revoked")


@dataclass(frozen=True)
class _Validated:
    versions: tuple[int, int]
    principal: Principal
    #: The first moment the answer could differ without a commit: an expiry or a touch.
    valid_until: datetime


_MAX_REMEMBERED = 10_000


def _remembered(archive: Archive) -> dict[str, _Validated]:
    """Token hash → answer, for this thread and these databases (``data_version`` is
    per connection: the memory lives and dies with the thread's quick-read connection)."""
    remembered: dict[str, _Validated] = archive.sessions_db.quick.thread_memo()
    if len(remembered) > _MAX_REMEMBERED:
        remembered.clear()
    return remembered


def _versions(archive: Archive) -> tuple[int, int] | None:
    sessions_version = archive.sessions_db.quick.data_version()
    catalog_version = archive.db.quick.data_version()
    if sessions_version is None or catalog_version is None:
        return None
    return sessions_version, catalog_version


def _validate(archive: Archive, token: str, *, read_only: bool) -> Principal | None:
    now = archive.clock()
    token_hash = hash_token(token)
    # Read before the rows: a commit in between makes the next request re-read.
    versions = _versions(archive)
    if versions is not None:
        known = _remembered(archive).get(token_hash)
        if known is not None and known.versions == versions and now < known.valid_until:
            return known.principal
    checked = _check(archive, token_hash, now, read_only=read_only)
    if checked is None:
        return None
    principal, valid_until = checked
    if versions is not None and now < valid_until:
        _remembered(archive)[token_hash] = _Validated(versions, principal, valid_until)
    return principal


def _check(
    archive: Archive, token_hash: str, now: datetime, *, read_only: bool
) -> tuple[Principal, datetime] | None:
    """The principal, and until when the answer holds without a commit; None when
    ``read_only`` and the answer needs a write."""
    # Quick reads (db/quick_reads.py), not ORM sessions, for the two reads every
    # request makes: a tenth of the cost (the 0.3 ms budget, and package serving).
    row = archive.sessions_db.quick.first(_SESSION_ROW, {"token_hash": token_hash})
    if row is None:
        _fail_revoked()
    user_id, tenant_id, last_seen, idle_expires_at, absolute_expires_at = row
    if now >= idle_expires_at or now >= absolute_expires_at:
        if read_only:
            return None
        _delete(archive, [token_hash])
        raise Unauthenticated("the session has expired; sign in again", "session_expired")
    account = account_queries.active_account(archive.db.quick, user_id)
    # The tenant stored at sign-in must still be the account's: a row that outlived its
    # user (a crash between deleting the user and their sessions) never passes as
    # someone else's, even where an id could be reused.
    if account is None or account.tenant_id != tenant_id:
        if read_only:
            return None
        if account is None:
            end_user_sessions(archive, [user_id])
        else:  # this row only: the account's own sessions are not at fault
            _delete(archive, [token_hash])
        _fail_revoked()
    principal = principal_of(account, "session", token_hash)
    # A touch at least twice per idle timeout, so a session in use never idles out
    # (with an idle timeout under TOUCH_INTERVAL it otherwise would).
    touch_every = min(TOUCH_INTERVAL, archive.config.server.session_idle_timeout / 2)
    if now - last_seen >= touch_every:
        if read_only:
            return None
        _touch(archive, token_hash, now)
        return principal, now  # the touch is a commit: nothing to remember
    return principal, min(idle_expires_at, absolute_expires_at, last_seen + touch_every)


def _touch(archive: Archive, token_hash: str, now: datetime) -> None:
    idle = archive.config.server.session_idle_timeout
    with archive.sessions_db.write() as session:
        session.execute(
            update(LoginSession)
            .where(LoginSession.token_hash == token_hash)
            .values(last_seen=now, idle_expires_at=now + idle)
        )


def _delete(archive: Archive, token_hashes: Sequence[str]) -> int:
    with archive.sessions_db.write() as session:
        result = session.execute(
            delete(LoginSession).where(LoginSession.token_hash.in_(token_hashes))
        )
    return int(result.rowcount)  # type: ignore[attr-defined]


def end_session(archive: Archive, token: str) -> None:
    """Sign out: the session's row goes, so the token is dead everywhere at once."""
    _delete(archive, [hash_token(token)])


def end_user_sessions(
    archive: Archive, user_ids: Sequence[int], *, keep_token_hash: str | None = None
) -> int:
    """End every session of the users (but ``keep_token_hash``); returns how many."""
    if not user_ids:
        return 0
    statement = delete(LoginSession).where(LoginSession.user_id.in_(user_ids))
    if keep_token_hash is not None:
        statement = statement.where(LoginSession.token_hash != keep_token_hash)
    with archive.sessions_db.write() as session:
        result = session.execute(statement)
    return int(result.rowcount)  # type: ignore[attr-defined]


def end_tenant_sessions(archive: Archive, tenant_id: int) -> int:
    """Every session of a tenant, with one indexed DELETE."""
    with archive.sessions_db.write() as session:
        result = session.execute(delete(LoginSession).where(LoginSession.tenant_id == tenant_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


def list_sessions(
    archive: Archive, user_id: int, *, current_token_hash: str | None = None
) -> list[SessionView]:
    now = archive.clock()
    with archive.sessions_db.read() as session:
        rows = session.scalars(
            select(LoginSession)
            .where(LoginSession.user_id == user_id)
            .order_by(LoginSession.created_at, LoginSession.token_hash)
        ).all()
    return [
        SessionView(
            id=public_id(row.token_hash),
            created_at=row.created_at,
            last_seen=row.last_seen,
            idle_expires_at=row.idle_expires_at,
            absolute_expires_at=row.absolute_expires_at,
            ip=row.ip,
            user_agent=row.user_agent,
            current=row.token_hash == current_token_hash,
        )
        for row in rows
        if now < row.idle_expires_at and now < row.absolute_expires_at
    ]


def revoke_session(archive: Archive, user_id: int, session_id: str) -> None:
    """End one of the user's sessions by its public id; NotFound if it has none such."""
    with archive.sessions_db.write() as session:
        hashes = session.scalars(
            select(LoginSession.token_hash).where(LoginSession.user_id == user_id)
        ).all()
        matching = [h for h in hashes if same_text(public_id(h), session_id)]
        if not matching:
            raise NotFound(f"no session {session_id!r}")
        session.execute(delete(LoginSession).where(LoginSession.token_hash.in_(matching)))


def purge_expired(archive: Archive) -> int:
    """Delete rows past either expiry (validation deletes the ones it meets)."""
    now = archive.clock()
    with archive.sessions_db.write() as session:
        result = session.execute(
            delete(LoginSession).where(
                (LoginSession.idle_expires_at <= now) | (LoginSession.absolute_expires_at <= now)
            )
        )
    return int(result.rowcount)  # type: ignore[attr-defined]
