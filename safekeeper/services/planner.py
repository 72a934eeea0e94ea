"""The deletion plan: every present copy's verdict, computed set-based in SQL.

The verdict expression below is the policy of ``safekeeper.policy`` written as one SQL
``CASE``: the same rules in the same order. ``decide`` is its test oracle
(``tests/services/test_planner.py`` compares the two on generated states).
Two statements scan the copies: one lists the deletable ones, one counts the kept
ones per location and rule. Disk pressure then picks among each watermarked
location's deletable copies with ``policy.select_under_pressure``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, case, func, literal, select, union
from sqlalchemy.orm import aliased

from safekeeper.config import Config
from safekeeper.db.blobs import find_blob
from safekeeper.db.evidence import gather
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
from safekeeper.policy import (
    Candidate,
    Decision,
    LocationRules,
    Policy,
    Rule,
    decide,
    select_under_pressure,
    watermark_bytes,
)
from safekeeper.units import format_duration

if TYPE_CHECKING:
    from safekeeper.archive import Archive

#: Archive copies are deleted after every other copy of the same blob.
ARCHIVE_LAST = {"archive": 1}


def policy_from_config(config: Config) -> Policy:
    return Policy(
        min_archive_copies=config.policy.min_archive_copies,
        grace_period=config.policy.grace_period,
        verify_max_age=config.policy.verify_max_age,
        locations={
            name: LocationRules(loc.kind, loc.retention, loc.delete_after_copies_at)
            for name, loc in config.locations.items()
        },
    )


@dataclass(frozen=True)
class PlannedDeletion:
    copy_id: int
    blob: str
    blob_id: int
    location: str
    size: int
    rule: str
    reason: str


@dataclass
class LocationPlan:
    location: str
    kind: str
    deletions: list[PlannedDeletion] = field(default_factory=list)
    #: rule → [copies, bytes] kept by that rule
    kept: dict[str, list[int]] = field(default_factory=dict)
    used_bytes: int = 0
    high_watermark: int | None = None
    low_watermark: int | None = None

    @property
    def bytes_freed(self) -> int:
        return sum(d.size for d in self.deletions)


@dataclass
class Plan:
    at: datetime
    locations: list[LocationPlan]

    @property
    def deletions(self) -> list[PlannedDeletion]:
        """Every planned deletion, non-archive locations first (archive copies last)."""
        ordered = sorted(self.locations, key=lambda p: (ARCHIVE_LAST.get(p.kind, 0), p.location))
        return [d for plan in ordered for d in plan.deletions]


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


def make_plan(archive: Archive, location: str | None = None) -> Plan:
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


def _apply_pressure(
    config: Config, plan: LocationPlan, candidates: list[tuple[PlannedDeletion, datetime]]
) -> None:
    """Garbage always goes; other deletable copies go only under disk pressure."""
    settings = config.locations[plan.location]
    high = watermark_bytes(settings.high_watermark, settings.capacity)
    low = watermark_bytes(settings.low_watermark, settings.capacity)
    plan.high_watermark, plan.low_watermark = high, low
    if high is None or low is None:
        plan.deletions = [d for d, _ in candidates]
        return
    garbage = [d for d, _ in candidates if d.rule == Rule.GARBAGE]
    others = {d.copy_id: d for d, _ in candidates if d.rule != Rule.GARBAGE}
    used_after_garbage = plan.used_bytes - sum(d.size for d in garbage)
    chosen = select_under_pressure(
        [Candidate(d.copy_id, d.size, last) for d, last in candidates if d.copy_id in others],
        used_after_garbage,
        high,
        low,
    )
    chosen_ids = {c.copy_id for c in chosen}
    plan.deletions = garbage + [others[c.copy_id] for c in chosen]
    skipped = [d for i, d in others.items() if i not in chosen_ids]
    if skipped:
        plan.kept[Rule.DISK_PRESSURE] = [len(skipped), sum(d.size for d in skipped)]


@dataclass(frozen=True)
class Explanation:
    location: str
    state: str
    decision: Decision


def explain(archive: Archive, blob_text: str) -> list[Explanation]:
    """Each live copy of a blob with the policy's decision on it (and why)."""
    from safekeeper.services.inventory import resolve_blob

    sha256 = resolve_blob(archive, blob_text)
    policy = policy_from_config(archive.config)
    now = archive.clock()
    with archive.db.read() as session:
        blob = find_blob(session, sha256)
        if blob is None:
            raise NotFound(f"no blob {sha256}")
        evidence = gather(session, blob_ids=[blob.id])
    explanations = []
    for facts, ev in sorted(evidence.values(), key=lambda item: item[0].location):
        if facts.location not in policy.locations:
            continue
        decision = decide(ev, policy, now)
        if decision.allowed and decision.rule != Rule.GARBAGE:
            settings = archive.config.locations[facts.location]
            if settings.high_watermark is not None:
                decision = Decision(
                    True,
                    decision.rule,
                    decision.reason + "; goes when the location is "
                    "above its high watermark (least recently used first)",
                )
        explanations.append(Explanation(facts.location, facts.state, decision))
    return explanations
