"""The safety policy: may this copy be deleted? Pure functions over plain data.

Nothing here touches a database or a store. Services gather the evidence, call
``decide``, and act; the set-based planner encodes the same rules in SQL and is
tested against ``decide`` as its oracle.

Rules, in the order they are applied (the first that keeps a copy is its reason):

1. ``not-present``  only a ``present`` copy can be deleted.
2. ``hold``         a hold on the blob, or on a namespace referencing it, keeps every copy.
3. ``in-use``       the source of an in-flight transfer, or a copy at a processing
                    location needed by an active staging job, is kept.
4. ``retention``    a copy younger than its location's retention is kept.
5. ``garbage``      a blob unreferenced for at least the grace period loses every
                    copy, archive ones included (the executor deletes archive copies last).
6. ``archive``      otherwise an archive copy is kept: archives only lose garbage.
7. ``archived-elsewhere``  a copy elsewhere goes only when enough *verified* copies
                    exist: ``min_archive_copies`` archive copies, or one at each of the
                    location's ``delete_after_copies_at``. Verified means ``present``,
                    with ``verified_at`` set and no older than ``verify_max_age``, and not
                    found missing or changed when re-confirmed in its store.
8. ``last-copy``    a floor under every configuration: the last present copy of a blob
                    that is not garbage is never deleted.

Two modes. Planning (``Evidence.reconfirmed`` False) judges the database's rows: a
copy not re-confirmed (``confirmed`` None) counts. gc's re-check judges physical
evidence (``reconfirmed`` True): only copies re-confirmed in their stores in this run
(``confirmed`` True) count, as verified copies and for the floor, and any other copy
found gone or changed (``confirmed`` False) keeps the copy until ``verify`` has
looked (rule ``archived-elsewhere``). The planner encodes planning mode in SQL.

Disk pressure is a selection over the copies these rules allow, not a per-copy
rule: see ``select_under_pressure``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from safekeeper.units import format_duration


class Rule(enum.StrEnum):
    NOT_PRESENT = "not-present"
    HOLD = "hold"
    IN_USE = "in-use"
    RETENTION = "retention"
    GARBAGE = "garbage"
    ARCHIVE = "archive"
    ARCHIVED_ELSEWHERE = "archived-elsewhere"
    LAST_COPY = "last-copy"
    DISK_PRESSURE = "disk-pressure"
    #: Not a rule: the audit mark of a deletion a dead gc had started and the next one
    #: found finished.
    RECOVERED = "recovered"


@dataclass(frozen=True)
class LocationRules:
    kind: str
    retention: timedelta | None = None
    delete_after_copies_at: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    min_archive_copies: int
    grace_period: timedelta
    locations: Mapping[str, LocationRules]
    verify_max_age: timedelta | None = None


@dataclass(frozen=True)
class OtherCopy:
    """Another copy of the same blob, as evidence."""

    location: str
    kind: str
    state: str
    verified_at: datetime | None
    #: Re-confirmed in its store in this run: True (there, unchanged or re-hashed
    #: right), False (found gone or with other bytes), None (not checked, or the
    #: store could not answer).
    confirmed: bool | None = None


@dataclass(frozen=True)
class Evidence:
    """Everything the rules look at for one copy."""

    location: str
    state: str
    created_at: datetime
    unreferenced_since: datetime | None
    held: bool = False
    transfer_source: bool = False
    needed_by_job: bool = False
    others: tuple[OtherCopy, ...] = ()
    #: The others' ``confirmed`` come from re-confirming them in their stores in this
    #: run (gc's re-check): only copies confirmed True count (module doc).
    reconfirmed: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: Rule
    reason: str


def _keep(rule: Rule, reason: str) -> Decision:
    return Decision(False, rule, reason)


def is_garbage(unreferenced_since: datetime | None, policy: Policy, now: datetime) -> bool:
    return unreferenced_since is not None and now - unreferenced_since >= policy.grace_period


def counts(copy: OtherCopy, reconfirmed: bool) -> bool:
    """Whether a present copy counts as physically there: in planning mode unless it
    was found damaged; after a re-confirmation only if confirmed."""
    if copy.state != "present":
        return False
    return copy.confirmed is True if reconfirmed else copy.confirmed is not False


def is_verified(copy: OtherCopy, policy: Policy, now: datetime, reconfirmed: bool = False) -> bool:
    if not counts(copy, reconfirmed) or copy.verified_at is None:
        return False
    max_age = policy.verify_max_age
    return max_age is None or now - copy.verified_at <= max_age


def decide(evidence: Evidence, policy: Policy, now: datetime) -> Decision:
    """May this copy be deleted now? The first rule that keeps it says why not."""
    location = policy.locations[evidence.location]
    if evidence.state != "present":
        return _keep(Rule.NOT_PRESENT, f"copy is {evidence.state}")
    if evidence.held:
        return _keep(Rule.HOLD, "the blob is on hold")
    if evidence.transfer_source:
        return _keep(Rule.IN_USE, "source of an in-flight transfer")
    if evidence.needed_by_job:
        return _keep(Rule.IN_USE, "needed by an active staging job")
    if location.retention is not None and now - evidence.created_at < location.retention:
        return _keep(
            Rule.RETENTION, f"younger than the retention of {format_duration(location.retention)}"
        )
    if is_garbage(evidence.unreferenced_since, policy, now):
        return Decision(
            True,
            Rule.GARBAGE,
            f"unreferenced for {format_duration(policy.grace_period)} or more",
        )
    if location.kind == "archive":
        return _keep(Rule.ARCHIVE, "archive copies are deleted only as garbage")
    physical = evidence.reconfirmed
    verified = [c for c in evidence.others if is_verified(c, policy, now, physical)]
    if location.delete_after_copies_at:
        have = {c.location for c in verified}
        lacking = [name for name in location.delete_after_copies_at if name not in have]
        if lacking:
            return _keep(Rule.ARCHIVED_ELSEWHERE, f"no verified copy yet at {', '.join(lacking)}")
        reason = f"verified copies at {', '.join(location.delete_after_copies_at)}"
    else:
        archived = sum(1 for c in verified if c.kind == "archive")
        needed = policy.min_archive_copies
        if archived < needed:
            return _keep(Rule.ARCHIVED_ELSEWHERE, _lacking_archive(evidence, archived, needed))
        reason = f"verified archive copies: {archived} (at least {needed} needed)"
    damaged = [c.location for c in evidence.others if c.confirmed is False]
    if damaged:
        return _keep(
            Rule.ARCHIVED_ELSEWHERE,
            f"the copy at {', '.join(damaged)} was found gone or changed: verify first",
        )
    if not any(counts(c, physical) for c in evidence.others):
        if physical:
            return _keep(Rule.LAST_COPY, "no other copy re-confirmed in its store")
        return _keep(Rule.LAST_COPY, "the last present copy of a live blob")
    return Decision(True, Rule.ARCHIVED_ELSEWHERE, reason)


def _lacking_archive(evidence: Evidence, verified: int, needed: int) -> str:
    """Why the archive floor is not met, plainly: no archive copy at all, or copies
    not (re)verified yet."""
    archive_copies = [c for c in evidence.others if c.kind == "archive" and c.state == "present"]
    if not archive_copies:
        return (
            "no archive copy yet (run `safekeeper replicate`)"
            if needed == 1
            else f"no archive copy yet ({needed} needed; run `safekeeper replicate`)"
        )
    return (
        f"{verified} of {needed} archive copies verified "
        f"({len(archive_copies)} present; run `safekeeper verify`)"
    )


@dataclass(frozen=True)
class Candidate:
    """A copy the rules allow to go, at a location with watermarks."""

    copy_id: int
    size: int
    #: Least recently used first; never-accessed copies count from their creation.
    last_used: datetime


def select_under_pressure(
    candidates: Sequence[Candidate], used: int | None, high: int, low: int
) -> list[Candidate]:
    """Which candidates to delete: none unless usage is above ``high``; then least
    recently used first until usage is at or below ``low``. Unknown usage (None) is no
    pressure: never "delete everything"."""
    if used is None or used <= high:
        return []
    chosen: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.last_used, c.copy_id)):
        if used <= low:
            break
        chosen.append(candidate)
        used -= candidate.size
    return chosen


def watermark_bytes(value: int | float | None, capacity: int | None) -> int | None:
    """A watermark in bytes: given as bytes, or as a fraction of the capacity."""
    if value is None:
        return None
    if isinstance(value, float):
        return None if capacity is None else int(value * capacity)
    return value
