"""Response bodies shared by the data-side routes, as pydantic models.

Each model is the precise OpenAPI schema of an answer; routes build them from the
services' dataclasses with ``model_validate(..., from_attributes=True)`` or by hand.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ApiModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(ApiModel):
    """Every 4xx/5xx answer: clients branch on ``code``, people read ``message``."""

    code: str
    message: str
    member: str | None = Field(default=None, description="the zip member a package check failed on")
    allowed_prefix: str | None = Field(
        default=None,
        description="namespace_reserved: what the new namespaces a non-admin may create "
        "begin with (their tenant's name and '.')",
    )


class ReferenceOut(ApiModel):
    namespace: str
    key: str
    label: str
    blob: str = Field(description="SHA-256 of the blob the reference points at")
    size: int
    updated_at: datetime


class UploadOut(ApiModel):
    sha256: str
    size: int
    reference: ReferenceOut | None = None


class CopyOut(ApiModel):
    location: str
    location_kind: str
    state: str
    verified_at: datetime | None
    last_access: datetime | None


class HoldOut(ApiModel):
    id: int
    kind: str = Field(description="'blob' or 'namespace'")
    target: str
    reason: str
    created_at: datetime


class BlobInfoOut(ApiModel):
    sha256: str
    size: int
    created_at: datetime
    unreferenced_since: datetime | None
    copies: list[CopyOut]
    references: list[ReferenceOut]
    holds: list[HoldOut]


#: Documents every error status a route may answer with the shared error body.
def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    descriptions = {
        400: "bad input",
        401: "not signed in",
        403: "role does not allow this (namespace_reserved: a new namespace name only an "
        "admin may create)",
        404: "not found (or another tenant's)",
        409: "conflict with the current state",
        413: "body larger than server.max_upload_size",
        415: "body not application/octet-stream",
        416: "range not satisfiable",
        422: "invalid request (a body or parameter of the wrong shape)",
    }
    return {
        status: {"model": ErrorBody, "description": descriptions.get(status, "error")}
        for status in statuses
    }


def raw_body(media_type: str = "application/octet-stream") -> dict[str, object]:
    """``openapi_extra`` for a route reading its raw body (not a JSON model)."""
    schema = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}
