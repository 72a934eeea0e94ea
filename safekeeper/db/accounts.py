"""Queries on tenants, users and API tokens. They take a session and never commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from safekeeper.db import attempts
from safekeeper.db.models import ApiToken, Namespace, Tenant, User
from safekeeper.db.quick_reads import QuickReader
from safekeeper.errors import NotFound


@dataclass(frozen=True)
class Account:
    """A user as a signed-in request sees them: who, which tenant, which role."""

    user_id: int
    user_name: str
    role: str
    tenant_id: int
    tenant_name: str


def tenant_named(session: Session, name: str, *, include_deleted: bool = False) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None or (tenant.deleted_at is not None and not include_deleted):
        raise NotFound(f"no tenant {name!r}")
    return tenant


def user_named(session: Session, name: str, *, include_deleted: bool = False) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None or (user.deleted_at is not None and not include_deleted):
        raise NotFound(f"no user {name!r}")
    return user


def users_named(session: Session, names: Sequence[str]) -> list[User]:
    """The (not deleted) users called ``names``; NotFound naming every missing one."""
    found = list(
        session.scalars(select(User).where(User.name.in_(names), User.deleted_at.is_(None)))
    )
    missing = sorted(set(names) - {user.name for user in found})
    if missing:
        raise NotFound(f"no user {', '.join(repr(name) for name in missing)}")
    return found


def list_tenants(session: Session, *, include_deleted: bool = False) -> list[Tenant]:
    query = select(Tenant).order_by(Tenant.name)
    if not include_deleted:
        query = query.where(Tenant.deleted_at.is_(None))
    return list(session.scalars(query))


def list_users(
    session: Session, *, tenant_id: int | None = None, include_deleted: bool = False
) -> list[tuple[User, str]]:
    query = select(User, Tenant.name).join(Tenant, User.tenant_id == Tenant.id).order_by(User.name)
    if tenant_id is not None:
        query = query.where(User.tenant_id == tenant_id)
    if not include_deleted:
        # A deleted tenant's users are gone with it, whatever their own rows say.
        query = query.where(User.deleted_at.is_(None), Tenant.deleted_at.is_(None))
    return [(user, tenant) for user, tenant in session.execute(query)]


# One statement, built once: SQLAlchemy caches its compiled form, which keeps the
# per-request check cheap (see services.access.sessions).
_ACTIVE_ACCOUNT = (
    select(User.id, User.name, User.role, Tenant.id, Tenant.name)
    .join(Tenant, User.tenant_id == Tenant.id)
    .where(
        User.disabled_at.is_(None),
        User.deleted_at.is_(None),
        Tenant.deleted_at.is_(None),
    )
)


_ACTIVE_ACCOUNT_BY_ID = _ACTIVE_ACCOUNT.where(User.id == bindparam("user_id"))


def active_account(session: Session | QuickReader, user_id: int) -> Account | None:
    """The user with their tenant, or None unless both are active. Takes a quick
    reader too: the per-request check skips SQLAlchemy's per-statement overhead."""
    params = {"user_id": user_id}
    if isinstance(session, QuickReader):
        row = session.first(_ACTIVE_ACCOUNT_BY_ID, params)
    else:
        row = session.execute(_ACTIVE_ACCOUNT_BY_ID, params).first()
    return Account(*row) if row is not None else None


def active_account_named(session: Session, name: str) -> tuple[Account, str] | None:
    """An active user by name with their password hash, for signing in."""
    row = session.execute(
        _ACTIVE_ACCOUNT.add_columns(User.password_hash).where(User.name == name)
    ).first()
    if row is None:
        return None
    return Account(*row[:5]), row[5]


def revoke_tokens_of(session: Session, user_ids: Sequence[int], now: datetime) -> None:
    session.execute(
        update(ApiToken)
        .where(ApiToken.user_id.in_(user_ids), ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def revoke_tokens_of_tenant(session: Session, tenant_id: int, now: datetime) -> None:
    users = select(User.id).where(User.tenant_id == tenant_id).scalar_subquery()
    session.execute(
        update(ApiToken)
        .where(ApiToken.user_id.in_(users), ApiToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def detach_user_rows(session: Session, user_ids: Sequence[int]) -> None:
    """Remove what refers to the users so their rows can go: tokens, SCORM attempts,
    and ownership of namespaces (the namespaces stay with their tenant)."""
    attempts.delete_for_users(session, user_ids)
    session.execute(
        update(Namespace)
        .where(Namespace.owner_user_id.in_(user_ids))
        .values(owner_user_id=None)
        .execution_options(synchronize_session=False)
    )
    for token in session.scalars(select(ApiToken).where(ApiToken.user_id.in_(user_ids))):
        session.delete(token)
    session.flush()
