"""The previous planner, kept as a second oracle for the one in ``services.deletion.planner``.

Until issue 17 the plan was computed in SQL: the policy written as one ``CASE`` over
copies joined to per-blob aggregates (correct, but 9-13 s at a million copies). The
streaming planner that replaced it must produce the very same ``Plan`` — deletions in
the same order with the same fields, the same kept counts and bytes, the same usage —
and ``tests/services/test_planner.py`` compares the two on generated states.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, select, union
from sqlalchemy.orm import aliased

from safekeeper.archive import Archive
from safekeeper.config import Config
from safekeeper.db.models import (
    Blob,
    Copy,
    CopyState,
    Hold,
    Location,
    Reference,
    StagingJob,
    StagingJobBlob,
    Task,
    TaskState,
    UTCDateTime,
)
from safekeeper.errors import NotFound
from safekeeper.policy import Rule
from safekeeper.services.deletion.planner import (
    LocationPlan,
    Plan,
    PlannedDeletion,
    _apply_pressure,
)
from safekeeper.units import format_duration

Join = tuple[Any, ColumnElement[bool]]


def _verdict(
    config: Config, ids: dict[str, int], now: datetime
) -> tuple[ColumnElement[str], list[Join]]:
    """The policy as a SQL expression over ``copies`` (joined to blobs and locations):
    ``allow:<rule>`` or ``keep:<rule>``, and the LEFT JOINs it needs.

    Per-blob facts (holds, verified archive copies, present copies…) are aggregated
    once per statement in subqueries joined by blob id, not looked up per copy, so
    the database can hash-join them at millions of copies.
    """
    policy = config.policy
    other = aliased(Copy)
    joins: list[Join] = []

    def join(subquery: Any, on: ColumnElement[bool]) -> None:
        joins.append((subquery, on))

    held = union(
        select(Hold.blob_id.label("blob_id")).where(
            Hold.released_at.is_(None), Hold.blob_id.is_not(None)
        ),
        select(Reference.blob_id.label("blob_id"))
        .join(Hold, Hold.namespace_id == Reference.namespace_id)
        .where(Hold.released_at.is_(None)),
    ).subquery("held")
    join(held, held.c.blob_id == Copy.blob_id)
    sources = (
        select(Task.source_copy_id.label("copy_id"))
        .where(Task.kind == "transfer", Task.state.in_([TaskState.QUEUED, TaskState.RUNNING]))
        .distinct()
        .subquery("transfer_sources")
    )
    join(sources, sources.c.copy_id == Copy.id)
    needs = (
        select(StagingJobBlob.blob_id, StagingJob.location_id)
        .join(StagingJob, StagingJob.id == StagingJobBlob.job_id)
        .where(StagingJob.ended_at.is_(None))
        .distinct()
        .subquery("job_needs")
    )
    join(needs, and_(needs.c.blob_id == Copy.blob_id, needs.c.location_id == Copy.location_id))

    verified = [other.state == CopyState.PRESENT, other.verified_at.is_not(None)]
    if policy.verify_max_age is not None:
        verified.append(other.verified_at >= now - policy.verify_max_age)

    def count_at(name: str, location_ids: list[int], distinct: bool) -> ColumnElement[int]:
        counted = func.count(func.distinct(other.location_id)) if distinct else func.count()
        subquery = (
            select(other.blob_id, counted.label("n"))
            .where(other.location_id.in_(location_ids), *verified)
            .group_by(other.blob_id)
            .subquery(name)
        )
        join(subquery, subquery.c.blob_id == Copy.blob_id)
        return func.coalesce(subquery.c.n, 0)

    archive_ids = [ids[n] for n, loc in config.locations.items() if loc.kind == "archive"]
    verified_archives = count_at("verified_archives", archive_ids, distinct=False)
    enough_elsewhere: list[tuple[ColumnElement[bool], ColumnElement[bool]]] = []
    for number, (name, loc) in enumerate(config.locations.items()):
        if loc.delete_after_copies_at:
            targets = [ids[t] for t in loc.delete_after_copies_at]
            at_targets = count_at(f"verified_at_{number}", targets, distinct=True)
            enough_elsewhere.append((Copy.location_id == ids[name], at_targets == len(targets)))
    enough = (
        case(*enough_elsewhere, else_=verified_archives >= policy.min_archive_copies)
        if enough_elsewhere
        else verified_archives >= policy.min_archive_copies
    )
    present = (
        select(other.blob_id, func.count().label("n"))
        .where(other.state == CopyState.PRESENT)
        .group_by(other.blob_id)
        .subquery("present_copies")
    )
    join(present, present.c.blob_id == Copy.blob_id)
    # Typed literals: an untyped datetime would bypass UTCDateTime and compare as text.
    retention_cutoffs = [
        (Copy.location_id == ids[name], literal(now - loc.retention, UTCDateTime()))
        for name, loc in config.locations.items()
        if loc.retention is not None
    ]
    young = (
        Copy.created_at > case(*retention_cutoffs, else_=None)
        if retention_cutoffs
        else literal(False)
    )
    garbage = and_(
        Blob.unreferenced_since.is_not(None),
        Blob.unreferenced_since <= now - policy.grace_period,
    )
    verdict = case(
        (held.c.blob_id.is_not(None), literal("keep:" + Rule.HOLD)),
        (sources.c.copy_id.is_not(None), literal("keep:" + Rule.IN_USE)),
        (
            and_(Location.kind == "processing", needs.c.blob_id.is_not(None)),
            literal("keep:" + Rule.IN_USE),
        ),
        (young, literal("keep:" + Rule.RETENTION)),
        (garbage, literal("allow:" + Rule.GARBAGE)),
        (Location.kind == "archive", literal("keep:" + Rule.ARCHIVE)),
        (~enough, literal("keep:" + Rule.ARCHIVED_ELSEWHERE)),
        # the copy itself is present, so another present copy means a count of 2+
        (func.coalesce(present.c.n, 0) < 2, literal("keep:" + Rule.LAST_COPY)),
        else_=literal("allow:" + Rule.ARCHIVED_ELSEWHERE),
    )
    return verdict, joins


def make_sql_plan(archive: Archive, location: str | None = None) -> Plan:
    config = archive.config
    now = archive.clock()
    with archive.db.read() as session:
        ids = dict(session.execute(select(Location.name, Location.id)).all())
        # A cache holds extracted packages, never copies: it has nothing to plan.
        names = (
            [location]
            if location is not None
            else [n for n, loc in config.locations.items() if loc.kind != "cache"]
        )
        for name in names:
            if name not in config.locations:
                raise NotFound(f"no location named {name!r}")
        verdict_expression, joins = _verdict(config, ids, now)
        verdict = verdict_expression.label("verdict")
        scope: list[Any] = [
            Copy.state == CopyState.PRESENT,
            Copy.location_id.in_([ids[n] for n in names]),
        ]
        base = (
            select()
            .select_from(Copy)
            .join(Blob, Copy.blob_id == Blob.id)
            .join(Location, Copy.location_id == Location.id)
        )
        for subquery, onclause in joins:
            base = base.outerjoin(subquery, onclause)
        deletable = session.execute(
            base.add_columns(
                Copy.id,
                Blob.sha256,
                Blob.id,
                Location.name,
                Blob.size,
                func.coalesce(Copy.last_access, Copy.created_at),
                verdict,
            )
            .where(*scope, verdict.like("allow:%"))
            .order_by(Location.name, Copy.id)
        ).all()
        kept = session.execute(
            base.add_columns(Location.name, verdict, func.count(), func.sum(Blob.size))
            .where(*scope, verdict.like("keep:%"))
            .group_by(Location.name, verdict)
        ).all()
        used = dict(
            session.execute(
                select(Location.name, func.sum(Blob.size))
                .join(Copy, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Copy.state.in_([CopyState.PRESENT, CopyState.DELETING]))
                .group_by(Location.name)
            ).all()
        )
    plans = {
        name: LocationPlan(name, config.locations[name].kind, used_bytes=int(used.get(name) or 0))
        for name in names
    }
    for name, rule, count, size in kept:
        plans[name].kept[rule.removeprefix("keep:")] = [int(count), int(size or 0)]
    candidates: dict[str, list[tuple[PlannedDeletion, datetime]]] = defaultdict(list)
    for copy_id, sha256, blob_id, name, size, last_used, rule in deletable:
        rule = rule.removeprefix("allow:")
        reason = (
            f"unreferenced for {format_duration(config.policy.grace_period)} or more"
            if rule == Rule.GARBAGE
            else "enough verified copies elsewhere"
        )
        deletion = PlannedDeletion(copy_id, sha256, blob_id, name, int(size), rule, reason)
        candidates[name].append((deletion, last_used))
    for name, plan in plans.items():
        _apply_pressure(config, plan, candidates.get(name, []))
    return Plan(now, [plans[n] for n in sorted(plans)])
