"""The old package URLs on the dashboard's origin: ``/p/blob/{blob}/{path}`` and
``/p/{namespace}/{key}/{label}/{path}`` serve nothing any more; for a signed-in viewer
(``sk_session`` cookie or bearer token — 401 with the API's codes otherwise) who may
see the package they answer 307 to a fresh capability URL on the package origin
(``api.package_origin``; docs/design.md, invariant 13).

A viewer sees only their tenant's packages: a reference in a namespace of another
tenant, or a blob no visible namespace references, answers the very 404 an unknown one
does, so a URL reveals nothing about other tenants. Admins see every package.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Request, Response
from starlette.requests import cookie_parser
from starlette.types import Receive, Scope, Send

from safekeeper.api.auth import COOKIE, authenticate
from safekeeper.api.errors import error_response, status_of
from safekeeper.api.packages import (
    Serving,
    exact_member,
    namespace_visible,
    visible_blob_package,
)
from safekeeper.api.principal import Principal
from safekeeper.api.state import archive_of
from safekeeper.archive import Archive
from safekeeper.errors import SafekeeperError
from safekeeper.ids import is_blob_id
from safekeeper.packages.capabilities import (
    BlobTarget,
    Capability,
    RefTarget,
    Target,
    encode,
    load_secret,
)
from safekeeper.packages.lookup import PackageInfo
from safekeeper.packages.validate import MAX_PATH_BYTES


def is_package_request(scope: Scope) -> bool:
    return scope["type"] == "http" and str(scope["path"]).startswith("/p/")


class PackageRedirects:
    """The ASGI handler of ``/p/...`` requests (``is_package_request``) on the
    dashboard's origin: a redirect to the package origin, never the content. The app
    calls it before FastAPI's router, as it did when it served the members here."""

    def __init__(self) -> None:
        self._serving: Serving | None = None
        self._secret: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self._dispatch(request)
        except SafekeeperError as exc:
            response = error_response(status_of(exc), exc.code, str(exc))
        await response(scope, receive, send)

    def _state(self, request: Request) -> tuple[Serving, bytes]:
        if self._serving is None or self._secret is None:
            archive = archive_of(request)
            self._serving, self._secret = Serving.of(archive), load_secret(archive.config)
        return self._serving, self._secret

    async def _dispatch(self, request: Request) -> Response:
        if request.scope["method"] not in ("GET", "HEAD"):
            return error_response(405, "method_not_allowed", "package members are GET or HEAD")
        serving, secret = self._state(request)
        archive = serving.lookup.archive
        principal = await _principal(archive, request.scope)
        namespace, _, rest = request.scope["path"][len("/p/") :].partition("/")
        found: tuple[Target, str, PackageInfo] | Response
        if namespace == "blob" and is_blob_id(rest.partition("/")[0]):
            blob, _, path = rest.partition("/")
            found = await _blob_target(serving, principal, blob, path)
        else:
            # Not a blob id: a reference in a namespace that may be called "blob".
            found = await _reference_target(serving, principal, namespace, rest)
        if isinstance(found, Response):
            return found
        target, path, info = found
        if len(path) > MAX_PATH_BYTES or exact_member(path) is None:
            # Not a member path in its exact form: no redirect a browser would normalise.
            return error_response(
                404, "no_such_member", f"package {info.sha256} has no member {path!r}"
            )
        url = capability_url(archive, secret, principal.user_id, target, path)
        query = request.scope.get("query_string", b"")
        if query:
            url += "?" + query.decode("latin-1")
        return Response(
            status_code=307,
            headers={
                "location": url,
                "cache-control": "no-store",
                "referrer-policy": "no-referrer",
            },
        )


def capability_url(archive: Archive, secret: bytes, user_id: int, target: Target, path: str) -> str:
    """A fresh capability URL on the package origin for ``user_id``: ``path`` in the
    package ``target``, valid for ``server.capability_ttl``."""
    server = archive.config.server
    expires = int((archive.clock() + server.capability_ttl).timestamp())
    capability = encode(secret, Capability(user_id, target, expires))
    return f"{server.package_base}/c/{capability}/{quote(path)}"


def player_url(archive: Archive, secret: bytes, user_id: int, target: RefTarget) -> tuple[str, int]:
    """(the player page for ``user_id`` on the package origin, its expiry in Unix
    seconds): the package's launch page framed with the SCORM runtime."""
    server = archive.config.server
    expires = int((archive.clock() + server.capability_ttl).timestamp())
    capability = encode(secret, Capability(user_id, target, expires))
    return f"{server.package_base}/l/{capability}", expires


async def _principal(archive: Archive, scope: Scope) -> Principal:
    """The caller, from the raw headers (one pass; no Request.headers/cookies objects)."""
    cookie: str | None = None
    authorization: str | None = None
    for name, value in scope["headers"]:
        if name == b"cookie":
            # Several Cookie headers (HTTP/2 style) are one list joined by "; ".
            text = value.decode("latin-1")
            cookie = text if cookie is None else f"{cookie}; {text}"
        elif name == b"authorization":
            authorization = value.decode("latin-1")
    session_token = cookie_parser(cookie).get(COOKIE) if cookie is not None else None
    return await authenticate(archive, session_token, authorization)


async def _blob_target(
    serving: Serving, principal: Principal, blob: str, path: str
) -> tuple[Target, str, PackageInfo] | Response:
    info = await visible_blob_package(serving, principal, blob)
    if info is None:
        return error_response(404, "not_a_package", f"blob {blob} is not a stored package")
    return BlobTarget(blob), path, info


async def _reference_target(
    serving: Serving, principal: Principal, namespace: str, rest: str
) -> tuple[Target, str, PackageInfo] | Response:
    """``KEY/LABEL/PATH`` in ``namespace`` (keys may contain slashes, labels may not;
    the shortest key that names a reference wins)."""
    not_found = error_response(
        404, "not_found", f"no reference in {namespace!r} matches {rest!r} as KEY/LABEL/PATH"
    )
    if "\x00" in namespace or "\x00" in rest:
        # No name holds NUL, and PostgreSQL refuses it in a query (a 500, not a 404).
        return not_found
    lookup = serving.lookup
    if not await namespace_visible(serving, principal, namespace):
        return not_found
    known, target = lookup.cached_reference(namespace, rest)
    if not known:
        target = await serving.flights.run(
            ("reference", namespace, rest), lookup.reference, namespace, rest
        )
    if target is None:
        return not_found
    if target.package is None:
        return error_response(
            404,
            "not_a_package",
            f"{namespace}:{target.key}:{target.label} does not name a stored package",
        )
    return RefTarget(namespace, target.key, target.label), target.path, target.package
