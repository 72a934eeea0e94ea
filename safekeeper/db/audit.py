"""The audit log: one row per physical deletion (and other destructive acts)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from safekeeper.db.models import AuditEntry


def record(session: Session, entries: Sequence[dict[str, Any]]) -> None:
    """Insert audit rows; ``evidence`` values are stored as JSON."""
    if not entries:
        return
    # One Core executemany per set of keys given (gc writes one per batch): the ORM's
    # bulk insert costs more per row than the row's JSON.
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for entry in entries:
        row = {**entry, "evidence": json.dumps(entry.get("evidence"), default=str, sort_keys=True)}
        groups.setdefault(tuple(sorted(row)), []).append(row)
    table = cast(Table, AuditEntry.__table__)
    for rows in groups.values():
        session.execute(insert(table), rows)


def query(
    session: Session,
    *,
    blob: str | None = None,
    location: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> Sequence[AuditEntry]:
    statement = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if blob is not None:
        statement = statement.where(AuditEntry.blob_sha256 == blob)
    if location is not None:
        statement = statement.where(AuditEntry.location == location)
    if rule is not None:
        statement = statement.where(AuditEntry.rule == rule)
    if since is not None:
        statement = statement.where(AuditEntry.at >= since)
    if until is not None:
        statement = statement.where(AuditEntry.at < until)
    return session.scalars(statement).all()
