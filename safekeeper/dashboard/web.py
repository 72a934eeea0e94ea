"""What every dashboard page shares: templates, the route class that turns errors into
pages, and small response helpers.

Pages answer HTML, never the API's JSON errors: a page route that raises a
``SafekeeperError`` renders ``error.html`` with the error's status, and a missing,
revoked or expired session becomes a redirect to the sign-in page with a short reason.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from safekeeper.api.errors import status_of
from safekeeper.api.principal import Principal
from safekeeper.errors import SafekeeperError
from safekeeper.units import format_duration, format_size

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "—"


def _percent(value: int | None, capacity: int | None) -> float:
    """``value`` as a share of ``capacity`` for bars, capped at 100."""
    if value is None or not capacity:
        return 0.0
    return min(100.0, 100.0 * value / capacity)


def _age(seconds: float) -> str:
    """Seconds as a short age: ``3 s``, ``2 min 5 s``, ``1 d 2 h``."""
    return "under 1 s" if seconds < 1 else format_duration(timedelta(seconds=seconds))


templates.env.filters["size"] = format_size
templates.env.filters["age"] = _age
templates.env.filters["percent"] = _percent
templates.env.filters["when"] = _when
templates.env.filters["short"] = lambda sha: sha[:12] if sha else "—"


class SignInRequired(Exception):
    """Raised by the page auth dependency: answered with a redirect, not an error page.

    Not a ``SafekeeperError`` on purpose: it is flow control of the dashboard, and the
    API's JSON handler must never see it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason if reason in SIGNIN_MESSAGES else "signin_required"


SIGNIN_MESSAGES = {
    "session_revoked": "Your session was signed out elsewhere. Please sign in again.",
    "session_expired": "Your session expired. Please sign in again.",
    "signin_required": "Please sign in to continue.",
    "signed_out": "You are signed out.",
}


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> Response:
    principal = getattr(request.state, "principal", None)
    full: dict[str, Any] = {
        "principal": principal,
        "csrf": getattr(request.state, "csrf", ""),
        "path": request.url.path,
    }
    full.update(context or {})
    response = templates.TemplateResponse(request, template, full, status_code=status_code)
    # Pages show per-user data: never cache them, never let them be framed elsewhere.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


def see_other(url: str, **params: str | int | None) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return RedirectResponse(f"{url}?{query}" if query else url, status_code=303)


def signin_redirect(reason: str, next_path: str | None = None) -> RedirectResponse:
    target = f"/signin?reason={quote(reason)}"
    if next_path and next_path.startswith("/") and not next_path.startswith("//"):
        target += f"&next={quote(next_path)}"
    return RedirectResponse(target, status_code=303)


def _wants_json(request: Request) -> bool:
    """Scripts on our pages (upload, gc progress) ask for JSON; browsers navigating ask
    for HTML."""
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


class PageRoute(APIRoute):
    """An ``APIRoute`` whose errors (its dependencies' included) become HTML pages."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired as exc:
                if _wants_json(request):
                    return JSONResponse(
                        {"code": exc.reason, "message": SIGNIN_MESSAGES[exc.reason]},
                        status_code=401,
                    )
                next_path = request.url.path if request.method == "GET" else None
                return signin_redirect(exc.reason, next_path)
            except SafekeeperError as exc:
                if _wants_json(request):
                    return JSONResponse(
                        {"code": exc.code, "message": str(exc)}, status_code=status_of(exc)
                    )
                return render(
                    request,
                    "error.html",
                    {"status": status_of(exc), "code": exc.code, "message": str(exc)},
                    status_code=status_of(exc),
                )

        return page_handler


def current(request: Request) -> Principal:
    """The principal the auth dependency stored on the request."""
    principal: Principal = request.state.principal
    return principal
