"""Garbage collection: delete exactly the copies the plan allows, provably safely.

Per batch of planned copies at one location:

1. **claim** — ``present → deleting`` in one conditional UPDATE, committed. A claimed
   copy no longer counts as a copy for anyone (invariant 4).
2. **re-check** — gather the evidence again *after* the claim committed and decide
   with the pure policy; a copy allowed to go because it is copied elsewhere is
   decided again on physical evidence: every other present copy re-confirmed in its
   store against change (fingerprint, re-hash of the last one; ``services.reconfirm``),
   only those confirmed counting. A copy found gone or changed is marked ``missing``
   or ``corrupt`` and the delete refused (invariants 2 and 12).
3. **release** what the re-check no longer allows (``deleting → present``).
4. **delete** the rest from the store in one bulk call.
5. **record** ``deleting → deleted`` and one audit row per copy, in one transaction
   (invariant 8).

A gc that dies leaves copies ``deleting``; the next gc, once they are older than
``gc_claim_timeout``, looks in the store: gone → recorded deleted (and audited), still
there → released. Archive copies are processed after every other location's.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from safekeeper.db import audit
from safekeeper.db.copies import present_fingerprints
from safekeeper.db.evidence import CopyFacts, gather
from safekeeper.db.models import Blob, Copy, CopyState, Location
from safekeeper.db.tasks import enqueue
from safekeeper.engine.types import Completion, TaskInfo
from safekeeper.errors import SafekeeperError, TransientStoreError
from safekeeper.packages.eviction import drop_orphaned_trees
from safekeeper.policy import Decision, Evidence, Rule, decide
from safekeeper.services.planner import make_plan, policy_from_config
from safekeeper.services.reconfirm import Check, reconfirm

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
    #: Extracted package trees removed because no copy of their zip is left.
    trees_dropped: int = 0


# -- phase 1: claim ---------------------------------------------------------------


def claim(archive: Archive, copy_ids: Sequence[int]) -> list[int]:
    """``present → deleting`` for those still present; returns the ids this call won."""
    if not copy_ids:
        return []
    with archive.db.write() as session:
        return list(
            session.scalars(
                update(Copy)
                .where(Copy.id.in_(copy_ids), Copy.state == CopyState.PRESENT)
                .values(state=CopyState.DELETING, updated_at=archive.clock())
                .returning(Copy.id)
            )
        )


# -- phase 2: re-check ------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    facts: CopyFacts
    evidence: Evidence
    decision: Decision


def recheck(archive: Archive, copy_ids: Sequence[int]) -> list[Verdict]:
    """Decide again on claimed copies: first on the database's rows; then, for a copy
    those allow to go because it is copied elsewhere, on physical evidence — every
    other present copy of its blob re-confirmed in its store in this run
    (``services.reconfirm``), the policy counting only those confirmed."""
    policy = policy_from_config(archive.config)
    now = archive.clock()
    deadline = time.monotonic() + archive.config.policy.gc_batch_deadline.total_seconds()
    with archive.db.read() as session:
        evidence = gather(session, copy_ids=copy_ids)
        recorded = present_fingerprints(session, [facts.blob_id for facts, _ in evidence.values()])
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
    checks = [check for facts, ev in physical for check in _checks(facts, ev, recorded)]
    confirmed = {
        (r.check.blob_id, r.check.location): r.outcome.confirmed
        for r in reconfirm(archive, checks, deadline)
    }
    for facts, ev in physical:
        others = tuple(
            replace(o, confirmed=confirmed.get((facts.blob_id, o.location))) for o in ev.others
        )
        ev = replace(ev, others=others, reconfirmed=True)
        verdicts.append(Verdict(facts, ev, decide(ev, policy, now)))
    return verdicts


def _checks(
    facts: CopyFacts, ev: Evidence, recorded: dict[tuple[int, str], tuple[int, str | None]]
) -> list[Check]:
    """What to re-confirm before deleting this copy: every other present copy."""
    present = [o for o in ev.others if o.state == CopyState.PRESENT]
    checks = []
    for other in present:
        found = recorded.get((facts.blob_id, other.location))
        if found is None:
            continue  # no longer present: it cannot count, and needs no check
        copy_id, fingerprint = found
        last = len(present) == 1
        blob = (facts.blob_id, facts.sha256, facts.size)
        checks.append(Check(copy_id, *blob, other.location, fingerprint, last))
    return checks


# -- phases 3-5: release, delete, record ------------------------------------------


def release(archive: Archive, copy_ids: Iterable[int], error: str | None = None) -> None:
    """``deleting → present``; with ``error``, count a failed attempt (→ ``failed``
    past the retry limit)."""
    ids = list(copy_ids)
    if not ids:
        return
    with archive.db.write() as session:
        now = archive.clock()
        values: dict[str, Any] = {"state": CopyState.PRESENT, "updated_at": now}
        if error is not None:
            values.update(retries=Copy.retries + 1, last_error=error)
        session.execute(
            update(Copy).where(Copy.id.in_(ids), Copy.state == CopyState.DELETING).values(**values)
        )
        if error is not None:
            session.execute(
                update(Copy)
                .where(
                    Copy.id.in_(ids),
                    Copy.state == CopyState.PRESENT,
                    Copy.retries >= archive.config.policy.max_retries,
                )
                .values(state=CopyState.FAILED)
            )


def delete_objects(archive: Archive, location: str, verdicts: Sequence[Verdict]) -> set[int]:
    """Delete the objects; return the copy ids whose object is now gone."""
    store = archive.store(location)
    keys = {
        v.facts.copy_id: archive.key_for(location, v.facts.sha256, v.facts.blob_id)
        for v in verdicts
    }
    try:
        store.delete(keys.values())
        return set(keys)
    except SafekeeperError:
        # Bulk deletes can fail part-way: whatever is gone is gone.
        return {copy_id for copy_id, key in keys.items() if not store.exists(key)}


def record_deleted(
    archive: Archive, verdicts: Sequence[Verdict], actor: str, action: str = "delete"
) -> None:
    if not verdicts:
        return
    with archive.db.write() as session:
        now = archive.clock()
        session.execute(
            update(Copy)
            .where(
                Copy.id.in_([v.facts.copy_id for v in verdicts]),
                Copy.state == CopyState.DELETING,
            )
            .values(state=CopyState.DELETED, updated_at=now)
        )
        audit.record(session, [_audit_row(v, actor, action, now) for v in verdicts])


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


def execute_batch(
    archive: Archive, location: str, copy_ids: Sequence[int], actor: str, report: GcReport
) -> None:
    process_claimed(archive, location, claim(archive, copy_ids), actor, report)


def process_claimed(
    archive: Archive, location: str, claimed: Sequence[int], actor: str, report: GcReport
) -> None:
    """Phases 2-5 for copies this process has claimed."""
    verdicts = recheck(archive, claimed)
    kept = [v for v in verdicts if not v.decision.allowed]
    allowed = [v for v in verdicts if v.decision.allowed]
    release(archive, [v.facts.copy_id for v in kept])
    report.kept_on_recheck.extend(
        (v.facts.sha256, location, v.decision.rule.value, v.decision.reason) for v in kept
    )
    gone = delete_objects(archive, location, allowed) if allowed else set()
    deleted = [v for v in allowed if v.facts.copy_id in gone]
    failed = [v for v in allowed if v.facts.copy_id not in gone]
    record_deleted(archive, deleted, actor)
    release(archive, [v.facts.copy_id for v in failed], error="store delete failed")
    report.failed.extend((v.facts.sha256, location, "store delete failed") for v in failed)
    report.deleted += len(deleted)
    report.bytes_freed += sum(v.facts.size for v in deleted)


def recover_stale_claims(archive: Archive, actor: str, report: GcReport) -> None:
    """Finish or undo the work of a gc that died with copies claimed."""
    cutoff = archive.clock() - archive.config.policy.gc_claim_timeout
    with archive.db.read() as session:
        stale = session.execute(
            select(Copy.id, Location.name, Blob.sha256, Blob.id)
            .join(Location, Copy.location_id == Location.id)
            .join(Blob, Copy.blob_id == Blob.id)
            .where(Copy.state == CopyState.DELETING, Copy.updated_at < cutoff)
        ).all()
        evidence = gather(session, copy_ids=[row[0] for row in stale]) if stale else {}
    gone: list[int] = []
    still_there: list[int] = []
    for copy_id, location, sha256, blob_id in stale:
        if location not in archive.config.locations:
            continue
        exists = archive.store(location).exists(archive.key_for(location, sha256, blob_id))
        (still_there if exists else gone).append(copy_id)
    release(archive, still_there)
    recovered = [
        Verdict(facts, ev, Decision(True, Rule.RECOVERED, "object gone after an interrupted gc"))
        for facts, ev in (evidence[i] for i in gone)
    ]
    record_deleted(archive, recovered, actor, action="delete-recovered")
    report.recovered = len(gone) + len(still_there)


def _batches(archive: Archive, location: str | None) -> tuple[int, list[tuple[str, list[int]]]]:
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
    report.planned, batches = _batches(archive, location)
    for name, batch in batches[:max_batches]:
        execute_batch(archive, name, batch, actor, report)
        if on_batch is not None:
            on_batch(len(batch))
    # Extracted package trees are not copies, but hold the same content: they go with
    # the last copy of their zip.
    report.trees_dropped = len(drop_orphaned_trees(archive, archive.clock()))
    return report


def queue_gc(
    archive: Archive, *, archives: bool, location: str | None = None, actor: str | None = None
) -> tuple[int, list[int]]:
    """Plan, and queue each batch as a ``gc`` task for the site of its location (the
    distributed mode: only that site's workers can reach its store).

    Archive copies go last: call once with ``archives=False``, wait for those tasks,
    then once with ``archives=True``. Returns (planned copies, task ids)."""
    actor = actor or default_actor()
    recover_stale_claims(archive, actor, GcReport())
    planned, batches = _batches(archive, location)
    batches = [
        (name, batch)
        for name, batch in batches
        if (archive.config.locations[name].kind == "archive") == archives
    ]
    task_ids: list[int] = []
    with archive.db.write() as session:
        now = archive.clock()
        for name, batch in batches:
            task = enqueue(
                session,
                kind="gc",
                site=archive.config.locations[name].site,
                copy_id=batch[0],
                source_copy_id=None,
                max_attempts=archive.config.policy.max_retries,
                now=now,
            )
            task.payload = json.dumps({"location": name, "copy_ids": batch, "actor": actor})
            task_ids.append(task.id)
    return planned, task_ids


class GcBatch:
    """The ``gc`` task: phases 1-5 for one planned batch. Idempotent: a repeated run
    finds the copies already claimed or deleted and claims nothing."""

    def execute(self, archive: Archive, task: TaskInfo) -> Completion:
        arguments = json.loads(task.payload or "{}")
        report = GcReport()
        execute_batch(
            archive, arguments["location"], arguments["copy_ids"], arguments["actor"], report
        )
        if report.failed:
            raise TransientStoreError(f"{len(report.failed)} deletes failed; retried later")
        return lambda session, now: None

    def failed(
        self, session: Session, task: TaskInfo, error: str, final: bool, now: datetime
    ) -> None:
        """Nothing to undo: failed copies went back to ``present`` (retries counted)."""
