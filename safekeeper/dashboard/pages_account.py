"""Signing in and out, my sessions, and the admin's users and tenants."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse

from safekeeper.api.auth import COOKIE, from_this_site, security_event
from safekeeper.api.principal import Principal
from safekeeper.api.state import archive_of
from safekeeper.dashboard.auth import admin, checked_form, session_token, signed_in
from safekeeper.dashboard.web import (
    SIGNIN_MESSAGES,
    PageRoute,
    render,
    see_other,
)
from safekeeper.errors import RateLimited, SafekeeperError, Unauthenticated
from safekeeper.services.access import accounts, sessions
from safekeeper.services.access.login_throttle import LoginThrottle

router = APIRouter(route_class=PageRoute, include_in_schema=False)

SignedIn = Annotated[Principal, Depends(signed_in)]
Admin = Annotated[Principal, Depends(admin)]
CheckedForm = Annotated[None, Depends(checked_form)]


def _throttle(request: Request) -> LoginThrottle:
    """One throttle per app, shared with the API's sign-in when it set one up first."""
    state = request.app.state
    throttle: LoginThrottle | None = getattr(state, "login_throttle", None)
    if throttle is None:
        throttle = state.login_throttle = LoginThrottle.from_config(
            archive_of(request).config.server
        )
    return throttle


def _safe_next(target: str) -> str:
    """Only paths on this site: never an open redirect to somewhere else."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _secure_cookies(request: Request) -> bool:
    setting = archive_of(request).config.server.secure_cookies
    if setting is not None:
        return setting
    return request.url.scheme == "https" or request.url.hostname not in (
        "127.0.0.1",
        "localhost",
        "::1",
    )


@router.get("/")
def start_page(request: Request, principal: SignedIn) -> Response:
    """Operators start at their locations, everyone else at their namespaces."""
    return see_other("/locations" if principal.is_operator else "/namespaces")


@router.get("/signin")
def signin_page(request: Request, reason: str = "", next: str = "/") -> Response:
    return render(
        request,
        "signin.html",
        {
            "reason": reason,
            "message": SIGNIN_MESSAGES.get(reason),
            "next": _safe_next(next),
            "username": "",
        },
    )


@router.post("/signin")
def signin_submit(
    request: Request,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    archive = archive_of(request)
    if not from_this_site(request):
        return render(
            request,
            "signin.html",
            {
                "problem": "this sign-in form did not come from this site; sign in here",
                "next": "/",
                "username": "",
            },
            status_code=403,
        )
    try:
        token, _ = accounts.sign_in(
            archive,
            _throttle(request),
            username.strip(),
            password,
            ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
            replacing=session_token(request),
        )
    except (Unauthenticated, RateLimited) as exc:
        status = 429 if isinstance(exc, RateLimited) else 401
        return render(
            request,
            "signin.html",
            {"problem": str(exc), "next": _safe_next(next), "username": username},
            status_code=status,
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(archive.config.server.session_absolute_timeout.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=_secure_cookies(request),
        path="/",
    )
    return response


@router.post("/signout")
def signout(request: Request, _: CheckedForm) -> Response:
    token = session_token(request)
    if token is not None:
        sessions.end_session(archive_of(request), token)
    response = see_other("/signin", reason="signed_out")
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/sessions")
def sessions_page(request: Request, principal: SignedIn, revoked: str = "") -> Response:
    rows = sessions.list_sessions(
        archive_of(request), principal.user_id, current_token_hash=principal.session_token_hash
    )
    return render(request, "sessions.html", {"sessions": rows, "revoked": revoked})


@router.post("/sessions/{session_id}/revoke")
def revoke_session_page(
    request: Request, session_id: str, principal: SignedIn, _: CheckedForm
) -> Response:
    sessions.revoke_session(archive_of(request), principal.user_id, session_id)
    return see_other("/sessions", revoked=session_id)


def _users(request: Request, done: str = "", problem: str = "") -> Response:
    archive = archive_of(request)
    return render(
        request,
        "admin_users.html",
        {
            "users": accounts.list_users(archive),
            "tenants": accounts.list_tenants(archive),
            "done": done,
            "problem": problem,
        },
        status_code=400 if problem else 200,
    )


@router.get("/admin/users")
def users_page(request: Request, _: Admin, done: str = "") -> Response:
    return _users(request, done=done[:200])


@router.post("/admin/users")
def add_user_page(
    request: Request,
    principal: Admin,
    _csrf: CheckedForm,
    name: Annotated[str, Form()] = "",
    tenant: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "member",
    password: Annotated[str, Form()] = "",
) -> Response:
    try:
        view = accounts.add_user(
            archive_of(request), name.strip(), tenant=tenant, role=role, password=password
        )
    except SafekeeperError as exc:
        return _users(request, problem=str(exc))
    security_event(
        request,
        principal,
        "user-created",
        user=view.name,
        tenant=view.tenant,
        detail=view.role,
        via="dashboard",
    )
    return see_other("/admin/users", done=f"user {name.strip()} added")


@router.post("/admin/users/{name}/disable")
def disable_user_page(
    request: Request,
    name: str,
    principal: Admin,
    _csrf: CheckedForm,
    enable: Annotated[str, Form()] = "",
) -> Response:
    if name == principal.user_name and not enable:
        return _users(request, problem="you cannot disable yourself")
    accounts.set_disabled(archive_of(request), name, disabled=not enable)
    security_event(
        request,
        principal,
        "user-enabled" if enable else "user-disabled",
        user=name,
        via="dashboard",
    )
    return see_other("/admin/users", done=f"user {name} {'enabled' if enable else 'disabled'}")


def _tenants(request: Request, done: str = "", problem: str = "") -> Response:
    return render(
        request,
        "admin_tenants.html",
        {"tenants": accounts.list_tenants(archive_of(request)), "done": done, "problem": problem},
        status_code=400 if problem else 200,
    )


@router.get("/admin/tenants")
def tenants_page(request: Request, _: Admin, done: str = "") -> Response:
    return _tenants(request, done=done[:200])


@router.post("/admin/tenants")
def add_tenant_page(
    request: Request, principal: Admin, _csrf: CheckedForm, name: Annotated[str, Form()] = ""
) -> Response:
    try:
        view = accounts.add_tenant(archive_of(request), name.strip())
    except SafekeeperError as exc:
        return _tenants(request, problem=str(exc))
    security_event(request, principal, "tenant-created", tenant=view.name, via="dashboard")
    return see_other("/admin/tenants", done=f"tenant {name.strip()} added")
