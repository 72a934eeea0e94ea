"""Namespaces and packages: list, upload (with progress), publish, play, export, import.

Every route that names a namespace checks it against the principal's tenant first
(``services.access.tenancy``): another tenant's namespace answers exactly like a missing one.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from safekeeper.api.auth import from_this_site
from safekeeper.api.errors import status_of
from safekeeper.api.package_redirects import player_url
from safekeeper.api.principal import Principal
from safekeeper.api.state import archive_of
from safekeeper.api.uploads import check_spooled_size, consume_body, read_form
from safekeeper.dashboard.auth import check_form_token, checked_form, checked_header, signed_in
from safekeeper.dashboard.web import PageRoute, render, see_other
from safekeeper.db.refs import set_by
from safekeeper.errors import (
    BadInput,
    Forbidden,
    NamespaceReserved,
    NotFound,
    PackageRejected,
    SafekeeperError,
)
from safekeeper.ids import RefSpec, check_key, check_name
from safekeeper.packages.capabilities import RefTarget, load_secret
from safekeeper.services.access.tenancy import visible_namespace
from safekeeper.services.access.tenant_data import (
    claimed,
    import_outcome_for,
    list_namespaces,
    list_refs,
)
from safekeeper.services.packaging import attempts, bundles, packages

router = APIRouter(route_class=PageRoute, include_in_schema=False)

SignedIn = Annotated[Principal, Depends(signed_in)]
CheckedForm = Annotated[None, Depends(checked_form)]


@router.get("/namespaces")
def namespaces_page(request: Request, principal: SignedIn) -> Response:
    return render(
        request,
        "namespaces.html",
        {"namespaces": list_namespaces(archive_of(request), principal)},
    )


@router.get("/namespaces/go")
def open_namespace(_: SignedIn, name: str = "") -> Response:
    return see_other(f"/namespaces/{check_name('namespace', name.strip())}")


def _visible(request: Request, principal: Principal, namespace: str) -> None:
    with archive_of(request).db.read() as session:
        visible_namespace(session, principal, namespace)


@router.get("/namespaces/{namespace}")
def namespace_page(
    request: Request, namespace: str, principal: SignedIn, done: str = ""
) -> Response:
    """A namespace the principal cannot see shows as a new, empty one: the same page
    whether it exists elsewhere or not, so nothing leaks; uploading into it fails."""
    archive = archive_of(request)
    check_name("namespace", namespace)
    try:
        references = list_refs(archive, principal, namespace)
    except NotFound:
        references = []
    package_refs = packages.list_packages(archive, namespace) if references else []
    package_keys = {ref.ref for ref in package_refs}
    by_key: dict[str, dict[str, packages.PackageRefView]] = {}
    for ref in package_refs:
        spec = packages.package_ref(ref.ref)
        by_key.setdefault(spec.key, {})[spec.label] = ref
    return render(
        request,
        "namespace.html",
        {
            "namespace": namespace,
            "packages": by_key,
            "other_references": [r for r in references if str(r.spec) not in package_keys],
            "done": done,
            "max_upload": archive.config.server.max_upload_size,
        },
    )


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (the request body)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _rejection(error: SafekeeperError) -> JSONResponse:
    body: dict[str, object] = {"code": error.code, "message": str(error)}
    if isinstance(error, PackageRejected) and error.member is not None:
        body["member"] = error.member
    if isinstance(error, NamespaceReserved):
        body["allowed_prefix"] = error.allowed_prefix
    return JSONResponse(body, status_code=status_of(error))


@router.post("/namespaces/{namespace}/upload")
async def upload_package(
    request: Request,
    namespace: str,
    principal: SignedIn,
    _csrf: Annotated[None, Depends(checked_header)],
    key: str = "",
    label: str = packages.DRAFT,
) -> Response:
    """The raw zip as the body (the page's progress bar posts it); answers JSON, with
    the rejected member when validation fails."""
    archive = archive_of(request)
    try:
        ref = RefSpec(check_name("namespace", namespace), check_key(key.strip()), label)
        check_name("label", label)

        def store(chunks: Iterator[bytes]) -> packages.PackageOutcome:
            # Checked (and a new namespace made the tenant's) before a byte is read;
            # gone again if the upload fails.
            with (
                claimed(archive, principal, namespace),
                io.BufferedReader(_ChunkReader(chunks)) as body,
                set_by(principal.user_id),
            ):
                return packages.put_package(archive, body, ref)

        outcome = await consume_body(request, archive.config.server.max_upload_size, store)
    except SafekeeperError as exc:
        return _rejection(exc)
    return JSONResponse(
        {
            "sha256": outcome.sha256,
            "ref": str(outcome.ref),
            "kind": outcome.kind,
            "entry": outcome.entry,
            "members": outcome.member_count,
            "next": f"/namespaces/{namespace}?done=uploaded+{ref.key}",
        }
    )


@router.post("/namespaces/{namespace}/publish")
def publish_page(
    request: Request, namespace: str, principal: SignedIn, _: CheckedForm, key: str = ""
) -> Response:
    _visible(request, principal, namespace)
    with set_by(principal.user_id):
        packages.publish(
            archive_of(request), namespace, key, actor=f"dashboard:{principal.user_name}"
        )
    return see_other(f"/namespaces/{namespace}", done=f"published {key}")


@router.get("/namespaces/{namespace}/export")
def export_page(request: Request, namespace: str, principal: SignedIn) -> Response:
    """The bundle is written to a private temp file first: an export that fails part
    way answers an error page instead of a truncated download."""
    _visible(request, principal, namespace)
    archive = archive_of(request)
    temp_dir = archive.config.data_dir / ".tmp"
    temp_dir.mkdir(parents=True, exist_ok=True)
    # Closed by the response's iterator once sent, or below when the export fails.
    spool = tempfile.TemporaryFile(dir=temp_dir)  # noqa: SIM115
    try:
        bundles.export_namespace(archive, namespace, spool)
        size = spool.tell()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise

    def chunks() -> Iterator[bytes]:
        with spool:
            while chunk := spool.read(1024 * 1024):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="{namespace}.tar"',
            "Content-Length": str(size),
            "Cache-Control": "no-store",
        },
    )


@router.post("/namespaces/{namespace}/import")
async def import_page(request: Request, namespace: str, principal: SignedIn) -> Response:
    """The bundle comes as a multipart form. Nothing of the body is read before the
    session (the ``SignedIn`` dependency reads only the cookie) and the page's origin
    are checked, and it is read under the upload limit; the form's CSRF token is
    checked once parsed, before anything is stored."""
    archive = archive_of(request)
    if not from_this_site(request):
        raise Forbidden("the form did not come from this site; reload and retry")
    form = await read_form(request, archive.config.server.max_upload_size)
    try:
        check_form_token(request, form.get("csrf_token"))
        bundle = form.get("bundle")
        if not isinstance(bundle, StarletteUploadFile) or not bundle.filename:
            raise BadInput("choose a bundle file to import")
        check_spooled_size(bundle.file, archive.config.server.max_upload_size)

        def store() -> bundles.ImportOutcome:
            with claimed(archive, principal, namespace), set_by(principal.user_id):
                outcome = bundles.import_bundle(archive, bundle.file, into=namespace)
            return import_outcome_for(principal, outcome)

        outcome = await run_in_threadpool(store)
    finally:
        await form.close()
    return see_other(
        f"/namespaces/{namespace}",
        done=f"imported {outcome.blobs_stored} new blobs and "
        f"{outcome.references_created + outcome.references_replaced} references",
    )


@router.get("/play/{namespace}/{rest:path}")
def play_page(request: Request, namespace: str, rest: str, principal: SignedIn) -> Response:
    """The package's launch page in a frame: ``/play/NAMESPACE/KEY/LABEL``."""
    key, _, label = rest.rpartition("/")
    if not key or not label:
        raise BadInput("play URLs are /play/NAMESPACE/KEY/LABEL")
    _visible(request, principal, namespace)
    spec = RefSpec(namespace, check_key(key), check_name("label", label))
    archive = archive_of(request)
    package = packages.package_info(archive, str(spec))
    # The package plays on its own origin, by a capability for this viewer: its script
    # never runs with the dashboard's authority (api.package_origin).
    src, _ = player_url(
        archive,
        load_secret(archive.config),
        principal.user_id,
        RefTarget(spec.namespace, spec.key, spec.label),
    )
    results = attempts.results(archive, principal, namespace, spec.key)
    return render(
        request,
        "play.html",
        {"spec": spec, "package": package, "src": src, "results": results},
    )
