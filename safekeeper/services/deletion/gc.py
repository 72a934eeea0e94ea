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

This module is the run loop; the phases live by concern: the claim, fence, delete and
record of a batch in ``gc_batch``, the re-check in ``recheck`` (its store side in
``reconfirm``), the recovery of a dead gc's claims in ``gc_recovery``. Their names
are re-exported here, where callers and tests have always found them.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from safekeeper.errors import StoreError, StoreIdentityError
from safekeeper.packages.eviction import drop_orphaned_trees
from safekeeper.services.deletion.gc_batch import (
    Claim,
    Fenced,
    GcReport,
    Heartbeat,
    claim,
    delete_objects,
    fence,
    process_claimed,
    record_deleted,
    release,
)
from safekeeper.services.deletion.gc_recovery import recover_stale_claims
from safekeeper.services.deletion.planner import make_plan
from safekeeper.services.deletion.recheck import Verdict, recheck

if TYPE_CHECKING:
    from safekeeper.archive import Archive

__all__ = [
    "Claim",
    "Fenced",
    "GcReport",
    "Heartbeat",
    "Verdict",
    "check_stores",
    "claim",
    "default_actor",
    "delete_objects",
    "execute_batch",
    "fence",
    "make_plan",
    "plan_batches",
    "process_claimed",
    "recheck",
    "record_deleted",
    "recover_stale_claims",
    "release",
    "run_gc",
]


def default_actor() -> str:
    return f"gc:{getpass.getuser()}@{socket.gethostname()}"


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
