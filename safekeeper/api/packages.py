"""Package members: the serving core the package origin (``api.package_origin``) uses.

A member is read from the package's extracted tree in the cache location, built on the
first request (``packages.cache``). Blob capabilities name immutable content and are
cached privately for a year; reference capabilities can move to another blob, so they
are ``no-cache`` (the browser revalidates with the ETag, which names blob and member).
Every answer, errors included, carries the caller's ``security`` headers.

The hot path — a known package whose tree this process has seen — does no thread hop
and no database work: a small member is read in the event loop (page-cache reads of a
few KiB cost less than handing them to a thread). Larger members stream from the open
file in a worker thread, so an eviction mid-response cannot cut them short. Who may
see what is answered by ``PackageLookup`` (remembered 1 s) through ``SingleFlight``.
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

import anyio
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from safekeeper.api.principal import Principal
from safekeeper.api.ranges import byte_range
from safekeeper.api.single_flight import SingleFlight
from safekeeper.archive import Archive
from safekeeper.errors import PackageRejected
from safekeeper.packages.cache import PackageCache, package_cache
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
    member = exact_member(path) if len(path) <= MAX_PATH_BYTES else None
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
def exact_member(path: str) -> str | None:
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
