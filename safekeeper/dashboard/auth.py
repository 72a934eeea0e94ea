"""Who is looking at a page, and whether a form post really came from our page.

The dashboard uses the same session cookie and session service as the API. A page
request without a valid session raises ``SignInRequired`` (a redirect to the sign-in
page with the reason), never an error page. HTML forms cannot send the API's
``X-CSRF-Token`` header, so they carry the same derived token in a hidden
``csrf_token`` field.
"""

from __future__ import annotations

from fastapi import Form, Request

from safekeeper.api.auth import COOKIE
from safekeeper.api.principal import Principal
from safekeeper.api.state import archive_of
from safekeeper.dashboard.web import SignInRequired
from safekeeper.errors import Forbidden, Unauthenticated
from safekeeper.services.access import sessions


def session_token(request: Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def signed_in(request: Request) -> Principal:
    """The page's principal; stored on ``request.state`` for the templates."""
    token = session_token(request)
    if token is None:
        raise SignInRequired("signin_required")
    try:
        principal = sessions.validate(archive_of(request), token)
    except Unauthenticated as exc:
        raise SignInRequired(exc.code) from exc
    request.state.principal = principal
    request.state.csrf = sessions.csrf_token(token)
    return principal


def operator(request: Request) -> Principal:
    principal = signed_in(request)
    if not principal.is_operator:
        raise Forbidden("this page is for operators; ask an admin if you need it")
    return principal


def admin(request: Request) -> Principal:
    principal = signed_in(request)
    if not principal.is_admin:
        raise Forbidden("this page is for admins")
    return principal


def checked_form(request: Request, csrf_token: str = Form("")) -> None:
    """A cookie-authenticated form post must echo the session's CSRF token."""
    token = session_token(request)
    if token is None:
        raise SignInRequired("signin_required")
    if not sessions.csrf_matches(token, csrf_token or request.headers.get("X-CSRF-Token")):
        raise Forbidden("the form was stale or did not come from this site; reload and retry")


def check_form_token(request: Request, presented: object) -> None:
    """``checked_form`` for a form the route parsed itself (a file upload, whose body
    must not be read before the session is checked)."""
    token = session_token(request)
    if token is None:
        raise SignInRequired("signin_required")
    given = presented if isinstance(presented, str) else None
    if not sessions.csrf_matches(token, given):
        raise Forbidden("the form was stale or did not come from this site; reload and retry")


def checked_header(request: Request) -> None:
    """Script posts (the upload) send the token as the API does, in ``X-CSRF-Token``."""
    token = session_token(request)
    if token is None:
        raise SignInRequired("signin_required")
    if not sessions.csrf_matches(token, request.headers.get("X-CSRF-Token")):
        raise Forbidden("missing or wrong X-CSRF-Token header; reload the page and retry")
