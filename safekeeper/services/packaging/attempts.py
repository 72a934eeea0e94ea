"""SCORM attempts: one per (viewer, namespace, package key), written by the player's
commits through a capability, read back by the next launch and shown as results.

A commit replaces the attempt's data with what the content holds now (the runtime
sends every element), so a commit that arrives twice stores the same thing; a
finishing commit (LMSFinish / Terminate) also adds the session's time to the total.
Deleting or erasing a user removes their attempts (``db.attempts``, called on every
deletion path through ``db.accounts.detach_user_rows`` and soft deletion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from safekeeper.api.principal import Principal
from safekeeper.db.models import Namespace, PackageAttempt, User
from safekeeper.errors import BadInput, NotFound
from safekeeper.packages import scorm
from safekeeper.services.access.tenancy import visible_namespace

if TYPE_CHECKING:
    from safekeeper.archive import Archive


@dataclass(frozen=True)
class LaunchState:
    """What the player starts from."""

    data: dict[str, str]
    entry: str
    total_seconds: float


@dataclass(frozen=True)
class AttemptView:
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


def _namespace_id(session: Session, namespace: str) -> int | None:
    return session.scalar(select(Namespace.id).where(Namespace.name == namespace))


def launch_state(archive: Archive, user_id: int, namespace: str, key: str) -> LaunchState:
    with archive.db.read() as session:
        row = session.execute(
            select(PackageAttempt.data, PackageAttempt.total_time)
            .join(Namespace, Namespace.id == PackageAttempt.namespace_id)
            .where(
                PackageAttempt.user_id == user_id,
                Namespace.name == namespace,
                PackageAttempt.key == key,
            )
        ).first()
    if row is None:
        return LaunchState({}, "ab-initio", 0.0)
    data: dict[str, str] = json.loads(row.data)
    return LaunchState(data, scorm.entry(data), row.total_time)


def commit(
    archive: Archive,
    user_id: int,
    namespace: str,
    key: str,
    version: Any,
    raw_data: Any,
    *,
    finish: bool,
) -> None:
    """Store the attempt's data (BadInput for a malformed commit: nothing is stored)."""
    if version not in ("scorm12", "scorm2004"):
        raise BadInput("version must be scorm12 or scorm2004")
    data = scorm.checked_data(raw_data)
    found = scorm.summary(version, data)
    now = archive.clock()
    with archive.db.write() as session:
        namespace_id = _namespace_id(session, namespace)
        if namespace_id is None:
            raise NotFound(f"no namespace {namespace!r}")
        attempt = session.scalar(
            select(PackageAttempt).where(
                PackageAttempt.user_id == user_id,
                PackageAttempt.namespace_id == namespace_id,
                PackageAttempt.key == key,
            )
        )
        if attempt is None:
            attempt = PackageAttempt(
                user_id=user_id,
                namespace_id=namespace_id,
                key=key,
                total_time=0.0,
                commits=0,
                created_at=now,
            )
            session.add(attempt)
        attempt.version = version
        attempt.data = json.dumps(data, separators=(",", ":"), sort_keys=True)
        attempt.completion_status = found.completion_status
        attempt.success_status = found.success_status
        attempt.score_raw = found.score_raw
        attempt.score_max = found.score_max
        attempt.score_scaled = found.score_scaled
        attempt.commits += 1
        attempt.updated_at = now
        if finish:
            attempt.total_time += scorm.session_seconds(version, data)


def results(archive: Archive, principal: Principal, namespace: str, key: str) -> list[AttemptView]:
    """The attempts at ``namespace:key``: everyone's for operators and admins, the
    caller's own for members; NotFound for a namespace the caller cannot see."""
    with archive.db.read() as session:
        space = visible_namespace(session, principal, namespace)
        query = (
            select(PackageAttempt, User.name)
            .join(User, User.id == PackageAttempt.user_id)
            .where(PackageAttempt.namespace_id == space.id, PackageAttempt.key == key)
            .order_by(User.name)
        )
        if not principal.is_operator:
            query = query.where(PackageAttempt.user_id == principal.user_id)
        return [_view(attempt, user, namespace) for attempt, user in session.execute(query)]


def _view(attempt: PackageAttempt, user: str, namespace: str) -> AttemptView:
    data: dict[str, str] = json.loads(attempt.data)
    return AttemptView(
        user=user,
        namespace=namespace,
        key=attempt.key,
        version=attempt.version,
        completion_status=attempt.completion_status,
        success_status=attempt.success_status,
        score_raw=attempt.score_raw,
        score_max=attempt.score_max,
        score_scaled=attempt.score_scaled,
        total_seconds=attempt.total_time,
        commits=attempt.commits,
        location=data.get("cmi.core.lesson_location") or data.get("cmi.location"),
        updated_at=attempt.updated_at,
    )
