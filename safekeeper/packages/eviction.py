"""Evicting extracted trees from the cache location under its watermarks.

Usage is the sum of ``extracted_trees.size`` at the cache location. Above the
location's ``high_watermark``, trees go least recently accessed first until usage is
at or below ``low_watermark`` (``policy.select_under_pressure``, the rule copies use).
Trees are derived data, so no safety rule applies: any tree can be rebuilt from a copy
of its zip. Each eviction, under the tree's file lock: delete the row (commit), rename
the directory away, remove it. A reader that resolved a path just before sees a missing
file and the server rebuilds the tree.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select

from safekeeper.db import audit
from safekeeper.db.models import Blob, ExtractedTree
from safekeeper.packages.cache import ACTOR, CacheLayout, location_id
from safekeeper.policy import Candidate, Rule, select_under_pressure, watermark_bytes

if TYPE_CHECKING:
    from safekeeper.archive import Archive


@dataclass(frozen=True)
class EvictedTree:
    sha256: str
    size: int
    last_access: datetime


def evict(archive: Archive, now: datetime, keep: Collection[str] = ()) -> list[EvictedTree]:
    """Evict trees while the cache is above its high watermark; ``keep``: blob ids
    that must stay (a tree just extracted for a waiting request). No cache location
    or no watermarks: nothing to do."""
    name = archive.config.cache_location
    if name is None:
        return []
    settings = archive.config.locations[name]
    high = watermark_bytes(settings.high_watermark, settings.capacity)
    low = watermark_bytes(settings.low_watermark, settings.capacity)
    if high is None or low is None:
        return []
    layout = CacheLayout.of(archive)
    with archive.db.read() as session:
        where = location_id(session, name)
        used = session.scalar(
            select(func.coalesce(func.sum(ExtractedTree.size), 0)).where(
                ExtractedTree.location_id == where
            )
        )
        if used is None or used <= high:
            return []
        rows = session.execute(
            select(
                ExtractedTree.blob_id, Blob.sha256, ExtractedTree.size, ExtractedTree.last_access
            )
            .join(Blob, Blob.id == ExtractedTree.blob_id)
            .where(ExtractedTree.location_id == where)
        ).all()
    shas = {row.blob_id: row.sha256 for row in rows}
    candidates = [
        Candidate(copy_id=row.blob_id, size=row.size, last_used=row.last_access)
        for row in rows
        if row.sha256 not in keep
    ]
    evicted = []
    for chosen in select_under_pressure(candidates, used, high, low):
        sha256 = shas[chosen.copy_id]
        with layout.file_lock(sha256):
            with archive.db.write() as session:
                gone = session.execute(
                    delete(ExtractedTree).where(
                        ExtractedTree.blob_id == chosen.copy_id,
                        ExtractedTree.location_id == where,
                    )
                )
                if not gone.rowcount:  # type: ignore[attr-defined]
                    continue  # another process evicted it first
                audit.record(
                    session,
                    [
                        {
                            "at": now,
                            "actor": ACTOR,
                            "action": "cache-evict",
                            "blob_sha256": sha256,
                            "location": name,
                            "rule": Rule.DISK_PRESSURE.value,
                            "reason": f"cache above its high watermark of {high} bytes",
                            "evidence": {"size": chosen.size, "last_access": chosen.last_used},
                        }
                    ],
                )
            layout.discard(layout.tree(sha256))
        evicted.append(EvictedTree(sha256, chosen.size, chosen.last_used))
    return evicted
