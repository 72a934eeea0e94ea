"""Reading the audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from safekeeper.db import audit

if TYPE_CHECKING:
    from safekeeper.archive import Archive


@dataclass(frozen=True)
class AuditView:
    id: int
    at: datetime
    actor: str
    action: str
    blob: str | None
    location: str | None
    rule: str | None
    reason: str | None
    evidence: Any


def read_audit(
    archive: Archive,
    *,
    blob: str | None = None,
    location: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> list[AuditView]:
    with archive.db.read() as session:
        return [
            AuditView(
                e.id,
                e.at,
                e.actor,
                e.action,
                e.blob_sha256,
                e.location,
                e.rule,
                e.reason,
                json.loads(e.evidence) if e.evidence else None,
            )
            for e in audit.query(
                session,
                blob=blob,
                location=location,
                rule=rule,
                since=since,
                until=until,
                limit=limit,
            )
        ]
