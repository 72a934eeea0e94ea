"""Launch URLs for embedding, and learners' results.

``POST /api/namespaces/{ns}/packages/{key}/launch`` answers a player URL on the
package origin for one viewer (default: the caller; another user: admins only), with
its expiry: an LMS or web app puts it in its own iframe (its origin must be in
``server.embed_origins``). ``GET …/{key}/attempts`` lists the SCORM results: everyone's
for operators and admins, the caller's own for members.

Registered before ``package_api``, whose upload route takes any ``{key:path}``: a key
ending in ``/launch`` or ``/attempts`` is reachable there only by its other routes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field
from sqlalchemy import select

from safekeeper.api.auth import current_principal
from safekeeper.api.package_redirects import player_url
from safekeeper.api.principal import Principal
from safekeeper.api.refs import ref_spec
from safekeeper.api.schemas import ApiModel, error_responses
from safekeeper.api.state import archive_of
from safekeeper.db import accounts as account_queries
from safekeeper.db.models import User
from safekeeper.errors import Forbidden, NotFound
from safekeeper.packages.capabilities import RefTarget, load_secret
from safekeeper.services.access import tenant_data
from safekeeper.services.packaging import attempts, packages

router = APIRouter(prefix="/api/namespaces", tags=["packages"])

PrincipalDep = Annotated[Principal, Depends(current_principal)]


class LaunchRequest(ApiModel):
    label: str = Field(default=packages.DRAFT, description="reference label")
    viewer: str | None = Field(
        default=None, description="user the launch is for (default: you; others: admins only)"
    )


class LaunchOut(ApiModel):
    url: str = Field(description="the player on the package origin; put it in an iframe")
    expires_at: datetime
    viewer: str


class AttemptOut(ApiModel):
    user: str
    namespace: str
    key: str
    version: str
    completion_status: str | None
    success_status: str | None
    score_raw: float | None
    score_max: float | None
    score_scaled: float | None
    total_seconds: float
    commits: int
    location: str | None
    updated_at: datetime


def _viewer(request: Request, caller: Principal, name: str | None) -> Principal:
    if name is None or name == caller.user_name:
        return caller
    if not caller.is_admin:
        raise Forbidden("only admins launch packages for other users")
    with archive_of(request).db.read() as session:
        user_id = session.scalar(select(User.id).where(User.name == name))
        account = account_queries.active_account(session, user_id) if user_id is not None else None
    if account is None:
        raise NotFound(f"no active user {name!r}")
    return Principal(
        user_id=account.user_id,
        user_name=account.user_name,
        tenant_id=account.tenant_id,
        tenant_name=account.tenant_name,
        role=account.role,  # type: ignore[arg-type]
        via="token",
    )


@router.post(
    "/{namespace}/packages/{key:path}/launch",
    responses=error_responses(400, 401, 403, 404),
)
def launch(
    request: Request,
    principal: PrincipalDep,
    namespace: Annotated[str, Path()],
    key: Annotated[str, Path()],
    body: LaunchRequest,
) -> LaunchOut:
    """A launch URL for the viewer, valid for ``server.capability_ttl``."""
    archive = archive_of(request)
    spec = ref_spec(namespace, key, body.label)
    tenant_data.check_namespace(archive, principal, spec.namespace)
    viewer = _viewer(request, principal, body.viewer)
    # The viewer must be able to see it too (an admin launching for a member).
    tenant_data.check_namespace(archive, viewer, spec.namespace)
    packages.package_info(archive, str(spec))
    url, expires = player_url(
        archive,
        load_secret(archive.config),
        viewer.user_id,
        RefTarget(spec.namespace, spec.key, spec.label),
    )
    return LaunchOut(
        url=url, expires_at=datetime.fromtimestamp(expires, UTC), viewer=viewer.user_name
    )


@router.get(
    "/{namespace}/packages/{key:path}/attempts",
    responses=error_responses(400, 401, 404),
)
def list_attempts(
    request: Request,
    principal: PrincipalDep,
    namespace: Annotated[str, Path()],
    key: Annotated[str, Path()],
) -> list[AttemptOut]:
    """SCORM results at this package key: yours, or everyone's for operators/admins."""
    spec = ref_spec(namespace, key, packages.DRAFT)
    found = attempts.results(archive_of(request), principal, spec.namespace, spec.key)
    return [AttemptOut.model_validate(view) for view in found]
