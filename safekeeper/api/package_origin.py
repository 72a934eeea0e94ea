"""The package origin: package content, served only by capability URL.

``safekeeper serve`` runs this app on a second listener (``server.package_port``,
default port + 1), whose origin (``server.package_origin``) differs from the
dashboard's, so a package's script — running on this origin — can neither read the
dashboard's pages nor call the API with the viewer's session (docs/design.md,
invariant 13). Nothing here looks at cookies or sets one.

Routes (anything else answers 404):

- ``GET|HEAD /c/<capability>/<member>``: a member of the capability's package;
- ``GET /l/<capability>``: the player (``api.player``): the launch page in a frame,
  with the SCORM runtime; ``POST /r/<capability>/commit``: the runtime's commits;
- ``GET /_sk/runtime.js``, ``GET /_sk/health``.

Every request re-checks the capability against the viewer's state (a disabled or
deleted user, or a deleted tenant: 403 ``capability_revoked``) and against
visibility (the same 404s ``/p`` answers when the viewer may not see the package any
more). Every answer carries ``SECURITY_HEADERS``: a CSP that lets only the dashboard
and the configured embedders frame it and sandboxes the document (scripts, forms,
popups and modals allowed, top navigation and plugins not), ``nosniff``, and
``Referrer-Policy: no-referrer`` so capability URLs do not leak to other sites.
"""

from __future__ import annotations

import json
from typing import Literal, cast

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from safekeeper.api import player
from safekeeper.api.errors import status_of
from safekeeper.api.packages import (
    IMMUTABLE,
    REVALIDATE,
    Headers,
    RawResponse,
    Serving,
    json_error,
    member_response,
    namespace_visible,
    visible_blob_package,
)
from safekeeper.api.principal import Principal
from safekeeper.archive import Archive
from safekeeper.config_server import ServerConfig
from safekeeper.db import accounts as account_queries
from safekeeper.errors import BadInput, NotFound, SafekeeperError, TooLarge
from safekeeper.packages import scorm
from safekeeper.packages.capabilities import (
    BlobTarget,
    Capability,
    CapabilityRefused,
    RefTarget,
    decode,
    load_secret,
)
from safekeeper.packages.lookup import PackageInfo
from safekeeper.services.packaging import attempts

#: What the sandbox allows: scripts, forms, popups and dialogs real content uses;
#: same-origin, so the content frame reaches the player's SCORM API (both on this
#: origin). Not: top navigation, pointer lock, presentation, plugins.
SANDBOX = "sandbox allow-scripts allow-same-origin allow-forms allow-popups allow-modals"


def security_headers(server: ServerConfig) -> Headers:
    ancestors = " ".join(("'self'", *server.framing_origins))
    policy = (
        f"{SANDBOX} allow-downloads; frame-ancestors {ancestors}; "
        "connect-src 'self'; form-action 'self'; base-uri 'self'; object-src 'none'"
    )
    return (
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    )


class PackageOrigin:
    """The ASGI app of the package origin (plain ASGI: no router, no middleware)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.serving = Serving.of(archive)
        self.secret = load_secret(archive.config)
        self.security = security_headers(archive.config.server)
        self._local_reads = archive.db.dialect == "sqlite"
        server = archive.config.server
        ancestors = " ".join(("'self'", *server.framing_origins)).encode()
        self._player_headers = (
            (
                b"content-security-policy",
                player.PLAYER_POLICY.encode()
                + b"; frame-ancestors "
                + ancestors
                + b"; "
                + SANDBOX.encode(),
            ),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
            (b"content-type", b"text/html; charset=utf-8"),
        )
        self._runtime_headers = [
            *self.security,
            (b"cache-control", b"no-cache"),
            (b"content-type", b"text/javascript; charset=utf-8"),
            (b"content-length", str(len(player.RUNTIME_JS)).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            response = await self._dispatch(scope, receive)
        except SafekeeperError as exc:
            response = json_error(status_of(exc), exc.code, str(exc), self.security)
        await response(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive) -> RawResponse | Response:
        path: str = scope["path"]
        if path.startswith("/c/"):
            if scope["method"] not in ("GET", "HEAD"):
                return json_error(
                    405, "method_not_allowed", "package members are GET or HEAD", self.security
                )
            capability_text, _, member = path[len("/c/") :].partition("/")
            return await self._member(Request(scope, receive), capability_text, member)
        if path.startswith("/l/") and scope["method"] in ("GET", "HEAD"):
            return await self._player(path[len("/l/") :])
        if path.startswith("/r/") and path.endswith("/commit"):
            if scope["method"] != "POST":
                return json_error(405, "method_not_allowed", "commits are POST", self.security)
            return await self._commit(path[len("/r/") : -len("/commit")], receive)
        if path == "/_sk/runtime.js":
            return RawResponse(200, self._runtime_headers, player.RUNTIME_JS)
        if path == "/_sk/health":
            return RawResponse(200, [*self.security, (b"content-type", b"text/plain")], b"ok")
        return json_error(404, "not_found", "nothing here but package links", self.security)

    async def check(self, capability_text: str) -> tuple[Capability, Principal]:
        """The capability and its viewer as they are now; CapabilityRefused otherwise."""
        capability = decode(self.secret, capability_text, self.archive.clock().timestamp())
        viewer = await self._viewer(capability.user_id)
        if viewer is None:
            raise CapabilityRefused(
                "capability_revoked", "the viewer of this package link is disabled or deleted"
            )
        return capability, viewer

    async def package_of(self, capability: Capability, viewer: Principal) -> PackageInfo | None:
        """The package the capability names, when its viewer may still see it."""
        target = capability.target
        if isinstance(target, BlobTarget):
            return await visible_blob_package(self.serving, viewer, target.sha256)
        if not await namespace_visible(self.serving, viewer, target.namespace):
            return None
        lookup = self.serving.lookup
        known, info = lookup.cached_named(target.namespace, target.key, target.label)
        if not known:
            info = await self.serving.flights.run(
                ("named", target.namespace, target.key, target.label),
                lookup.named,
                target.namespace,
                target.key,
                target.label,
            )
        return info

    async def _member(
        self, request: Request, capability_text: str, member: str
    ) -> RawResponse | Response:
        capability, viewer = await self.check(capability_text)
        info = await self.package_of(capability, viewer)
        if info is None:
            return json_error(
                404, "not_found", "this package is gone or no longer yours to see", self.security
            )
        cache_control = IMMUTABLE if isinstance(capability.target, BlobTarget) else REVALIDATE
        return await member_response(
            request, self.serving.cache, info, member, cache_control, self.security
        )

    async def _launch(self, capability_text: str) -> tuple[Capability, Principal, PackageInfo]:
        """A reference capability's viewer and package, as they are now."""
        capability, viewer = await self.check(capability_text)
        if not isinstance(capability.target, RefTarget):
            raise BadInput("the player and its runtime need a package reference, not a blob")
        info = await self.package_of(capability, viewer)
        if info is None:
            raise NotFound("this package is gone or no longer yours to see")
        return capability, viewer, info

    async def _player(self, capability_text: str) -> RawResponse:
        capability, viewer, info = await self._launch(capability_text)
        target = cast(RefTarget, capability.target)
        found_items = await run_in_threadpool(player.items, self.serving.cache, info)
        body = await run_in_threadpool(
            player.page,
            self.archive,
            capability_text,
            target,
            info,
            viewer.user_id,
            viewer.user_name,
            found_items,
        )
        headers = [
            *self._player_headers,
            (b"content-length", str(len(body)).encode()),
        ]
        return RawResponse(200, headers, body)

    async def _commit(self, capability_text: str, receive: Receive) -> RawResponse:
        capability, viewer, _ = await self._launch(capability_text)
        target = cast(RefTarget, capability.target)
        body = await _read_body(receive, scorm.MAX_TOTAL * 2)
        try:
            sent = json.loads(body)
        except ValueError as exc:
            raise BadInput("a commit is a JSON object") from exc
        if not isinstance(sent, dict):
            raise BadInput("a commit is a JSON object")
        await run_in_threadpool(
            lambda: attempts.commit(
                self.archive,
                viewer.user_id,
                target.namespace,
                target.key,
                sent.get("version"),
                sent.get("data"),
                finish=sent.get("finish") is True,
            )
        )
        answer = b'{"ok":true}'
        headers = [
            *self.security,
            (b"cache-control", b"no-store"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()),
        ]
        return RawResponse(200, headers, answer)

    async def _viewer(self, user_id: int) -> Principal | None:
        """The active user ``user_id`` as a principal, or None. On SQLite the answer is
        remembered while the catalog sees no commit (``PRAGMA data_version``), so a
        disabled user is refused on the very next request."""
        if not self._local_reads:
            return await run_in_threadpool(_read_viewer, self.archive, user_id)
        quick = self.archive.db.quick
        version = quick.data_version()
        memo = quick.thread_memo()
        known = memo.get(("viewer", user_id))
        if known is not None and known[0] == version:
            return cast(Principal | None, known[1])
        viewer = _read_viewer(self.archive, user_id)
        if len(memo) > 10_000:
            memo.clear()
        memo[("viewer", user_id)] = (version, viewer)
        return viewer


def _read_viewer(archive: Archive, user_id: int) -> Principal | None:
    account = account_queries.active_account(archive.db.quick, user_id)
    if account is None:
        return None
    return Principal(
        user_id=account.user_id,
        user_name=account.user_name,
        tenant_id=account.tenant_id,
        tenant_name=account.tenant_name,
        role=cast(Literal["admin", "operator", "member"], account.role),
        # Not a session: nothing a capability's viewer does here needs a CSRF check.
        via="token",
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadInput("the request ended early")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"a commit is at most {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_package_app(archive: Archive) -> PackageOrigin:
    return PackageOrigin(archive)
