"""API tokens: bearer credentials for programs, shown once, stored as SHA-256, revocable.

A token is ``skt_`` followed by 43 URL-safe characters (256 random bits); the prefix
lets secret scanners and people recognise one. Validation re-checks the user and
tenant on every request, like sessions do.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from safekeeper.api.principal import Principal
from safekeeper.db.accounts import Account
from safekeeper.db.models import ApiToken, Tenant, User
from safekeeper.errors import Conflict, NotFound, Unauthenticated
from safekeeper.ids import check_name
from safekeeper.services.access.sessions import TOKEN_BYTES, hash_token, principal_of

if TYPE_CHECKING:
    from safekeeper.archive import Archive

PREFIX = "skt_"
#: last_used_at moves at most this often, so validation stays a read.
TOUCH_INTERVAL = timedelta(seconds=60)
#: A user's live tokens; beyond this, revoke some first.
MAX_TOKENS = 100


@dataclass(frozen=True)
class TokenView:
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


def _view(token: ApiToken) -> TokenView:
    return TokenView(token.id, token.name, token.created_at, token.last_used_at)


def create_token(archive: Archive, user_id: int, name: str) -> tuple[TokenView, str]:
    """A new token for the user: its description and the token itself (shown once)."""
    check_name("token name", name)
    token = PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    now = archive.clock()
    with archive.db.write() as session:
        live = session.scalars(
            select(ApiToken.id).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        ).all()
        if len(live) >= MAX_TOKENS:
            raise Conflict(f"{MAX_TOKENS} live tokens already; revoke one first")
        row = ApiToken(user_id=user_id, token_hash=hash_token(token), name=name, created_at=now)
        session.add(row)
        session.flush()
        return _view(row), token


def list_tokens(archive: Archive, user_id: int) -> list[TokenView]:
    with archive.db.read() as session:
        rows = session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.id)
        )
        return [_view(row) for row in rows]


def revoke_token(archive: Archive, user_id: int, token_id: int) -> None:
    with archive.db.write() as session:
        revoked = session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == token_id,
                ApiToken.user_id == user_id,
                ApiToken.revoked_at.is_(None),
            )
            .values(revoked_at=archive.clock())
        )
        if not revoked.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no token {token_id}")


_LIVE_TOKEN = (
    select(
        User.id, User.name, User.role, Tenant.id, Tenant.name, ApiToken.id, ApiToken.last_used_at
    )
    .join(User, ApiToken.user_id == User.id)
    .join(Tenant, User.tenant_id == Tenant.id)
    .where(
        ApiToken.revoked_at.is_(None),
        User.disabled_at.is_(None),
        User.deleted_at.is_(None),
        Tenant.deleted_at.is_(None),
    )
)


def validate(archive: Archive, token: str) -> Principal:
    """The principal of a bearer token; Unauthenticated if unknown, revoked, or its
    user or tenant is no longer active."""
    now = archive.clock()
    with archive.db.read() as session:
        row = session.execute(_LIVE_TOKEN.where(ApiToken.token_hash == hash_token(token))).first()
    if row is None:
        raise Unauthenticated("unknown or revoked API token", "unauthenticated")
    token_id, last_used_at = row[5], row[6]
    if last_used_at is None or now - last_used_at >= TOUCH_INTERVAL:
        with archive.db.write() as session:
            session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)
            )
    return principal_of(Account(*row[:5]), "token", None)
