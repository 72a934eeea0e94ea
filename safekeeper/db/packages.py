"""Package rows: what validation learned about a zip blob, recorded once per blob."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.orm import Session

from safekeeper.db.engine import dialect_insert
from safekeeper.db.models import Package
from safekeeper.packages.validate import PackageInfo


def ensure_packages(session: Session, infos: Mapping[int, PackageInfo], now: datetime) -> None:
    """Record each blob's description unless it has one. A concurrent upload or import of
    the same zip may have recorded it first, which is fine: validation describes the
    same bytes the same way."""
    if not infos:
        return
    rows = [
        {"blob_id": blob_id, "created_at": now, **dataclasses.asdict(info)}
        for blob_id, info in infos.items()
    ]
    session.execute(
        dialect_insert(session, Package).on_conflict_do_nothing(index_elements=["blob_id"]), rows
    )
