"""Users and tenants over HTTP: admins manage everything; operators may list their
tenant's users. Another tenant's user answers 404, like one that does not exist."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from safekeeper.api.auth import (
    Name,
    NewPassword,
    Password,
    RoleName,
    reauthenticate,
    require_admin,
    require_operator,
    security_event,
)
from safekeeper.api.principal import Principal
from safekeeper.api.state import archive_of
from safekeeper.archive import Archive
from safekeeper.errors import BadInput, NotFound
from safekeeper.services.access import accounts, erasure, sessions
from safekeeper.services.access.accounts import TenantView, UserView

NameParam = Annotated[str, PathParam(max_length=200)]


class UserItem(BaseModel):
    name: str
    tenant: str
    role: RoleName
    created_at: datetime
    disabled: bool
    deleted: bool


class NewUser(BaseModel):
    name: Name
    tenant: Name
    role: RoleName = "member"
    password: NewPassword


class UserChange(BaseModel):
    role: RoleName | None = None
    disabled: bool | None = None
    password: NewPassword | None = None
    revoke_tokens: bool = Field(True, description="With password: also revoke their API tokens")
    current_password: Password | None = Field(
        None, description="Your own password: needed to change a role or a password"
    )


class BulkDelete(BaseModel):
    names: Annotated[list[Name], Field(min_length=1, max_length=10_000)]
    hard: bool = False


class Ended(BaseModel):
    sessions_ended: int


class Erased(Ended):
    references: list[str]
    blobs: list[str]
    namespaces: list[str]


class NewTenant(BaseModel):
    name: Name


def _item(view: UserView) -> UserItem:
    return UserItem(**vars(view))


_ADMIN_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Not signed in"},
    403: {"description": "Not an admin, or CSRF header missing"},
    404: {"description": "No such user or tenant"},
}

router = APIRouter(prefix="/api", tags=["admin"], responses=_ADMIN_ERRORS)
Admin = Annotated[Principal, Depends(require_admin)]


@router.get("/users")
def list_users(
    request: Request, principal: Annotated[Principal, Depends(require_operator)]
) -> list[UserItem]:
    """Users: all of them for admins, your tenant's for operators."""
    tenant = None if principal.is_admin else principal.tenant_name
    return [_item(view) for view in accounts.list_users(archive_of(request), tenant=tenant)]


@router.post("/users", status_code=201)
def add_user(body: NewUser, request: Request, admin: Admin) -> UserItem:
    view = accounts.add_user(
        archive_of(request), body.name, tenant=body.tenant, role=body.role, password=body.password
    )
    security_event(
        request, admin, "user-created", user=view.name, tenant=view.tenant, detail=view.role
    )
    return _item(view)


@router.patch("/users/{name}")
def change_user(name: NameParam, body: UserChange, request: Request, admin: Admin) -> UserItem:
    """Change role, disabled or password; each ends the user's sessions. A role or a
    password needs ``current_password`` (the admin's own); a new password revokes the
    user's API tokens too unless ``revoke_tokens`` is false."""
    archive = archive_of(request)
    before = accounts.get_user(archive, name)
    if body.role is None and body.disabled is None and body.password is None:
        raise BadInput("nothing to change: give role, disabled or password")
    if body.role is not None or body.password is not None:
        if body.current_password is None:
            raise BadInput("give current_password (your own) to change a role or a password")
        reauthenticate(request, admin, body.current_password)

    def event(action: str, detail: str | None = None) -> None:
        security_event(request, admin, action, user=name, tenant=before.tenant, detail=detail)

    if body.password is not None:
        accounts.set_password(archive, name, body.password, revoke_tokens=body.revoke_tokens)
        event("password-set", "API tokens revoked" if body.revoke_tokens else "API tokens kept")
    if body.role is not None:
        accounts.set_role(archive, name, body.role)
        event("role-changed", f"{before.role} -> {body.role}")
    if body.disabled is not None:
        accounts.set_disabled(archive, name, body.disabled)
        event("user-disabled" if body.disabled else "user-enabled")
    return _item(accounts.get_user(archive, name))


def _tenant_of(archive: Archive, name: str) -> str | None:
    """The user's tenant for the audit, if the user is still listed (a soft-deleted
    user may still be erased)."""
    try:
        return accounts.get_user(archive, name).tenant
    except NotFound:
        return None


@router.delete("/users/{name}")
def delete_user(
    name: NameParam,
    request: Request,
    admin: Admin,
    erase: Annotated[bool, Query(description="Also remove their namespaces' references")] = False,
    hard: Annotated[bool, Query(description="Remove the row, not only mark it deleted")] = False,
) -> Erased:
    archive = archive_of(request)
    tenant = _tenant_of(archive, name)
    if erase:
        report = erasure.erase_user(archive, name, actor=f"user:{admin.user_name}")
        security_event(request, admin, "user-erased", user=name, tenant=tenant)
        return Erased.model_validate(report, from_attributes=True)
    ended = accounts.delete_users(archive, [name], hard=hard)
    security_event(
        request, admin, "user-deleted", user=name, tenant=tenant, detail="hard" if hard else "soft"
    )
    return Erased(sessions_ended=ended, references=[], blobs=[], namespaces=[])


@router.post("/users/bulk-delete")
def bulk_delete(body: BulkDelete, request: Request, admin: Admin) -> Ended:
    """Delete many users at once: all named or none."""
    ended = accounts.delete_users(archive_of(request), body.names, hard=body.hard)
    for name in sorted(set(body.names)):
        security_event(
            request, admin, "user-deleted", user=name, detail="hard" if body.hard else "soft"
        )
    return Ended(sessions_ended=ended)


@router.delete("/users/{name}/sessions")
def end_user_sessions(name: NameParam, request: Request, _admin: Admin) -> Ended:
    """Sign a user out everywhere."""
    archive = archive_of(request)
    user_id = accounts.user_id_of(archive, name)
    return Ended(sessions_ended=sessions.end_user_sessions(archive, [user_id]))


@router.get("/tenants")
def list_tenants(request: Request, _admin: Admin) -> list[TenantView]:
    return accounts.list_tenants(archive_of(request))


@router.post("/tenants", status_code=201)
def add_tenant(body: NewTenant, request: Request, admin: Admin) -> TenantView:
    view = accounts.add_tenant(archive_of(request), body.name)
    security_event(request, admin, "tenant-created", tenant=view.name)
    return view


@router.delete("/tenants/{name}")
def delete_tenant(name: NameParam, request: Request, admin: Admin) -> Ended:
    """Delete a tenant: its users can no longer sign in; every session of theirs ends."""
    ended = accounts.delete_tenant(archive_of(request), name)
    security_event(request, admin, "tenant-deleted", tenant=name)
    return Ended(sessions_ended=ended)
