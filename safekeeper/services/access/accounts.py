"""Tenants, users, roles and passwords — and signing in.

Every change that takes access away (disable, soft or hard delete, one user or many,
deleting a tenant, a new password, a new role) ends the affected sessions in the same
call: first the catalog change commits (from then on the per-request re-check in
``services.access.sessions.validate`` refuses the user), then the sessions' rows go. API
tokens of disabled or deleted users are revoked in the catalog transaction itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from safekeeper.api.principal import Principal
from safekeeper.db import accounts as queries
from safekeeper.db import attempts
from safekeeper.db.models import USER_ROLES, Namespace, Tenant, User
from safekeeper.db.refs import ensure_namespace
from safekeeper.errors import AlreadyExists, BadInput, NotFound, Unauthenticated
from safekeeper.ids import check_name, check_tenant_name
from safekeeper.services.access import sessions
from safekeeper.services.access.login_throttle import LoginThrottle
from safekeeper.services.access.security_events import record_event

if TYPE_CHECKING:
    from safekeeper.archive import Archive

# argon2-cffi's defaults are argon2id with RFC 9106's low-memory profile.
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a wrong name costs the same
    time as a wrong password and answers do not reveal which names exist. Made on first
    use: hashing costs ~0.2 s, which every CLI command would otherwise pay at import."""
    return _hasher.hash("safekeeper: no such user")


MIN_PASSWORD = 8
MAX_PASSWORD = 1024


@dataclass(frozen=True)
class TenantView:
    name: str
    created_at: datetime
    users: int


@dataclass(frozen=True)
class UserView:
    name: str
    tenant: str
    role: str
    created_at: datetime
    disabled: bool
    deleted: bool


def _user_view(user: User, tenant: str) -> UserView:
    return UserView(
        name=user.name,
        tenant=tenant,
        role=user.role,
        created_at=user.created_at,
        disabled=user.disabled_at is not None,
        deleted=user.deleted_at is not None,
    )


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise BadInput(f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def check_role(role: str) -> str:
    if role not in USER_ROLES:
        raise BadInput(f"bad role {role!r}: use one of {', '.join(USER_ROLES)}")
    return role


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# -- tenants ------------------------------------------------------------------------


def add_tenant(archive: Archive, name: str) -> TenantView:
    check_tenant_name(name)
    now = archive.clock()
    with archive.db.write() as session:
        if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
            raise AlreadyExists(f"tenant {name!r} exists")
        session.add(Tenant(name=name, created_at=now))
    return TenantView(name, now, 0)


def list_tenants(archive: Archive) -> list[TenantView]:
    with archive.db.read() as session:
        counting = (
            select(User.tenant_id, func.count())
            .where(User.deleted_at.is_(None))
            .group_by(User.tenant_id)
        )
        counts = {tenant_id: users for tenant_id, users in session.execute(counting)}
        return [
            TenantView(t.name, t.created_at, counts.get(t.id, 0))
            for t in queries.list_tenants(session)
        ]


def assign_namespaces(
    archive: Archive,
    tenant: str,
    namespaces: Sequence[str],
    owner: str | None = None,
    *,
    create: bool = False,
) -> None:
    """Give namespaces to ``tenant``, so its users can reach them; with ``owner``,
    erasing that user removes their references. A namespace that does not exist is
    NotFound (a typo must not quietly make a new one) unless ``create``."""
    now = archive.clock()
    with archive.db.write() as session:
        tenant_row = queries.tenant_named(session, tenant)
        owner_row = queries.user_named(session, owner) if owner is not None else None
        if owner_row is not None and owner_row.tenant_id != tenant_row.id:
            raise BadInput(f"user {owner!r} is not in tenant {tenant!r}")
        for name in namespaces:
            check_name("namespace", name)
            exists = session.scalar(select(Namespace.id).where(Namespace.name == name))
            if exists is None and not create:
                raise NotFound(
                    f"no namespace {name!r}: check the spelling, or add --create to make it"
                )
            namespace = ensure_namespace(session, name, now)
            namespace.tenant_id = tenant_row.id
            namespace.owner_user_id = owner_row.id if owner_row is not None else None


def delete_tenant(archive: Archive, name: str) -> int:
    """Soft-delete a tenant: its users can no longer sign in, its sessions end and its
    API tokens are revoked. Returns how many sessions ended."""
    now = archive.clock()
    with archive.db.write() as session:
        tenant = queries.tenant_named(session, name)
        tenant.deleted_at = now
        queries.revoke_tokens_of_tenant(session, tenant.id, now)
        tenant_id = tenant.id
    return sessions.end_tenant_sessions(archive, tenant_id)


# -- users --------------------------------------------------------------------------


def add_user(
    archive: Archive,
    name: str,
    *,
    tenant: str,
    role: str,
    password: str,
    create_tenant: bool = False,
) -> UserView:
    check_name("user name", name)
    check_role(role)
    password_hash = hash_password(password)
    now = archive.clock()
    with archive.db.write() as session:
        if session.scalar(select(User.id).where(User.name == name)) is not None:
            raise AlreadyExists(f"user {name!r} exists")
        if create_tenant and session.scalar(select(Tenant.id).where(Tenant.name == tenant)) is None:
            session.add(Tenant(name=check_tenant_name(tenant), created_at=now))
            session.flush()
        owner = queries.tenant_named(session, tenant)
        user = User(
            tenant_id=owner.id, name=name, role=role, password_hash=password_hash, created_at=now
        )
        session.add(user)
        session.flush()
        return _user_view(user, owner.name)


def list_users(
    archive: Archive, *, tenant: str | None = None, include_deleted: bool = False
) -> list[UserView]:
    with archive.db.read() as session:
        tenant_id = queries.tenant_named(session, tenant).id if tenant is not None else None
        rows = queries.list_users(session, tenant_id=tenant_id, include_deleted=include_deleted)
        return [_user_view(user, tenant_name) for user, tenant_name in rows]


def get_user(archive: Archive, name: str) -> UserView:
    with archive.db.read() as session:
        user = queries.user_named(session, name)
        return _user_view(user, session.get_one(Tenant, user.tenant_id).name)


def user_id_of(archive: Archive, name: str) -> int:
    with archive.db.read() as session:
        return queries.user_named(session, name).id


def set_password(
    archive: Archive,
    name: str,
    password: str,
    *,
    current_token: str | None = None,
    revoke_tokens: bool = True,
) -> str | None:
    """A new password ends every session of the user and (unless ``revoke_tokens`` is
    False) revokes their API tokens: whoever knew the old password may have made one.
    With ``current_token`` (the user changing their own) that session is rotated
    instead: the new token is returned and the old one is dead."""
    password_hash = hash_password(password)
    now = archive.clock()
    with archive.db.write() as session:
        user = queries.user_named(session, name)
        user.password_hash = password_hash
        user_id = user.id
        if revoke_tokens:
            queries.revoke_tokens_of(session, [user_id], now)
        account = queries.active_account(session, user_id)
    sessions.end_user_sessions(archive, [user_id])
    if current_token is None or account is None:
        return None
    return sessions.create_session(archive, account)


def set_role(archive: Archive, name: str, role: str) -> int:
    """Change a user's role; their sessions end (they sign in again under the new role)."""
    check_role(role)
    with archive.db.write() as session:
        user = queries.user_named(session, name)
        user.role = role
        user_id = user.id
    return sessions.end_user_sessions(archive, [user_id])


def set_disabled(archive: Archive, name: str, disabled: bool) -> int:
    """Disable (sessions end, tokens revoked) or re-enable a user."""
    now = archive.clock()
    with archive.db.write() as session:
        user = queries.user_named(session, name)
        user.disabled_at = now if disabled else None
        if disabled:
            queries.revoke_tokens_of(session, [user.id], now)
        user_id = user.id
    return sessions.end_user_sessions(archive, [user_id]) if disabled else 0


def delete_users(archive: Archive, names: Sequence[str], *, hard: bool = False) -> int:
    """Delete users — all named or none (NotFound names the missing). Soft keeps the
    row (the name stays taken); hard removes it and its tokens, and leaves its
    namespaces to the tenant. Returns how many sessions ended."""
    if not names:
        raise BadInput("name at least one user")
    now = archive.clock()
    with archive.db.write() as session:
        user_ids = [user.id for user in queries.users_named(session, list(set(names)))]
        if hard:
            hard_delete_users(session, user_ids)
        else:
            session.execute(
                update(User)
                .where(User.id.in_(user_ids))
                .values(deleted_at=now)
                .execution_options(synchronize_session=False)
            )
            queries.revoke_tokens_of(session, user_ids, now)
            attempts.delete_for_users(session, user_ids)
    return sessions.end_user_sessions(archive, user_ids)


def hard_delete_users(session: Session, user_ids: Sequence[int]) -> None:
    queries.detach_user_rows(session, user_ids)
    for user in session.scalars(select(User).where(User.id.in_(user_ids))):
        session.delete(user)
    session.flush()


# -- signing in ---------------------------------------------------------------------


def authenticate(archive: Archive, name: str, password: str) -> queries.Account:
    """The active account with this name and password; Unauthenticated (``bad_credentials``)
    otherwise, in about the same time whether or not the name exists."""
    with archive.db.read() as session:
        found = queries.active_account_named(session, name)
    if found is None:
        _password_matches(_dummy_hash(), password)
        raise Unauthenticated("wrong user name or password", "bad_credentials")
    account, password_hash = found
    if not _password_matches(password_hash, password):
        raise Unauthenticated("wrong user name or password", "bad_credentials")
    if _hasher.check_needs_rehash(password_hash):
        with archive.db.write() as session:
            session.execute(
                update(User)
                .where(User.id == account.user_id)
                .values(password_hash=_hasher.hash(password))
            )
    return account


def authenticate_throttled(
    archive: Archive, throttle: LoginThrottle, name: str, password: str, *, ip: str | None
) -> queries.Account:
    """``authenticate`` counted by the sign-in throttle per account and per address
    (signing in, and re-checking the current password before changing it)."""
    now = archive.clock()
    keys = [f"user:{name}", f"ip:{ip or '?'}"]
    throttle.begin(keys, now)
    try:
        account = authenticate(archive, name, password)
    except Unauthenticated:
        # Audited, at most as often as the throttle lets guesses through; the name
        # tried is recorded (it may not exist), never the password.
        limits = throttle.limits_reached(keys, now)
        detail = "; ".join(["wrong user name or password", *limits])
        record_event(
            archive, "signin-failed", actor=name[:200], user=name[:200], ip=ip, detail=detail
        )
        raise
    throttle.succeed(keys, now)
    return account


def sign_in(
    archive: Archive,
    throttle: LoginThrottle,
    name: str,
    password: str,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    replacing: str | None = None,
) -> tuple[str, Principal]:
    """Check the password under the throttle and open a session (rotating ``replacing``).
    Returns the new token and who it signs in."""
    account = authenticate_throttled(archive, throttle, name, password, ip=ip)
    token = sessions.create_session(
        archive, account, ip=ip, user_agent=user_agent, replacing=replacing
    )
    return token, sessions.principal_of(account, "session", sessions.hash_token(token))
