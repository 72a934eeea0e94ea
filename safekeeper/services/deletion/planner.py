"""The deletion plan: every present copy's verdict, from one ordered scan of the copies.

One statement (``db.evidence.scan_copies``) streams every present (and deleting) copy
ordered by blob, with the time comparisons the rules need already made in SQL (verified
recently enough, younger than its location's retention, garbage); ``_judge`` then
applies the rules of ``safekeeper.policy`` to each blob's copies as plain tuples: the
same rules in the same order, planning mode. ``decide`` is its test oracle, and so is
the previous SQL planner (``tests/services/test_planner.py`` compares them on
generated states). Holds, in-flight transfer sources and staging jobs' needs are read
once as sets. Disk pressure then picks among each watermarked location's deletable
copies with ``policy.select_under_pressure``.

Why not one SQL ``CASE`` over per-blob aggregates joined to the copies (the previous
planner, issue 17): at a million copies those aggregates cost several scans and joins
of the copies table; one ordered scan and a pass over plain tuples costs about a third.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from safekeeper.config import Config
from safekeeper.db.blobs import find_blob
from safekeeper.db.evidence import (
    GARBAGE,
    PRESENT,
    VERIFIED,
    YOUNG,
    PlanFacts,
    ScanCutoffs,
    ScannedCopy,
    gather,
    last_used_converter,
    plan_facts,
    scan_copies,
)
from safekeeper.db.models import Location
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True)
class _Place:
    """What the rules need to know about a location, by its id."""

    #: Its name if its copies are being planned, else None (its copies are only evidence).
    planned: str | None
    archive: bool = False
    processing: bool = False
    #: The ids of its ``delete_after_copies_at`` locations; None: the archive floor rules.
    targets: frozenset[int] | None = None


#: A deletable copy before pressure: copy id, sha256, blob id, size, rule, last used.
_Deletable = tuple[int, str, int, int, str, Any]


def _cutoffs(
    config: Config, ids: dict[str, int], now: datetime, names: Sequence[str]
) -> ScanCutoffs:
    """The policy's times as the scan compares them."""
    policy = config.policy
    return ScanCutoffs(
        verified_since=None if policy.verify_max_age is None else now - policy.verify_max_age,
        created_after={
            ids[name]: now - loc.retention
            for name, loc in config.locations.items()
            if loc.retention is not None and name in ids
        },
        unreferenced_before=now - policy.grace_period,
        last_used_at=[
            ids[n] for n in names if n in ids and config.locations[n].high_watermark is not None
        ],
    )


def _judge(
    rows: Iterable[ScannedCopy],
    places: dict[int, _Place],
    facts: PlanFacts,
    min_archive_copies: int,
    kept: dict[tuple[str, str], list[int]],
    used: dict[str, int],
    deletable: dict[str, list[_Deletable]],
) -> None:
    """The rules of ``policy.decide`` (planning mode) over each blob's copies.

    Fills ``kept`` ((location, rule) → [copies, bytes]), ``used`` (bytes of present
    and deleting copies per planned location) and ``deletable`` (per location).
    """
    unknown = _Place(None)
    held, sources, needs = facts.held, facts.transfer_sources, facts.job_needs
    for blob_id, group in groupby(rows, key=itemgetter(0)):
        copies = list(group)
        present = [c for c in copies if c[3] & PRESENT]
        is_held = blob_id in held
        archived: int | None = None
        verified_places: set[int] | None = None
        for _, copy_id, location_id, flags, size, sha256, last_used in copies:
            place = places.get(location_id, unknown)
            name = place.planned
            if name is None:
                continue
            used[name] += size
            if not flags & PRESENT:
                continue
            if is_held:
                rule = Rule.HOLD
            elif copy_id in sources or (place.processing and (blob_id, location_id) in needs):
                rule = Rule.IN_USE
            elif flags & YOUNG:
                rule = Rule.RETENTION
            elif flags & GARBAGE:
                deletable[name].append((copy_id, sha256, blob_id, size, Rule.GARBAGE, last_used))
                continue
            elif place.archive:
                rule = Rule.ARCHIVE
            else:
                if place.targets is not None:
                    if verified_places is None:
                        verified_places = {c[2] for c in present if c[3] & VERIFIED}
                    enough = place.targets <= verified_places
                else:
                    if archived is None:
                        archived = sum(
                            1
                            for c in present
                            if c[3] & VERIFIED and places.get(c[2], unknown).archive
                        )
                    enough = archived >= min_archive_copies
                if not enough:
                    rule = Rule.ARCHIVED_ELSEWHERE
                elif len(present) < 2:  # the copy itself is one of them
                    rule = Rule.LAST_COPY
                else:
                    deletable[name].append(
                        (copy_id, sha256, blob_id, size, Rule.ARCHIVED_ELSEWHERE, last_used)
                    )
                    continue
            counter = kept[(name, rule)]
            counter[0] += 1
            counter[1] += size


def _places(config: Config, ids: dict[str, int], names: Sequence[str]) -> dict[int, _Place]:
    places: dict[int, _Place] = {}
    for name, loc in config.locations.items():
        if name not in ids:
            continue
        targets = (
            frozenset(ids[t] for t in loc.delete_after_copies_at if t in ids)
            if loc.delete_after_copies_at
            else None
        )
        if targets is not None and len(targets) < len(loc.delete_after_copies_at):
            targets = frozenset([-1])  # a target without a row can never hold a copy
        places[ids[name]] = _Place(
            name if name in names else None,
            archive=loc.kind == "archive",
            processing=loc.kind == "processing",
            targets=targets,
        )
    return places


def make_plan(archive: Archive, location: str | None = None) -> Plan:
    config = archive.config
    now = archive.clock()
    # A cache holds extracted packages, never copies: it has nothing to plan.
    names = (
        [location]
        if location is not None
        else [n for n, loc in config.locations.items() if loc.kind != "cache"]
    )
    for name in names:
        if name not in config.locations:
            raise NotFound(f"no location named {name!r}")
    kept: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    used: dict[str, int] = defaultdict(int)
    deletable: dict[str, list[_Deletable]] = defaultdict(list)
    with archive.db.read() as session:
        ids = dict(session.execute(select(Location.name, Location.id)).all())
        places = _places(config, ids, names)
        facts = plan_facts(session)
        rows = scan_copies(session, _cutoffs(config, ids, now, names))
        _judge(rows, places, facts, config.policy.min_archive_copies, kept, used, deletable)
        to_datetime = last_used_converter(session)
    plans = {
        name: LocationPlan(name, config.locations[name].kind, used_bytes=used.get(name, 0))
        for name in names
    }
    for (name, rule), (count, size) in sorted(kept.items()):
        plans[name].kept[str(rule)] = [count, size]
    garbage_reason = f"unreferenced for {format_duration(config.policy.grace_period)} or more"
    elsewhere_reason = "enough verified copies elsewhere"
    for name, plan in plans.items():
        found = deletable.get(name, [])
        found.sort()  # by copy id
        candidates = [
            (
                PlannedDeletion(
                    copy_id,
                    sha256,
                    blob_id,
                    name,
                    size,
                    str(rule),
                    garbage_reason if rule == Rule.GARBAGE else elsewhere_reason,
                ),
                to_datetime(last_used),
            )
            for copy_id, sha256, blob_id, size, rule, last_used in found
        ]
        _apply_pressure(config, plan, candidates)
    return Plan(now, [plans[n] for n in sorted(plans)])


def _apply_pressure(
    config: Config, plan: LocationPlan, candidates: list[tuple[PlannedDeletion, datetime | None]]
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
        [
            Candidate(d.copy_id, d.size, _when(last))
            for d, last in candidates
            if d.copy_id in others
        ],
        used_after_garbage,
        high,
        low,
    )
    chosen_ids = {c.copy_id for c in chosen}
    plan.deletions = garbage + [others[c.copy_id] for c in chosen]
    skipped = [d for i, d in others.items() if i not in chosen_ids]
    if skipped:
        plan.kept[Rule.DISK_PRESSURE] = [len(skipped), sum(d.size for d in skipped)]


def _when(last_used: datetime | None) -> datetime:
    if last_used is None:  # the scan reads it at every watermarked location
        raise RuntimeError("a copy at a watermarked location was scanned without its last use")
    return last_used


@dataclass(frozen=True)
class Explanation:
    location: str
    state: str
    decision: Decision


def explain(archive: Archive, blob_text: str) -> list[Explanation]:
    """Each live copy of a blob with the policy's decision on it (and why)."""
    from safekeeper.services.copies.inventory import resolve_blob

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
