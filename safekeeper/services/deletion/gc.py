"""Garbage collection: delete exactly the copies the plan allows, provably safely.

Per batch of planned copies at one location:

1. **claim** — ``present → deleting`` under a fresh random token, in one conditional
   UPDATE, committed. A claimed copy no longer counts as a copy for anyone
   (invariant 4).
2. **re-check** — gather the evidence again *after* the claim committed (references,
   holds, jobs, transfers, other copies) and decide with the pure policy; a copy
   allowed to go because it is copied elsewhere is decided again on physical evidence:
   every other present copy re-confirmed in its store against change (fingerprint,
   re-hash of the last one; ``services.deletion.reconfirm``), only those confirmed counting. A
   copy found gone or changed is marked ``missing`` or ``corrupt`` and the delete
   refused (invariants 2 and 12). Long re-checks send heartbeats.
3. **release** what the re-check no longer allows (``deleting → present``).
4. **fence** — the last database step before the store: stamp ``fenced_at`` on the
   copies still claimed under our token. Claims taken over meanwhile (a gc that
   recovered them after ``gc_claim_timeout``) or taken back (a hold, a staging job)
   match nothing and are not deleted (invariant 12). The re-confirmation's findings,
   the release and the fence share one transaction.
5. **delete** the fenced copies' objects in one bulk call (a file store unlinks in
   threads), after reading the store's identity marker afresh (invariant 10).
6. **record** ``deleting → deleted`` and one audit row for each copy whose UPDATE
   matched our token, in one transaction (invariant 8).

A gc that dies leaves copies ``deleting``; the next gc takes those claims over once
they are older than ``gc_claim_timeout`` (or dated further in the future than that)
and looks in the store: gone → recorded deleted (and audited); still there and never
fenced → released; still there and fenced → decided again from the start. Archive
copies are processed after every other location's. The timeline is in docs/design.md
("Fenced claims"). The queued form (one task per batch, run by the location's site)
is ``services.deletion.gc_queue``.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from safekeeper.db import audit, claims
from safekeeper.db.evidence import CopyFacts, gather, gather_with_copies
from safekeeper.db.models import Blob, Copy, CopyState, Location
from safekeeper.errors import (
    SafekeeperError,
    StoreError,
    StoreIdentityError,
)
from safekeeper.packages.eviction import drop_orphaned_trees
from safekeeper.policy import Decision, Evidence, Rule, decide
from safekeeper.services.deletion import reconfirm
from safekeeper.services.deletion.planner import make_plan, policy_from_config

if TYPE_CHECKING:
    from safekeeper.archive import Archive


def default_actor() -> str:
    return f"gc:{getpass.getuser()}@{socket.gethostname()}"


@dataclass
class GcReport:
    planned: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    #: (blob, location, rule, reason) of copies the re-check kept after all
    kept_on_recheck: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: (blob, location, error) of copies whose physical delete failed
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    recovered: int = 0
    #: Copies this gc had claimed but no longer owned at its fence (taken over by a
    #: gc that found the claim stale, or taken back by a hold or a staging job).
    claims_lost: int = 0
    #: Extracted package trees removed because no copy of their zip is left.
    trees_dropped: int = 0
    #: location → why its store was refused (invariant 10): nothing deleted there.
    refused: dict[str, str] = field(default_factory=dict)


# -- phase 1: claim ---------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """Copies claimed under one token: only its holder may delete or record them."""

    token: str
    copy_ids: list[int]

    def __bool__(self) -> bool:
        return bool(self.copy_ids)

    def subset(self, copy_ids: Iterable[int]) -> Claim:
        return Claim(self.token, list(copy_ids))


def claim(archive: Archive, copy_ids: Sequence[int]) -> Claim:
    """``present → deleting`` for those still present, under a fresh token."""
    token = claims.new_token()
    if not copy_ids:
        return Claim(token, [])
    with archive.db.write() as session:
        now = archive.clock()
        return Claim(token, claims.claim(session, copy_ids, token, now))


class Heartbeat:
    """Refreshes a claim's time every quarter of ``gc_claim_timeout`` (wall time)."""

    def __init__(self, archive: Archive, held: Claim) -> None:
        self.archive = archive
        self.claim = held
        self.every = archive.config.policy.gc_claim_timeout.total_seconds() / 4
        self.last = time.monotonic()

    def __call__(self) -> None:
        if time.monotonic() - self.last < self.every:
            return
        with self.archive.db.write() as session:
            now = self.archive.clock()
            claims.heartbeat(session, self.claim.copy_ids, self.claim.token, now)
        self.last = time.monotonic()


# -- phase 2: re-check ------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    facts: CopyFacts
    evidence: Evidence
    decision: Decision


def recheck(
    archive: Archive, copy_ids: Sequence[int], heartbeat: Callable[[], None] | None = None
) -> list[Verdict]:
    """Decide again on claimed copies: first on the database's rows; then, for a copy
    those allow to go because it is copied elsewhere, on physical evidence — every
    other present copy of its blob re-confirmed in its store in this run
    (``services.deletion.reconfirm``), the policy counting only those confirmed. ``heartbeat``
    is called around the store round-trips, which can take long. What the
    re-confirmation found (copies gone or changed, fingerprints moved) is recorded."""
    verdicts, results = _recheck(archive, copy_ids, heartbeat)
    if reconfirm.needs_record(results):
        with archive.db.write() as session:
            reconfirm.record_in(session, results, archive.clock())
    return verdicts


def _recheck(
    archive: Archive, copy_ids: Sequence[int], heartbeat: Callable[[], None] | None = None
) -> tuple[list[Verdict], list[reconfirm.Result]]:
    """``recheck``, leaving the re-confirmation's results to the caller to record."""
    policy = policy_from_config(archive.config)
    now = archive.clock()
    deadline = time.monotonic() + archive.config.policy.gc_batch_deadline.total_seconds()
    with archive.db.read() as session:
        evidence, copies = gather_with_copies(session, copy_ids=copy_ids)
    verdicts: list[Verdict] = []
    physical: list[tuple[CopyFacts, Evidence]] = []
    for facts, claimed_ev in evidence.values():
        # We hold the claim on this copy: judge it as the present copy it was. Every
        # other claimed copy (ours or another gc's) does not count as present.
        ev = replace(claimed_ev, state=CopyState.PRESENT.value)
        decision = decide(ev, policy, now)
        if decision.allowed and decision.rule == Rule.ARCHIVED_ELSEWHERE:
            physical.append((facts, ev))
        else:
            verdicts.append(Verdict(facts, ev, decision))
    checks = [check for facts, _ in physical for check in _checks(facts, copies)]
    if heartbeat is not None:
        heartbeat()
    results = reconfirm.run_checks(archive, checks, deadline)
    confirmed = {(r.check.blob_id, r.check.location): r.outcome.confirmed for r in results}
    if heartbeat is not None:
        heartbeat()
    for facts, ev in physical:
        others = tuple(
            replace(o, confirmed=confirmed.get((facts.blob_id, o.location))) for o in ev.others
        )
        ev = replace(ev, others=others, reconfirmed=True)
        verdicts.append(Verdict(facts, ev, decide(ev, policy, now)))
    return verdicts, results


def _checks(facts: CopyFacts, copies: dict[int, list[CopyFacts]]) -> list[reconfirm.Check]:
    """What to re-confirm before deleting this copy: every other present copy."""
    present = [
        o
        for o in copies[facts.blob_id]
        if o.copy_id != facts.copy_id and o.state == CopyState.PRESENT
    ]
    blob = (facts.blob_id, facts.sha256, facts.size)
    last = len(present) == 1
    return [reconfirm.Check(o.copy_id, *blob, o.location, o.fingerprint, last) for o in present]


# -- phases 3-5: release, delete, record ------------------------------------------


def release(
    archive: Archive, held: Claim, copy_ids: Iterable[int], error: str | None = None
) -> set[int]:
    """``deleting → present`` for the copies still claimed under ``held``'s token; with
    ``error``, count a failed attempt (→ ``failed`` past the retry limit)."""
    ids = list(copy_ids)
    if not ids:
        return set()
    with archive.db.write() as session:
        now = archive.clock()
        return claims.release(
            session,
            ids,
            held.token,
            now,
            error=error,
            max_retries=archive.config.policy.max_retries,
        )


def fence(archive: Archive, held: Claim, copy_ids: Iterable[int]) -> set[int]:
    """The copies still claimed under ``held``'s token, now marked as being deleted:
    the only ones whose objects may be deleted. Right before the store delete."""
    ids = list(copy_ids)
    if not ids:
        return set()
    with archive.db.write() as session:
        now = archive.clock()
        return claims.fence(session, ids, held.token, now)


def delete_objects(archive: Archive, location: str, verdicts: Sequence[Verdict]) -> set[int]:
    """Delete the objects; return the copy ids whose object is now gone."""
    store = archive.store(location, fresh=True)  # still the recorded store (invariant 10)
    keys = {
        v.facts.copy_id: archive.key_for(location, v.facts.sha256, v.facts.blob_id)
        for v in verdicts
    }
    try:
        store.delete(keys.values())
        gone = set(keys)
    except SafekeeperError:
        # Bulk deletes can fail part-way: whatever is gone is gone.
        gone = {copy_id for copy_id, key in keys.items() if not store.exists(key)}
    # A delete finding nothing succeeds, and exists() says False, on a disk unmounted
    # since the check above: "gone" is evidence only if the marker is still there.
    # Refused: the claims stay fenced, and recovery looks again (invariant 10).
    archive.store(location, fresh=True)
    return gone


def record_deleted(
    archive: Archive, held: Claim, verdicts: Sequence[Verdict], actor: str, action: str = "delete"
) -> list[Verdict]:
    """``deleting → deleted`` plus one audit row, for the copies still claimed under
    ``held``'s token (a claim taken over is recorded by whoever took it); returns
    those recorded."""
    if not verdicts:
        return []
    with archive.db.write() as session:
        return _record_deleted_in(session, archive.clock(), held, verdicts, actor, action)


def _record_deleted_in(
    session: Session,
    now: datetime,
    held: Claim,
    verdicts: Sequence[Verdict],
    actor: str,
    action: str,
) -> list[Verdict]:
    done = claims.mark_deleted(session, [v.facts.copy_id for v in verdicts], held.token, now)
    recorded = [v for v in verdicts if v.facts.copy_id in done]
    audit.record(session, [_audit_row(v, actor, action, now) for v in recorded])
    return recorded


def _audit_row(verdict: Verdict, actor: str, action: str, now: datetime) -> dict[str, Any]:
    ev = verdict.evidence
    return {
        "at": now,
        "actor": actor,
        "action": action,
        "blob_sha256": verdict.facts.sha256,
        "location": verdict.facts.location,
        "rule": verdict.decision.rule.value,
        "reason": verdict.decision.reason,
        "evidence": {
            "copy_id": verdict.facts.copy_id,
            "size": verdict.facts.size,
            "unreferenced_since": ev.unreferenced_since,
            "held": ev.held,
            "other_copies": [
                {
                    "location": o.location,
                    "state": o.state,
                    "verified_at": o.verified_at,
                    "confirmed_in_store": o.confirmed,
                }
                for o in ev.others
            ],
        },
    }


def check_stores(archive: Archive, location: str) -> None:
    """Invariant 10, before a batch claims anything: a store that is not the one the
    catalog records is neither deleted from (StoreIdentityError here) nor counted as
    evidence (a failed check makes every re-confirmation there fail until the marker
    is right again)."""
    archive.store(location, fresh=True)
    for other in archive.config.locations:
        if other != location:
            with contextlib.suppress(StoreError):
                archive.store(other, fresh=True)


def execute_batch(
    archive: Archive, location: str, copy_ids: Sequence[int], actor: str, report: GcReport
) -> None:
    check_stores(archive, location)
    process_claimed(archive, location, claim(archive, copy_ids), actor, report)


@dataclass(frozen=True)
class Fenced:
    """A batch past its fence: the copies whose objects may now be deleted."""

    location: str
    held: Claim
    verdicts: list[Verdict]


def process_claimed(
    archive: Archive, location: str, held: Claim, actor: str, report: GcReport
) -> None:
    """Phases 2-6 for copies this process has claimed."""
    verdicts, results = _recheck(archive, held.copy_ids, Heartbeat(archive, held))
    with archive.db.write() as session:
        batch = _settle_in(session, archive, location, held, verdicts, results, report)
    if not batch.verdicts:
        return
    gone = delete_objects(archive, location, batch.verdicts)
    with archive.db.write() as session:
        _finish_in(session, archive, batch, gone, actor, report)


def _settle_in(
    session: Session,
    archive: Archive,
    location: str,
    held: Claim,
    verdicts: Sequence[Verdict],
    results: Sequence[reconfirm.Result],
    report: GcReport,
) -> Fenced:
    """Phases 3-4 in the caller's transaction: record what the re-confirmation found,
    release what the re-check keeps, and fence the rest — the last database step
    before the store delete."""
    now = archive.clock()
    reconfirm.record_in(session, results, now)
    kept = [v for v in verdicts if not v.decision.allowed]
    allowed = [v for v in verdicts if v.decision.allowed]
    kept_ids = [v.facts.copy_id for v in kept]
    released = claims.release(session, kept_ids, held.token, now) if kept_ids else set()
    # A claim we can no longer release was taken over while we were away (a stopped or
    # slow gc): count it, like a claim lost at the fence.
    report.claims_lost += len(kept_ids) - len(released)
    report.kept_on_recheck.extend(
        (v.facts.sha256, location, v.decision.rule.value, v.decision.reason) for v in kept
    )
    allowed_ids = [v.facts.copy_id for v in allowed]
    owned = claims.fence(session, allowed_ids, held.token, now) if allowed_ids else set()
    report.claims_lost += len(allowed) - len(owned)
    return Fenced(location, held, [v for v in allowed if v.facts.copy_id in owned])


def _finish_in(
    session: Session,
    archive: Archive,
    batch: Fenced,
    gone: set[int],
    actor: str,
    report: GcReport,
) -> None:
    """Phase 6 in the caller's transaction: record (and audit) the copies whose objects
    are gone; give the others back, counting a failed attempt."""
    now = archive.clock()
    verdicts = [v for v in batch.verdicts if v.facts.copy_id in gone]
    deleted = _record_deleted_in(session, now, batch.held, verdicts, actor, "delete")
    failed = [v for v in batch.verdicts if v.facts.copy_id not in gone]
    if failed:
        claims.release(
            session,
            [v.facts.copy_id for v in failed],
            batch.held.token,
            now,
            error="store delete failed",
            max_retries=archive.config.policy.max_retries,
        )
    report.failed.extend((v.facts.sha256, batch.location, "store delete failed") for v in failed)
    report.deleted += len(deleted)
    report.bytes_freed += sum(v.facts.size for v in deleted)


def recover_stale_claims(
    archive: Archive, actor: str, report: GcReport, location: str | None = None
) -> None:
    """Take over the claims of a gc that died (or stalled past ``gc_claim_timeout``),
    at one location when given, then finish or undo its work.

    The take-over is a conditional UPDATE that re-checks staleness and changes the
    token, so it never races a live claimant: one whose heartbeat landed first keeps its
    claim; one that lost it finds its fence and record matching nothing."""
    timeout = archive.config.policy.gc_claim_timeout
    token = claims.new_token()
    with archive.db.write() as session:
        now = archive.clock()
        stale = claims.stale_claims(session, now, timeout, location)
        taken = claims.take_over(session, stale, token, now, timeout) if stale else {}
    if not taken:
        return
    ours = Claim(token, sorted(taken))
    with archive.db.read() as session:
        rows = session.execute(
            select(Copy.id, Location.name, Blob.sha256, Blob.id)
            .join(Location, Copy.location_id == Location.id)
            .join(Blob, Copy.blob_id == Blob.id)
            .where(Copy.id.in_(ours.copy_ids))
        ).all()
        evidence = gather(session, copy_ids=ours.copy_ids)
    gone: list[int] = []
    still_there: list[int] = []
    decide_again: dict[str, list[int]] = {}
    for copy_id, location, sha256, blob_id in rows:
        if location not in archive.config.locations:
            continue  # stays claimed; a later gc with that location configured recovers it
        try:
            exists = archive.store(location).exists(archive.key_for(location, sha256, blob_id))
            if not exists:
                # Not found is evidence only under a fresh identity check: the cached
                # one may be IDENTITY_TTL old, and an unmounted disk shows nothing.
                archive.store(location, fresh=True)
        except StoreIdentityError:
            continue  # not the recorded store: its answer proves nothing; left claimed
        if not exists:
            gone.append(copy_id)
        elif taken[copy_id]:
            # Its claimant passed the fence: it may still delete the object. Releasing
            # would leave a present copy it may remove; decide again instead.
            decide_again.setdefault(location, []).append(copy_id)
        else:
            still_there.append(copy_id)  # never fenced, so never deleted by it
    release(archive, ours, still_there)
    recovered = [
        Verdict(facts, ev, Decision(True, Rule.RECOVERED, "object gone after an interrupted gc"))
        for facts, ev in (evidence[i] for i in gone)
    ]
    record_deleted(archive, ours, recovered, actor, action="delete-recovered")
    for location, ids in decide_again.items():
        process_claimed(archive, location, ours.subset(ids), actor, report)
    # Claims left in place (store refused or not configured) are not recovered yet.
    report.recovered = len(gone) + len(still_there) + sum(map(len, decide_again.values()))


def plan_batches(archive: Archive, location: str | None) -> tuple[int, list[tuple[str, list[int]]]]:
    """The plan cut into per-location batches, archive locations last."""
    deletions = make_plan(archive, location).deletions
    size = archive.config.policy.gc_batch_size
    by_location: dict[str, list[int]] = {}
    for deletion in deletions:  # already ordered: archive locations last
        by_location.setdefault(deletion.location, []).append(deletion.copy_id)
    batches = [
        (name, ids[start : start + size])
        for name, ids in by_location.items()
        for start in range(0, len(ids), size)
    ]
    return len(deletions), batches


def run_gc(
    archive: Archive,
    *,
    location: str | None = None,
    actor: str | None = None,
    on_batch: Callable[[int], None] | None = None,
    max_batches: int | None = None,
) -> GcReport:
    """Plan, then claim, re-check, delete and record in batches, in this process
    (the first ``max_batches`` batches only, when given; the next run plans again)."""
    actor = actor or default_actor()
    report = GcReport()
    recover_stale_claims(archive, actor, report)
    report.planned, batches = plan_batches(archive, location)
    for name, batch in batches[:max_batches]:
        if name in report.refused:
            continue
        try:
            execute_batch(archive, name, batch, actor, report)
        except StoreIdentityError as exc:
            report.refused[name] = str(exc)
        if on_batch is not None:
            on_batch(len(batch))
    # Extracted package trees are not copies, but hold the same content: they go with
    # the last copy of their zip.
    report.trees_dropped = len(drop_orphaned_trees(archive, archive.clock()))
    return report
