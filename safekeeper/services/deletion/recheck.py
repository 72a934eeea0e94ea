"""gc's re-check (phase 2): decide again on claimed copies, after the claim committed.

First on the database's rows (the evidence gathered again, every copy claimed by
anyone no longer counting as present); then, for a copy those rows allow to go because
it is copied elsewhere, on physical evidence: every other present copy of its blob
re-confirmed in its store in this run (``services.deletion.reconfirm``), the policy
counting only those confirmed (invariants 2 and 12).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from safekeeper.db.evidence import CopyFacts, gather_with_copies
from safekeeper.db.models import CopyState
from safekeeper.policy import Decision, Evidence, OtherCopy, Rule, decide
from safekeeper.services.deletion import reconfirm
from safekeeper.services.deletion.planner import policy_from_config

if TYPE_CHECKING:
    from safekeeper.archive import Archive


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
    verdicts, results = recheck_unrecorded(archive, copy_ids, heartbeat)
    if reconfirm.needs_record(results):
        with archive.db.write() as session:
            reconfirm.record_in(session, results, archive.clock())
    return verdicts


def recheck_unrecorded(
    archive: Archive, copy_ids: Sequence[int], heartbeat: Callable[[], None] | None = None
) -> tuple[list[Verdict], list[reconfirm.Result]]:
    """``recheck``, leaving the re-confirmation's results to the caller to record
    (gc records them in the transaction that fences the batch)."""
    policy = policy_from_config(archive.config)
    now = archive.clock()
    deadline = time.monotonic() + archive.config.policy.gc_batch_deadline.total_seconds()
    with archive.db.read() as session:
        # We hold the claim on these copies: each is judged as the present copy it was.
        # Every other claimed copy (ours or another gc's) does not count as present.
        evidence, copies = gather_with_copies(session, copy_ids=copy_ids, as_present=True)
    verdicts: list[Verdict] = []
    physical: list[tuple[CopyFacts, Evidence]] = []
    for facts, ev in evidence.values():
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
        ev = _reconfirmed(
            ev, {o.location: confirmed.get((facts.blob_id, o.location)) for o in ev.others}
        )
        verdicts.append(Verdict(facts, ev, decide(ev, policy, now)))
    return verdicts, results


def _reconfirmed(ev: Evidence, confirmed: dict[str, bool | None]) -> Evidence:
    """``ev`` in re-confirmed mode, each other copy with what its store said in this
    run (``confirmed`` by location). Built field by field: ``dataclasses.replace``
    (three per copy) cost more than the two decisions under cProfile."""
    others = tuple(
        OtherCopy(o.location, o.kind, o.state, o.verified_at, confirmed[o.location])
        for o in ev.others
    )
    return Evidence(
        location=ev.location,
        state=ev.state,
        created_at=ev.created_at,
        unreferenced_since=ev.unreferenced_since,
        held=ev.held,
        transfer_source=ev.transfer_source,
        needed_by_job=ev.needed_by_job,
        others=others,
        reconfirmed=True,
    )


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
