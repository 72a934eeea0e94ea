"""``/api/blobs``: streaming upload, download (Range, ETag, HEAD) and a blob's status.

A blob is addressed by its full SHA-256 only: prefixes and reference names belong to
the CLI, where a person types them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from safekeeper.api.auth import current_principal
from safekeeper.api.errors import error_response
from safekeeper.api.principal import Principal
from safekeeper.api.ranges import byte_range
from safekeeper.api.schemas import BlobInfoOut, ReferenceOut, UploadOut, error_responses, raw_body
from safekeeper.api.state import archive_of
from safekeeper.api.uploads import consume_body
from safekeeper.errors import SafekeeperError, UnsupportedMediaType
from safekeeper.ids import parse_blob_id, parse_ref
from safekeeper.services.access import tenant_data
from safekeeper.services.copies import inventory

router = APIRouter(prefix="/api/blobs", tags=["blobs"])

PrincipalDep = Annotated[Principal, Depends(current_principal)]
BlobPath = Annotated[str, Path(description="the blob's SHA-256 (64 hex characters)")]


class RangeNotSatisfiable(SafekeeperError):
    code = "range_not_satisfiable"
    status = 416

    def __init__(self, header: str, size: int) -> None:
        super().__init__(f"range {header!r} is outside the blob ({size} bytes)")
        self.size = size


@router.post(
    "",
    status_code=201,
    response_model=UploadOut,
    responses=error_responses(400, 401, 403, 404, 409, 413, 415),
    openapi_extra=raw_body(),
)
async def upload_blob(
    request: Request,
    principal: PrincipalDep,
    ref: Annotated[str | None, Query(description="reference to set: NAMESPACE:KEY[:LABEL]")] = None,
) -> UploadOut:
    """Store the raw request body as a blob (and point ``ref`` at it). The body is the
    blob's bytes: ``Content-Type: application/octet-stream`` (or none); a form or
    multipart envelope is refused (415), never stored as if it were the file."""
    _require_octet_stream(request.headers.get("content-type"))
    archive = archive_of(request)
    spec = parse_ref(ref) if ref is not None else None
    outcome = await consume_body(
        request,
        archive.config.server.max_upload_size,
        lambda chunks: tenant_data.put_blob(archive, principal, chunks, spec),
    )
    reference = None
    if spec is not None:
        view = tenant_data.reference_view(archive, spec)
        reference = ReferenceOut.model_validate(view)
    return UploadOut(sha256=outcome.sha256, size=outcome.size, reference=reference)


def _require_octet_stream(content_type: str | None) -> None:
    media_type = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if media_type != "application/octet-stream":
        raise UnsupportedMediaType(
            f"the body must be the raw bytes, sent as application/octet-stream, not "
            f"{media_type or 'an empty content type'} (with curl: --data-binary @FILE "
            "-H 'Content-Type: application/octet-stream')"
        )


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range asked for as (start, end inclusive); None for the whole blob;
    RangeNotSatisfiable (416) for a well-formed range outside the blob."""
    wanted = byte_range(header, size)
    if wanted == "unsatisfiable":
        raise RangeNotSatisfiable(header or "", size)
    return wanted


def _slice(chunks: Iterator[bytes], start: int, end: int) -> Iterator[bytes]:
    """Bytes ``start..end`` (inclusive) of a chunk stream; closes it when done."""
    position = 0
    try:
        for chunk in chunks:
            chunk_end = position + len(chunk)
            if chunk_end > start:
                yield bytes(chunk[max(0, start - position) : end + 1 - position])
            position = chunk_end
            if position > end:
                break
    finally:
        _close(chunks)


_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "the blob's bytes"},
    206: {"content": {"application/octet-stream": {}}, "description": "the range asked for"},
    304: {"description": "unchanged (If-None-Match matched)"},
    **error_responses(400, 401, 404, 416),
}


@router.get("/{blob}", response_class=StreamingResponse, responses=_DOWNLOAD_RESPONSES)
@router.head(
    "/{blob}",
    operation_id="head_blob",
    response_class=StreamingResponse,
    responses=_DOWNLOAD_RESPONSES,
)
def download_blob(request: Request, principal: PrincipalDep, blob: BlobPath) -> Response:
    """The blob's bytes; ``Range: bytes=a-b`` answers 206 with that slice."""
    sha256 = parse_blob_id(blob)
    archive = archive_of(request)
    etag = f'"{sha256}"'
    size, chunks = tenant_data.open_visible_blob(archive, principal, sha256)
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, immutable"}
    if etag in request.headers.get("if-none-match", ""):
        _close(chunks)
        return Response(status_code=304, headers=headers)
    if_range = request.headers.get("if-range")
    try:
        wanted = _byte_range(request.headers.get("range"), size)
    except RangeNotSatisfiable as exc:
        _close(chunks)
        response = error_response(exc.status, exc.code, str(exc))
        response.headers["Content-Range"] = f"bytes */{exc.size}"
        return response
    if wanted is not None and if_range is not None and if_range != etag:
        wanted = None
    status = 200
    start, end = 0, size - 1
    if wanted is not None:
        start, end = wanted
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD":
        _close(chunks)
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    # A whole body is checked against the blob id as it goes (its last chunk held back
    # until then); a range cannot be, short of reading the whole blob.
    body = _slice(chunks, start, end) if status == 206 else inventory.checked(chunks, sha256)
    return StreamingResponse(
        body, status_code=status, headers=headers, media_type="application/octet-stream"
    )


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


@router.get(
    "/{blob}/info",
    response_model=BlobInfoOut,
    responses=error_responses(400, 401, 404),
)
def blob_info(request: Request, principal: PrincipalDep, blob: BlobPath) -> BlobInfoOut:
    """Where the blob's copies are (state, last verified, last read), what references it
    (in namespaces you can see) and which holds keep it."""
    info = tenant_data.blob_info(archive_of(request), principal, parse_blob_id(blob))
    return BlobInfoOut.model_validate(info)
