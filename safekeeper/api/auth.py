"""Authentication for every route: who is asking, and the ``/api/auth`` endpoints.

Routes depend on ``current_principal`` (any signed-in user), ``require_operator`` or
``require_admin``. A request authenticates with the ``sk_session`` cookie (browsers)
or ``Authorization: Bearer <API token>`` (programs). A cookie-authenticated request
that changes state (POST, PUT, PATCH, DELETE) must also carry ``X-CSRF-Token``: a
value derived from the session token that login and ``GET /api/auth/session`` return.
A cross-site page can make the browser send the cookie but cannot read it, so it
cannot produce the header; bearer tokens are never sent implicitly, so need none.

Failed sign-ins are counted per account and per client address in this server
process (see ``services.access.login_throttle.LoginThrottle``); past the limit login answers 429
with ``Retry-After``.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from safekeeper.api.principal import Principal
from safekeeper.api.state import archive_of
from safekeeper.archive import Archive
from safekeeper.errors import Forbidden, Unauthenticated
from safekeeper.services.access import accounts, sessions, tokens
from safekeeper.services.access.login_throttle import LoginThrottle
from safekeeper.services.access.security_events import record_event

COOKIE = "sk_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = frozenset({"localhost"})
_MAX_TOKEN = 200


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("Authorization header must be 'Bearer <token>'")
    return value.strip()


def _session_token(request: Request) -> str | None:
    token = request.cookies.get(COOKIE)
    return token if token else None


async def authenticate(
    archive: Archive, session_token: str | None, authorization: str | None
) -> Principal:
    """Who a request is, from its ``sk_session`` cookie value and ``Authorization``
    header (a bearer token wins); Unauthenticated (``unauthenticated``,
    ``session_revoked``, ``session_expired``) otherwise. Shared by the API routes and
    package serving (``/p``), so both accept and refuse exactly the same requests.

    Async so that the common case costs no thread hop: on SQLite both reads are local
    and short (WAL readers never wait for writers), so they run on the event loop; any
    write (touch, expiry, cleanup), bearer tokens and PostgreSQL go to the thread pool.
    """
    bearer = _bearer(authorization)
    if bearer is not None:
        if len(bearer) > _MAX_TOKEN:
            raise Unauthenticated("unknown or revoked API token")
        return await run_in_threadpool(tokens.validate, archive, bearer)
    if not session_token or len(session_token) > _MAX_TOKEN:
        raise Unauthenticated("sign in first")
    principal = sessions.peek(archive, session_token) if _local_reads(archive) else None
    if principal is None:
        principal = await run_in_threadpool(sessions.validate, archive, session_token)
    return principal


async def current_principal(request: Request) -> Principal:
    """The signed-in user, or 401 (``unauthenticated``, ``session_revoked``,
    ``session_expired``); 403 ``csrf_failed`` for a cookie request missing its CSRF header."""
    token = _session_token(request)
    principal = await authenticate(archive_of(request), token, request.headers.get("authorization"))
    if (
        principal.via == "session"
        and token is not None
        and request.method not in _SAFE_METHODS
        and not sessions.csrf_matches(token, request.headers.get(CSRF_HEADER))
    ):
        error = Forbidden(f"missing or wrong {CSRF_HEADER} header")
        error.code = "csrf_failed"
        raise error
    return principal


def _local_reads(archive: Archive) -> bool:
    return archive.db.dialect == "sqlite" and archive.sessions_db.dialect == "sqlite"


def require_operator(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    if not principal.is_operator:
        raise Forbidden("operators and admins only")
    return principal


def require_admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden("admins only")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def _secure_cookie(request: Request) -> bool:
    configured = archive_of(request).config.server.secure_cookies
    if configured is not None:
        return configured
    if request.url.scheme != "http":
        return True
    host = request.url.hostname or ""
    if host in _LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _set_cookie(request: Request, response: Response, token: str) -> None:
    # Path=/: the dashboard, /api and package pages (/p) all act for the signed-in user,
    # and nothing else is served from this origin, so a narrower path would only break one.
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(archive_of(request).config.server.session_absolute_timeout.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure_cookie(request),
    )


def _throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle | None = getattr(request.app.state, "login_throttle", None)
    if throttle is None:
        throttle = LoginThrottle.from_config(archive_of(request).config.server)
        request.app.state.login_throttle = throttle
    return throttle


def from_this_site(request: Request) -> bool:
    """Whether a sign-in request may have come from a page of another site (login CSRF:
    a cross-site form signing the victim in as the attacker). Browsers send ``Origin``
    on every cross-site POST (``Referer`` as the fallback); either must name this host.
    A request with neither is not a browser's cross-site form, so it passes."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc == host
    referer = request.headers.get("referer")
    if referer is not None:
        return urlsplit(referer).netloc == host
    return True


def check_from_this_site(request: Request) -> None:
    if not from_this_site(request):
        error = Forbidden("sign-in from another site's page refused")
        error.code = "csrf_failed"
        raise error


def security_event(
    request: Request,
    principal: Principal,
    action: str,
    *,
    user: str | None = None,
    tenant: str | None = None,
    detail: str | None = None,
    via: str = "api",
) -> None:
    """Audit an account or credential change made by ``principal`` (see
    ``services.access.security_events``), with the client's address."""
    record_event(
        archive_of(request),
        action,
        actor=f"{via}:{principal.user_name}",
        user=user,
        tenant=tenant,
        ip=request.client.host if request.client else None,
        detail=detail,
    )


def reauthenticate(request: Request, principal: Principal, password: str) -> None:
    """The signed-in user proves they know their password again (under the sign-in
    throttle) before a change that outlasts the session: a new password, a token, a
    role. Unauthenticated (``bad_credentials``) otherwise."""
    accounts.authenticate_throttled(
        archive_of(request),
        _throttle(request),
        principal.user_name,
        password,
        ip=request.client.host if request.client else None,
    )


# -- request and response bodies -------------------------------------------------------

Name = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
]
Password = Annotated[str, Field(min_length=1, max_length=accounts.MAX_PASSWORD)]
NewPassword = Annotated[
    str, Field(min_length=accounts.MIN_PASSWORD, max_length=accounts.MAX_PASSWORD)
]
RoleName = Literal["admin", "operator", "member"]


class LoginRequest(BaseModel):
    user: Name
    password: Password


class SessionInfo(BaseModel):
    user: str
    tenant: str
    role: RoleName
    via: Literal["session", "token"]
    csrf_token: str | None = Field(
        description="Send as X-CSRF-Token on POST/PUT/PATCH/DELETE (cookie sessions only)."
    )


class PasswordChange(BaseModel):
    current_password: Password
    new_password: NewPassword
    revoke_tokens: bool = Field(
        True,
        description="Also revoke your API tokens (whoever knew the old password "
        "may have made one).",
    )


class Count(BaseModel):
    ended: int


class TokenRequest(BaseModel):
    name: Name
    current_password: Password = Field(
        description="Your password: a stolen session alone cannot mint a lasting credential."
    )


class NewToken(BaseModel):
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    token: str = Field(description="Shown once; only its SHA-256 is stored.")


def _info(principal: Principal, token: str | None) -> SessionInfo:
    return SessionInfo(
        user=principal.user_name,
        tenant=principal.tenant_name,
        role=principal.role,
        via=principal.via,
        csrf_token=sessions.csrf_token(token) if token is not None else None,
    )


# -- routes -----------------------------------------------------------------------------

router = APIRouter(prefix="/api/auth", tags=["auth"])

_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "Not signed in, or the session was revoked or expired"},
    403: {"description": "CSRF header missing or wrong"},
}


@router.post(
    "/login",
    responses={401: {"description": "Wrong user or password"}, 429: {"description": "Throttled"}},
)
def login(body: LoginRequest, request: Request, response: Response) -> SessionInfo:
    """Sign in: sets the session cookie (a cookie held before is revoked: rotation).
    A browser's request must come from this site (``Origin``/``Referer``)."""
    check_from_this_site(request)
    token, principal = accounts.sign_in(
        archive_of(request),
        _throttle(request),
        body.user,
        body.password,
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        replacing=_session_token(request),
    )
    _set_cookie(request, response, token)
    return _info(principal, token)


@router.post("/logout", status_code=204, responses=_ERRORS)
def logout(principal: CurrentPrincipal, request: Request, response: Response) -> None:
    """Sign out: the session ends on the server, not only in this browser."""
    token = _session_token(request)
    if principal.via == "session" and token is not None:
        sessions.end_session(archive_of(request), token)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax")


@router.get("/session", responses=_ERRORS)
def whoami(principal: CurrentPrincipal, request: Request) -> SessionInfo:
    """Who is signed in, with the CSRF token for this session."""
    return _info(principal, _session_token(request) if principal.via == "session" else None)


@router.post("/password", responses=_ERRORS)
def change_password(
    body: PasswordChange, principal: CurrentPrincipal, request: Request, response: Response
) -> SessionInfo:
    """Change your own password: every other session ends, this one is rotated."""
    archive = archive_of(request)
    reauthenticate(request, principal, body.current_password)
    current = _session_token(request) if principal.via == "session" else None
    token = accounts.set_password(
        archive,
        principal.user_name,
        body.new_password,
        current_token=current,
        revoke_tokens=body.revoke_tokens,
    )
    security_event(
        request,
        principal,
        "password-changed",
        user=principal.user_name,
        tenant=principal.tenant_name,
        detail="API tokens revoked" if body.revoke_tokens else "API tokens kept",
    )
    if token is not None:
        _set_cookie(request, response, token)
    return _info(principal, token)


@router.get("/sessions", responses=_ERRORS)
def my_sessions(principal: CurrentPrincipal, request: Request) -> list[sessions.SessionView]:
    """Your sessions; ``current`` marks the one making this request."""
    return sessions.list_sessions(
        archive_of(request), principal.user_id, current_token_hash=principal.session_token_hash
    )


@router.delete("/sessions/{session_id}", status_code=204, responses=_ERRORS)
def revoke_session(
    session_id: Annotated[str, PathParam(max_length=64)],
    principal: CurrentPrincipal,
    request: Request,
) -> None:
    """End one of your sessions (by its public id)."""
    sessions.revoke_session(archive_of(request), principal.user_id, session_id)


@router.post("/sessions/revoke-others", responses=_ERRORS)
def revoke_other_sessions(principal: CurrentPrincipal, request: Request) -> Count:
    """End every session of yours but this one."""
    ended = sessions.end_user_sessions(
        archive_of(request), [principal.user_id], keep_token_hash=principal.session_token_hash
    )
    return Count(ended=ended)


@router.post("/tokens", status_code=201, responses=_ERRORS)
def create_token(body: TokenRequest, principal: CurrentPrincipal, request: Request) -> NewToken:
    """A new API token for you (give your current password); the token is in this
    answer only."""
    reauthenticate(request, principal, body.current_password)
    view, token = tokens.create_token(archive_of(request), principal.user_id, body.name)
    security_event(
        request,
        principal,
        "token-created",
        user=principal.user_name,
        tenant=principal.tenant_name,
        detail=f"token {view.id} {view.name!r}",
    )
    return NewToken(**vars(view), token=token)


@router.get("/tokens", responses=_ERRORS)
def list_tokens(principal: CurrentPrincipal, request: Request) -> list[tokens.TokenView]:
    return tokens.list_tokens(archive_of(request), principal.user_id)


@router.delete("/tokens/{token_id}", status_code=204, responses=_ERRORS)
def revoke_token(
    token_id: Annotated[int, PathParam(gt=0, lt=2**62)],
    principal: CurrentPrincipal,
    request: Request,
) -> None:
    tokens.revoke_token(archive_of(request), principal.user_id, token_id)
    security_event(
        request,
        principal,
        "token-revoked",
        user=principal.user_name,
        tenant=principal.tenant_name,
        detail=f"token {token_id}",
    )
