"""Recovering the claims of a gc that died, or stalled past ``gc_claim_timeout``
(invariant 12): take them over, then look in the store — gone → recorded deleted
(audited ``delete-recovered``); still there and never fenced → released; still there
and fenced → decided again from the start, because its claimant may be deleting it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from safekeeper.db import claims
from safekeeper.db.evidence import gather
from safekeeper.db.models import Blob, Copy, Location
from safekeeper.errors import StoreIdentityError
from safekeeper.policy import Decision, Rule
from safekeeper.services.deletion.gc_batch import (
    Claim,
    GcReport,
    process_claimed,
    record_deleted,
    release,
)
from safekeeper.services.deletion.recheck import Verdict

if TYPE_CHECKING:
    from safekeeper.archive import Archive


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
