"""Evicting extracted trees from the cache location: under its watermarks, and when
their zip is gone.

Usage is the sum of ``extracted_trees.size`` at the cache location. Above the
location's ``high_watermark``, trees go least recently accessed first until usage is
at or below ``low_watermark`` (``policy.select_under_pressure``, the rule copies use).
Trees are derived data, so no safety rule applies: any tree can be rebuilt from a copy
of its zip. Each eviction, under the tree's file lock: delete the row (commit), rename
the directory away, remove it. A reader that resolved a path just before sees a missing
file and the server rebuilds the tree.

A tree whose blob has no live copy left (gc deleted the last one: garbage, erasure)
goes too (``drop_orphaned_trees``, run by every gc): it holds the same content, so
"every copy everywhere is gone" must include it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select

from safekeeper.db import audit
from safekeeper.db.models import Blob, Copy, CopyState, ExtractedTree
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
        tree = EvictedTree(shas[chosen.copy_id], chosen.size, chosen.last_used)
        reason = f"cache above its high watermark of {high} bytes"
        if _evict_one(archive, layout, name, where, tree, Rule.DISK_PRESSURE, reason, now):
            evicted.append(tree)
    return evicted


def drop_orphaned_trees(archive: Archive, now: datetime) -> list[EvictedTree]:
    """Remove the trees of blobs with no live copy (present, pending or deleting) left."""
    name = archive.config.cache_location
    if name is None:
        return []
    layout = CacheLayout.of(archive)
    live = (
        select(Copy.id)
        .where(
            Copy.blob_id == ExtractedTree.blob_id,
            Copy.state.in_([CopyState.PRESENT, CopyState.PENDING, CopyState.DELETING]),
        )
        .exists()
    )
    with archive.db.read() as session:
        where = location_id(session, name)
        orphans = [
            EvictedTree(row.sha256, row.size, row.last_access)
            for row in session.execute(
                select(Blob.sha256, ExtractedTree.size, ExtractedTree.last_access)
                .join(Blob, Blob.id == ExtractedTree.blob_id)
                .where(ExtractedTree.location_id == where, ~live)
            )
        ]
    reason = "no copy of its zip is left"
    return [
        tree
        for tree in orphans
        if _evict_one(archive, layout, name, where, tree, Rule.GARBAGE, reason, now)
    ]


def _evict_one(
    archive: Archive,
    layout: CacheLayout,
    location: str,
    location_db_id: int,
    tree: EvictedTree,
    rule: Rule,
    reason: str,
    now: datetime,
) -> bool:
    """Delete one tree's row with an audit entry, then its directory, under its file
    lock; False when another process evicted it first."""
    with layout.file_lock(tree.sha256):
        with archive.db.write() as session:
            blob_id = select(Blob.id).where(Blob.sha256 == tree.sha256).scalar_subquery()
            gone = session.execute(
                delete(ExtractedTree).where(
                    ExtractedTree.blob_id == blob_id,
                    ExtractedTree.location_id == location_db_id,
                )
            )
            if not gone.rowcount:  # type: ignore[attr-defined]
                return False
            audit.record(
                session,
                [
                    {
                        "at": now,
                        "actor": ACTOR,
                        "action": "cache-evict",
                        "blob_sha256": tree.sha256,
                        "location": location,
                        "rule": rule.value,
                        "reason": reason,
                        "evidence": {"size": tree.size, "last_access": tree.last_access},
                    }
                ],
            )
        layout.discard(layout.tree(tree.sha256))
    return True
