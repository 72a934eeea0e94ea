"""Tenant isolation: which namespaces a signed-in principal may see and touch.

Every route that names a namespace goes through ``visible_namespace`` (or filters a
listing with ``visible_namespace_filter``). A namespace of another tenant answers
exactly like one that does not exist — NotFound to a read, NamespaceReserved to a
write that would create it — so a user cannot learn what other tenants have.
Namespaces without a tenant (made from the CLI) are reached only by admins.

Names are global, so who may create one is the rule against squatting: a tenant's
user (member or operator) creates only the tenant's own names — the tenant's name, or
it and ``TENANT_SEPARATOR`` and anything (``acme``, ``acme.course-1``), which no other
tenant can want since tenant names cannot contain the separator. Any other new name
needs an admin, who gives it to a tenant (``tenants assign --create``); existing
namespaces of one's tenant stay writable whatever their name.

These functions take a session and never commit: they run inside the caller's
transaction, so a check and the write it guards see the same state.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import Session

from safekeeper.api.principal import Principal
from safekeeper.db.engine import dialect_insert
from safekeeper.db.models import Namespace
from safekeeper.errors import NamespaceReserved, NotFound
from safekeeper.ids import TENANT_SEPARATOR, check_name


def _not_found(name: str) -> NotFound:
    return NotFound(f"no namespace {name!r}")


def can_see(principal: Principal, namespace: Namespace) -> bool:
    return principal.is_admin or namespace.tenant_id == principal.tenant_id


def visible_namespace(session: Session, principal: Principal, name: str) -> Namespace:
    """The namespace called ``name`` if ``principal`` may see it; NotFound otherwise."""
    namespace = session.scalar(select(Namespace).where(Namespace.name == name))
    if namespace is None or not can_see(principal, namespace):
        raise _not_found(name)
    return namespace


def visible_namespace_filter(principal: Principal) -> ColumnElement[bool]:
    """A WHERE clause on ``Namespace`` keeping only what ``principal`` may see."""
    if principal.is_admin:
        return true()
    return Namespace.tenant_id == principal.tenant_id


def visible_namespace_ids(session: Session, principal: Principal) -> list[int]:
    return list(
        session.scalars(
            select(Namespace.id).where(visible_namespace_filter(principal)).order_by(Namespace.id)
        )
    )


def tenant_may_create(tenant: str, namespace: str) -> bool:
    """Whether a user of ``tenant`` who is not an admin may create namespace ``namespace``
    (the squatting rule; see the module docstring). A tenant whose name contains the
    separator (made before the rule) has no names of its own: they would overlap."""
    if TENANT_SEPARATOR in tenant:
        return False
    prefix = tenant + TENANT_SEPARATOR
    return namespace == tenant or (namespace.startswith(prefix) and len(namespace) > len(prefix))


def _reserved(tenant: str, name: str) -> NamespaceReserved:
    # The same answer whether or not ``name`` exists (in another tenant): no leak.
    if TENANT_SEPARATOR in tenant:
        return NamespaceReserved(
            f"{name!r} is not a namespace of your tenant: ask an admin to create it for "
            f"tenant {tenant!r}",
            None,
        )
    prefix = tenant + TENANT_SEPARATOR
    return NamespaceReserved(
        f"{name!r} is not a namespace of your tenant: you may create namespaces named "
        f"{tenant} or {prefix}<name> (like {prefix}{name}); an admin can create any other "
        f"name for tenant {tenant!r}",
        prefix,
    )


def claim_namespace(session: Session, principal: Principal, name: str, now: datetime) -> Namespace:
    """The namespace ``name`` for writing: created for the principal's tenant (owned by
    the principal, so erasing them removes its references) when new, returned when
    visible, NotFound when it belongs to someone the principal may not see.

    The insert is conflict-tolerant, so two users claiming the same new name at once
    end with one owner; the loser sees NotFound unless both are in the same tenant.
    A name the principal may not create (``tenant_may_create``) and cannot see is
    NamespaceReserved, whether or not it exists.
    """
    return claim_namespace_created(session, principal, name, now)[0]


def claim_namespace_created(
    session: Session, principal: Principal, name: str, now: datetime
) -> tuple[Namespace, bool]:
    """``claim_namespace``, and whether this call created it (its insert won)."""
    check_name("namespace", name)
    if not principal.is_admin and not tenant_may_create(principal.tenant_name, name):
        existing = session.scalar(select(Namespace).where(Namespace.name == name))
        if existing is None or not can_see(principal, existing):
            raise _reserved(principal.tenant_name, name)
        return existing, False
    result = session.execute(
        dialect_insert(session, Namespace)
        .values(
            name=name,
            created_at=now,
            tenant_id=principal.tenant_id,
            owner_user_id=principal.user_id,
        )
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(Namespace.id)
    )
    # A returned row, not ``rowcount``: through the ORM, PostgreSQL's driver does not
    # give a usable count for an INSERT … ON CONFLICT DO NOTHING (a new row read as none).
    created = result.scalar_one_or_none() is not None
    return visible_namespace(session, principal, name), created
