"""Package members: the serving core (``member_response``) and the old ``/p/...`` URLs.

Package content is served only from the package origin (``api.package_origin``), by
capability: a package's script must never run with the authority of the dashboard's
session (docs/design.md, invariant 13). The dashboard's origin keeps the old URLs
``/p/blob/{blob}/{path}`` and ``/p/{namespace}/{key}/{label}/{path}`` only as
redirects: for a signed-in viewer (``sk_session`` cookie or bearer token — 401 with
the API's codes otherwise) who may see the package, 307 to a fresh capability URL on
the package origin. Nothing of the package is answered here.

A viewer sees only their tenant's packages: a reference in a namespace of another
tenant, or a blob no visible namespace references, answers the very 404 an unknown one
does, so a URL reveals nothing about other tenants. Admins see every package.

The serving core, for the package origin's hot path — a known package whose tree this
process has seen — does no thread hop and no database work: a small member is read in
the event loop (page-cache reads of a few KiB cost less than handing them to a
thread). Larger members stream from the open file in a worker thread, so an eviction
mid-response cannot cut them short.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from typing import Literal
from urllib.parse import quote

import anyio
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import cookie_parser
from starlette.types import Receive, Scope, Send

from safekeeper.api.auth import COOKIE, authenticate
from safekeeper.api.errors import error_response, status_of
from safekeeper.api.principal import Principal
from safekeeper.api.ranges import byte_range
from safekeeper.api.single_flight import SingleFlight
from safekeeper.api.state import archive_of
from safekeeper.archive import Archive
from safekeeper.errors import PackageRejected, SafekeeperError
from safekeeper.ids import is_blob_id
from safekeeper.packages.cache import PackageCache, package_cache
from safekeeper.packages.capabilities import (
    BlobTarget,
    Capability,
    RefTarget,
    Target,
    encode,
    load_secret,
)
from safekeeper.packages.content_types import content_type
from safekeeper.packages.lookup import PackageInfo, PackageLookup
from safekeeper.packages.validate import MAX_PATH_BYTES, safe_member_path

#: Members up to this size are read whole in the event loop; larger ones stream.
SMALL_MEMBER = 256 * 1024
CHUNK = 256 * 1024
#: ``private``: a shared cache must not hand one tenant's package to another.
IMMUTABLE = "private, max-age=31536000, immutable"
REVALIDATE = "no-cache"


@dataclass(frozen=True)
class Serving:
    """What serving one archive's packages needs, made once per app."""

    cache: PackageCache
    lookup: PackageLookup
    flights: SingleFlight

    @classmethod
    def of(cls, archive: Archive) -> Serving:
        return cls(package_cache(archive), PackageLookup(archive), SingleFlight())


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
        if len(path) > MAX_PATH_BYTES or _exact_member(path) is None:
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


async def visible_blob_package(
    serving: Serving, principal: Principal, blob: str
) -> PackageInfo | None:
    """The package zip ``blob`` is, when ``principal`` may see it; else None."""
    lookup = serving.lookup
    visible = lookup.cached_blob_visible(principal, blob)
    if visible is None:
        visible = await serving.flights.run(
            ("blob", principal.tenant_id, blob), lookup.blob_visible, principal, blob
        )
    info: PackageInfo | None = None
    if visible:
        known, info = lookup.cached_package(blob)
        if not known:
            info = await serving.flights.run(("package", blob), lookup.package, blob)
    return info


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


async def namespace_visible(serving: Serving, principal: Principal, namespace: str) -> bool:
    lookup = serving.lookup
    visible = lookup.cached_namespace_visible(principal, namespace)
    if visible is None:
        visible = await serving.flights.run(
            ("namespace", principal.tenant_id, namespace),
            lookup.namespace_visible,
            principal,
            namespace,
        )
    return visible


Headers = tuple[tuple[bytes, bytes], ...]


async def member_response(
    request: Request,
    cache: PackageCache,
    info: PackageInfo,
    path: str,
    cache_control: str,
    security: Headers,
) -> Response | RawResponse:
    """Member ``path`` of package ``info`` (Range, conditional requests, HEAD), with the
    ``security`` headers on every answer, errors included."""
    # Longer paths are no member's, and must not fill the memo with 16 KiB URLs.
    member = _exact_member(path) if len(path) <= MAX_PATH_BYTES else None
    if member is None:
        return _no_member(info, path, security)
    etag, last_modified, headers = _member_headers(
        info.sha256, member, info.created_at, cache_control, security
    )
    conditions = _conditions(request.scope)
    if _not_modified(conditions, etag, info.created_at):
        return RawResponse(304, list(headers[:-1]))  # no content-type: no body
    opened = _open_ready(cache, info.sha256, member)
    if opened is None:
        try:
            opened = await run_in_threadpool(_open_after_ensuring, cache, info.sha256, member)
        except PackageRejected as exc:
            message = f"the stored package {info.sha256} cannot be extracted: {exc}"
            return json_error(500, exc.code, message, security)
    if not isinstance(opened, tuple):
        return _no_member(info, path, security)
    fd, size = opened
    if cache.touch_due(info.sha256):
        await run_in_threadpool(cache.touch, info.sha256)
    return _body(request, conditions, fd, size, list(headers), etag, last_modified)


class RawResponse:
    """A response with its headers already in bytes: Starlette's ``Response`` encodes
    every header of every response, a fifth of the time a small member takes."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        self.status, self.headers, self.body = status, headers, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def json_error(status: int, code: str, message: str, security: Headers) -> RawResponse:
    body = json.dumps({"code": code, "message": message}).encode()
    headers = [
        *security,
        (b"cache-control", b"no-store"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return RawResponse(status, headers, body)


@lru_cache(maxsize=65536)
def _member_headers(
    sha256: str, member: str, created_at: datetime, cache_control: str, security: Headers
) -> tuple[str, str, Headers]:
    """(ETag, Last-Modified, the headers every answer for this member carries, with
    content-type last): the blob and the member name the bytes exactly."""
    etag = f'"{sha256}-{hashlib.sha256(member.encode()).hexdigest()[:16]}"'
    last_modified = format_datetime(created_at, usegmt=True)
    headers = (
        *security,
        (b"etag", etag.encode()),
        (b"last-modified", last_modified.encode()),
        (b"cache-control", cache_control.encode()),
        (b"accept-ranges", b"bytes"),
        (b"content-type", content_type(member).encode()),
    )
    return etag, last_modified, headers


@lru_cache(maxsize=65536)
def _exact_member(path: str) -> str | None:
    """The member path, or None when ``path`` is not one in its exact, normal form."""
    try:
        member = safe_member_path(path)
    except PackageRejected:
        return None
    return member if member == path else None


def _no_member(info: PackageInfo, path: str, security: Headers) -> RawResponse:
    message = f"package {info.sha256} has no member {path!r}"
    return json_error(404, "no_such_member", message, security)


_Opened = tuple[int, int] | Literal["missing"]


def _open(cache: PackageCache, sha256: str, member: str) -> _Opened | None:
    """(fd, size) of a regular member; "missing" if the tree has no such file; None if
    the tree itself is gone."""
    tree = cache.layout.tree_text(sha256)
    try:
        fd = os.open(f"{tree}/{member}", os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return "missing" if os.path.isdir(tree) else None
    except OSError as exc:
        # A name no member can have (a segment over 255 bytes): not there, not a 500.
        if exc.errno == errno.ENAMETOOLONG:
            return "missing"
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return "missing"
    return fd, info.st_size


def _open_ready(cache: PackageCache, sha256: str, member: str) -> _Opened | None:
    """The hot path: no database, no thread. None: go the slow way."""
    if not cache.ready(sha256):
        return None
    opened = _open(cache, sha256, member)
    if opened is None:
        cache.forget(sha256)  # evicted or deleted since: rebuild
    return opened


def _open_after_ensuring(cache: PackageCache, sha256: str, member: str) -> _Opened:
    cache.tree_for(sha256)
    opened = _open(cache, sha256, member)
    if opened is None:
        # Evicted between extraction and open (a cache smaller than this package's
        # neighbours): extract once more; a second miss is a missing member.
        cache.forget(sha256)
        cache.tree_for(sha256)
        opened = _open(cache, sha256, member) or "missing"
    return opened


def _body(
    request: Request,
    conditions: dict[bytes, str],
    fd: int,
    size: int,
    headers: list[tuple[bytes, bytes]],
    etag: str,
    last_modified: str,
) -> Response | RawResponse:
    start, length, status = 0, size, 200
    wanted = _wanted_range(conditions, size, etag, last_modified)
    if wanted == "unsatisfiable":
        os.close(fd)
        headers += [(b"content-range", f"bytes */{size}".encode()), (b"content-length", b"0")]
        return RawResponse(416, headers)
    if wanted is not None:
        start, end = wanted
        length, status = end - start + 1, 206
        headers.append((b"content-range", f"bytes {start}-{end}/{size}".encode()))
    headers.append((b"content-length", str(length).encode()))
    if request.scope["method"] == "HEAD":
        os.close(fd)
        return RawResponse(status, headers)
    if length <= SMALL_MEMBER:
        try:
            body = os.pread(fd, length, start)
        finally:
            os.close(fd)
        return RawResponse(status, headers, body)
    response = StreamingResponse(_stream(fd, start, length), status_code=status)
    response.raw_headers = headers
    return response


async def _stream(fd: int, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        while length > 0:
            chunk = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK, length), start)
            if not chunk:
                return
            start += len(chunk)
            length -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


_CONDITIONS = (b"if-none-match", b"if-modified-since", b"range", b"if-range")


def _conditions(scope: Scope) -> dict[bytes, str]:
    """The request headers serving looks at, in one pass over the raw list."""
    return {
        name: value.decode("latin-1") for name, value in scope["headers"] if name in _CONDITIONS
    }


def _not_modified(headers: dict[bytes, str], etag: str, modified: datetime) -> bool:
    """RFC 9110 §13.1: If-None-Match (weak comparison) wins over If-Modified-Since."""
    if_none_match = headers.get(b"if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() == "*":
            return True
        return etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    if_modified_since = headers.get(b"if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        return modified.replace(microsecond=0) <= since
    return False


def _wanted_range(
    headers: dict[bytes, str], size: int, etag: str, last_modified: str
) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """The range to send (``api.ranges.byte_range``); None also for a stale If-Range."""
    if_range = headers.get(b"if-range")
    if if_range is not None and if_range not in (etag, last_modified):
        return None
    return byte_range(headers.get(b"range"), size)
