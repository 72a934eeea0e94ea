"""``/api/namespaces``: the namespaces you can see and their references.

A namespace of another tenant answers 404 exactly like one that does not exist.
Writing a reference into a new namespace creates it for your tenant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from safekeeper.api.auth import current_principal
from safekeeper.api.principal import Principal
from safekeeper.api.schemas import ApiModel, ReferenceOut, error_responses
from safekeeper.api.state import archive_of
from safekeeper.ids import DEFAULT_LABEL, RefSpec, check_key, check_name, parse_blob_id
from safekeeper.services.access import tenant_data
from safekeeper.services.packaging import packages

router = APIRouter(prefix="/api/namespaces", tags=["references"])

PrincipalDep = Annotated[Principal, Depends(current_principal)]
NamespacePath = Annotated[str, Path(description="namespace name")]
KeyPath = Annotated[str, Path(description="reference key; may contain slashes")]
LabelQuery = Annotated[str, Query(description="reference label")]


class NamespaceOut(ApiModel):
    name: str
    tenant: str | None = Field(description="owning tenant; null for CLI-made namespaces")
    references: int
    created_at: datetime


class SetReferenceIn(BaseModel):
    blob: str = Field(description="SHA-256 of a blob you can see", examples=["0" * 64])


def ref_spec(namespace: str, key: str, label: str) -> RefSpec:
    """Validate the parts of a reference named in a URL (400 bad_input if malformed)."""
    return RefSpec(check_name("namespace", namespace), check_key(key), check_name("label", label))


@router.get("", response_model=list[NamespaceOut], responses=error_responses(401))
def list_namespaces(request: Request, principal: PrincipalDep) -> list[NamespaceOut]:
    """The namespaces you can see, with how many references each holds."""
    return [
        NamespaceOut.model_validate(summary)
        for summary in tenant_data.list_namespaces(archive_of(request), principal)
    ]


@router.get(
    "/{namespace}/refs",
    response_model=list[ReferenceOut],
    responses=error_responses(400, 401, 404),
)
def list_references(
    request: Request, principal: PrincipalDep, namespace: NamespacePath
) -> list[ReferenceOut]:
    check_name("namespace", namespace)
    views = tenant_data.list_refs(archive_of(request), principal, namespace)
    return [ReferenceOut.model_validate(view) for view in views]


@router.put(
    "/{namespace}/refs/{key:path}",
    response_model=ReferenceOut,
    responses=error_responses(400, 401, 403, 404, 409),
)
def put_reference(
    request: Request,
    principal: PrincipalDep,
    namespace: NamespacePath,
    key: KeyPath,
    body: SetReferenceIn,
    label: LabelQuery = DEFAULT_LABEL,
) -> ReferenceOut:
    """Point ``namespace:key:label`` at a blob (replacing what it pointed at)."""
    spec = ref_spec(namespace, key, label)
    view = tenant_data.set_ref(archive_of(request), principal, spec, parse_blob_id(body.blob))
    return ReferenceOut.model_validate(view)


@router.delete(
    "/{namespace}/refs/{key:path}",
    status_code=204,
    response_class=Response,
    responses=error_responses(400, 401, 404, 409),
)
def delete_reference(
    request: Request,
    principal: PrincipalDep,
    namespace: NamespacePath,
    key: KeyPath,
    label: LabelQuery = DEFAULT_LABEL,
) -> Response:
    """Drop the reference; a blob left with none becomes garbage after the grace period."""
    tenant_data.remove_ref(archive_of(request), principal, ref_spec(namespace, key, label))
    return Response(status_code=204)


class PublishOut(ApiModel):
    namespace: str
    key: str
    sha256: str = Field(description="the blob now published")
    previous: str | None = Field(description="the blob published before, if another one")


@router.post(
    "/{namespace}/publish/{key:path}",
    response_model=PublishOut,
    responses=error_responses(400, 401, 404, 409),
)
def publish(
    request: Request, principal: PrincipalDep, namespace: NamespacePath, key: KeyPath
) -> PublishOut:
    """Point ``namespace:key:published`` at the blob of ``namespace:key:draft``."""
    archive = archive_of(request)
    spec = ref_spec(namespace, key, packages.PUBLISHED)
    tenant_data.check_namespace(archive, principal, spec.namespace)
    outcome = tenant_data.on_behalf_of(
        principal,
        packages.publish,
        archive,
        spec.namespace,
        spec.key,
        actor=tenant_data.actor_of(principal),
    )
    return PublishOut.model_validate(outcome)
