"""Request latency of this API process: ``safekeeper_http_request_duration_seconds``.

Labelled by method, route template (``/api/blobs/{sha256}``, never the raw path: a
label per blob or key would grow without bound) and status class (``2xx``). Requests
no route matched share one label. The package paths (``/p/...``) and the package
origin are not measured here: they are the hot path, and are kept free of it.
"""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Methods outside this set share one label: the method is client-chosen text.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of a request no route matched (404s, scanners).
UNMATCHED = "unmatched"

REQUEST_DURATION = Histogram(
    "safekeeper_http_request_duration_seconds",
    "API request latency by method, route template and status class",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def route_label(scope: Scope) -> str:
    """The template of the route the router matched (it records it in the scope)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


async def timed(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app`` on one HTTP request and record how long it took."""
    started = time.perf_counter()
    status = 500  # an exception before any answer is a server error

    async def recording_send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await app(scope, receive, recording_send)
    finally:
        method = scope.get("method", "")
        REQUEST_DURATION.labels(
            method if method in KNOWN_METHODS else "other",
            route_label(scope),
            f"{status // 100}xx",
        ).observe(time.perf_counter() - started)
