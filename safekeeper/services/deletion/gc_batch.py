"""One gc batch at one location, after its claim: phases 1 and 3-6 of ``services.deletion.gc``.

**claim** (``present → deleting`` under a fresh token, committed) → re-check
(``services.deletion.recheck``) → **release** what the re-check keeps and **fence** the
rest (the re-confirmation's findings, the release and the fence in one transaction:
the fence is the last database step before the store) → **delete** the fenced
copies' objects in one bulk call, after reading the store's marker afresh → **record**
``deleting → deleted`` with one audit row each, only for rows still claimed under the
token (invariants 8, 10 and 12).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from safekeeper.db import audit, claims
from safekeeper.errors import SafekeeperError
from safekeeper.services.deletion import reconfirm
from safekeeper.services.deletion.recheck import Verdict, recheck_unrecorded

if TYPE_CHECKING:
    from safekeeper.archive import Archive


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


# -- phase 1: claim -----------------------------------------------------------------


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


# -- phases 3-6: release, fence, delete, record ------------------------------------


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


# -- phases 2-6 for one claimed batch -----------------------------------------------


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
    verdicts, results = recheck_unrecorded(archive, held.copy_ids, Heartbeat(archive, held))
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
