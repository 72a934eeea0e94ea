"""Packages and bundles of a namespace: zip upload, listing with play URLs, export, import.

(Members are served by the package origin, ``api/package_origin.py``.) Uploads stream
through ``server.max_upload_size``; a package that fails validation answers 400 with the
check's ``code`` and the offending ``member``, and nothing is stored.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from typing import IO, Annotated, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from safekeeper.api.auth import current_principal
from safekeeper.api.principal import Principal
from safekeeper.api.refs import ref_spec
from safekeeper.api.schemas import ApiModel, error_responses, raw_body
from safekeeper.api.state import archive_of
from safekeeper.api.uploads import consume_body, reader
from safekeeper.archive import Archive
from safekeeper.ids import RefSpec, check_name, parse_ref
from safekeeper.services.access import tenant_data
from safekeeper.services.packaging import bundles, packages

router = APIRouter(prefix="/api/namespaces", tags=["packages"])

PrincipalDep = Annotated[Principal, Depends(current_principal)]
NamespacePath = Annotated[str, Path(description="namespace name")]
KeyPath = Annotated[str, Path(description="package key; may contain slashes")]
_CHUNK = 1024 * 1024


class PackageOut(ApiModel):
    namespace: str
    key: str
    label: str
    sha256: str
    size: int
    kind: str = Field(description="scorm12, scorm2004 or html")
    entry: str = Field(description="the launch page: a member path inside the zip")
    title: str | None
    play_url: str = Field(description="where the launch page is served (needs sign-in)")


class UploadedPackageOut(PackageOut):
    member_count: int
    extracted_size: int


class PackageRefOut(PackageOut):
    updated_at: datetime


_Out = TypeVar("_Out", bound=PackageOut)


def play_url(spec: RefSpec, entry: str) -> str:
    return "/p/" + "/".join(quote(part) for part in (spec.namespace, spec.key, spec.label, entry))


def _package_out(
    model: type[_Out], spec: RefSpec, package: packages.PackageOutcome | packages.PackageRefView
) -> _Out:
    """``package`` as ``model``, named by ``spec`` and with its play URL."""
    fields = {**asdict(package), **asdict(spec), "play_url": play_url(spec, package.entry)}
    return model.model_validate(fields)


@router.post(
    "/{namespace}/packages/{key:path}",
    status_code=201,
    response_model=UploadedPackageOut,
    responses=error_responses(400, 401, 403, 404, 409, 413),
    openapi_extra=raw_body("application/zip"),
)
async def upload_package(
    request: Request,
    principal: PrincipalDep,
    namespace: NamespacePath,
    key: KeyPath,
    label: Annotated[str, Query(description="reference label")] = packages.DRAFT,
) -> UploadedPackageOut:
    """Validate the zip in the body and store it under ``namespace:key:label``."""
    archive = archive_of(request)
    spec = ref_spec(namespace, key, label)
    with tenant_data.claimed(archive, principal, spec.namespace):
        outcome = await consume_body(
            request,
            archive.config.server.max_upload_size,
            lambda chunks: tenant_data.on_behalf_of(
                principal, packages.put_package, archive, reader(chunks), spec
            ),
        )
    return _package_out(UploadedPackageOut, spec, outcome)


@router.get(
    "/{namespace}/packages",
    response_model=list[PackageRefOut],
    responses=error_responses(400, 401, 404),
)
def list_packages(
    request: Request, principal: PrincipalDep, namespace: NamespacePath
) -> list[PackageRefOut]:
    """Every reference in the namespace that names a package, with its play URL."""
    archive = archive_of(request)
    tenant_data.check_namespace(archive, principal, check_name("namespace", namespace))
    return [
        _package_out(PackageRefOut, parse_ref(view.ref), view)
        for view in packages.list_packages(archive, namespace)
    ]


def _spool(archive: Archive) -> IO[bytes]:
    """An anonymous temp file in the data directory: gone when closed, even after a crash."""
    temp_dir = archive.config.data_dir / ".tmp"
    temp_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=temp_dir)


def _drain(spool: IO[bytes]) -> Iterator[bytes]:
    with spool:
        while chunk := spool.read(_CHUNK):
            yield chunk


@router.get(
    "/{namespace}/export",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-tar": {}}, "description": "the namespace as a bundle"},
        **error_responses(400, 401, 404),
    },
)
def export_bundle(
    request: Request,
    principal: PrincipalDep,
    namespace: NamespacePath,
    compress: Annotated[bool, Query(description="zstd-compress the tar")] = False,
) -> StreamingResponse:
    """The namespace's references, package metadata and blobs as one tar bundle.

    The bundle is written whole before the answer starts, so a failure is an error
    answer rather than a truncated download.
    """
    archive = archive_of(request)
    tenant_data.check_namespace(archive, principal, check_name("namespace", namespace))
    spool = _spool(archive)
    try:
        bundles.export_namespace(archive, namespace, spool, compress=compress)  # type: ignore[arg-type]
        size = spool.tell()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    suffix = ".tar.zst" if compress else ".tar"
    return StreamingResponse(
        _drain(spool),
        media_type="application/zstd" if compress else "application/x-tar",
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{namespace}{suffix}"',
        },
    )


class ImportOut(ApiModel):
    namespace: str
    blobs_stored: int
    blobs_skipped: int = Field(
        description="blobs the ingest location already held with the right bytes (hashed "
        "to check; admins only: for anyone else every blob counts as stored, so an import "
        "never tells that someone else holds the bytes)"
    )
    bytes: int
    references_created: int
    references_replaced: int
    references_unchanged: int
    packages_created: int


@router.post(
    "/{namespace}/import",
    response_model=ImportOut,
    responses=error_responses(400, 401, 403, 404, 409, 413),
    openapi_extra=raw_body("application/x-tar"),
)
async def import_bundle(
    request: Request, principal: PrincipalDep, namespace: NamespacePath
) -> ImportOut:
    """Import a bundle (tar, or zstd-compressed tar) into this namespace: all or nothing."""
    archive = archive_of(request)
    with tenant_data.claimed(archive, principal, check_name("namespace", namespace)):
        outcome = await consume_body(
            request,
            archive.config.server.max_upload_size,
            lambda chunks: tenant_data.on_behalf_of(
                principal, bundles.import_bundle, archive, reader(chunks), into=namespace
            ),
        )
    return ImportOut.model_validate(tenant_data.import_outcome_for(principal, outcome))
