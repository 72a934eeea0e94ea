"""Re-confirming, right before a physical delete, the copies the decision stands on.

gc's re-check asks of each other present copy of a blob it is about to delete a copy
of: is that object still there, with the blob's bytes? The answer must catch an
object replaced or rewritten in place, not just one that vanished:

1. ``stat`` the object: gone → ``missing``; another size → ``corrupt``.
2. Compare its fingerprint (``ObjectInfo.fingerprint``: file size + mtime_ns +
   ctime_ns + inode; S3 ETag + version) with the one recorded when the copy was
   last hashed right. Different, or none recorded → re-hash it.
3. Re-hash it anyway when it is the only other present copy (after the delete it is
   the last one) and at most ``gc_rehash_max_size`` bytes.
4. A re-hash with other bytes → ``corrupt``. A re-hash with the right bytes of an
   object whose fingerprint changed refreshes the copy's ``verified_at`` and
   fingerprint.

Copies found ``missing`` or ``corrupt`` are marked so at once (conditional UPDATE
from ``present``) and stop the deletion (``policy.decide`` in re-confirmed mode).
A store that cannot answer leaves the copy unconfirmed: it neither counts nor
condemns. Checks run in ``tasks.threads`` threads; a check not started before the
batch's deadline is skipped (unconfirmed). See docs/design.md, "Re-confirmation".
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from safekeeper.db.copies import record_rehashed, transition
from safekeeper.db.models import CopyState
from safekeeper.errors import NotFound, SafekeeperError
from safekeeper.services.copies.existing import hash_object
from safekeeper.stores.filesystem import FileStore

if TYPE_CHECKING:
    from safekeeper.archive import Archive


class Outcome(enum.StrEnum):
    #: There, and unchanged by its fingerprint (not re-hashed).
    UNCHANGED = "unchanged"
    #: Re-hashed: the blob's bytes.
    REHASHED = "rehashed"
    MISSING = "missing"
    CORRUPT = "corrupt"
    #: The store could not answer, or the deadline passed: not confirmed.
    UNKNOWN = "unknown"

    @property
    def confirmed(self) -> bool | None:
        if self in (Outcome.UNCHANGED, Outcome.REHASHED):
            return True
        if self in (Outcome.MISSING, Outcome.CORRUPT):
            return False
        return None


@dataclass(frozen=True)
class Check:
    """One other copy to re-confirm."""

    copy_id: int
    blob_id: int
    sha256: str
    size: int
    location: str
    #: The fingerprint recorded when it was last hashed right (None: never recorded).
    fingerprint: str | None
    #: The only other present copy: re-hash it when small enough.
    last: bool


@dataclass(frozen=True)
class Result:
    check: Check
    outcome: Outcome
    #: After a right re-hash: the fingerprint to record (None: it moved while hashing).
    fingerprint: str | None = None
    detail: str = ""


def check_one(archive: Archive, check: Check, deadline: float) -> Result:
    """Re-confirm one copy in its store (steps 1-4 of the module doc)."""
    if time.monotonic() > deadline:
        return Result(check, Outcome.UNKNOWN, detail="batch deadline passed")
    if check.location not in archive.config.locations:
        return Result(check, Outcome.UNKNOWN, detail="location no longer configured")
    key = archive.key_for(check.location, check.sha256, check.blob_id)
    try:
        # Inside the try: a store that fails its identity check (invariant 10) confirms
        # nothing, so the copy counts for nothing.
        store = archive.store(check.location)
        info = store.stat(key)
        if info.size != check.size:
            return Result(check, Outcome.CORRUPT, detail=f"{info.size} bytes, not {check.size}")
        changed = info.fingerprint is None or info.fingerprint != check.fingerprint
        small = check.size <= archive.config.policy.gc_rehash_max_size
        if not changed and not (check.last and small):
            return Result(check, Outcome.UNCHANGED)
        digest, size = hash_object(store, key)
        if (digest, size) != (check.sha256, check.size):
            return Result(check, Outcome.CORRUPT, detail=f"bytes hash to {digest}")
        # Record the fingerprint only if the object did not move while it was hashed.
        after = store.stat(key).fingerprint
    except NotFound:
        return Result(check, Outcome.MISSING)
    except SafekeeperError as exc:
        return Result(check, Outcome.UNKNOWN, detail=str(exc))
    return Result(check, Outcome.REHASHED, after if after == info.fingerprint else None)


def reconfirm(archive: Archive, checks: Sequence[Check], deadline: float) -> list[Result]:
    """Run the checks (in threads), then record what they found in one transaction."""
    results = run_checks(archive, checks, deadline)
    if needs_record(results):
        with archive.db.write() as session:
            record_in(session, results, archive.clock())
    return results


def run_checks(archive: Archive, checks: Sequence[Check], deadline: float) -> list[Result]:
    """Run the checks, recording nothing: the caller passes the results to
    ``record_in`` (gc does so in the transaction that fences the batch)."""
    if not checks:
        return []
    # Each store's identity (invariant 10) is read afresh once per batch, before any of
    # its copies is looked at: an unmounted disk must confirm nothing — nor condemn
    # anything as missing.
    refused: set[str] = set()
    for location in sorted({c.location for c in checks} & set(archive.config.locations)):
        try:
            archive.store(location, fresh=True)
        except SafekeeperError:
            refused.add(location)
    skipped = [
        Result(c, Outcome.UNKNOWN, detail="store identity refused")
        for c in checks
        if c.location in refused
    ]
    to_check = [c for c in checks if c.location not in refused]
    # A local directory answers a stat and a small read faster than a thread hand-off
    # costs (10,000 copies: 3.1 s in line against 3.7 s in threads, bench/RESULTS.md);
    # other stores wait on the network, where threads pay.
    local = {loc for loc in {c.location for c in to_check} if _is_local(archive, loc)}
    in_line = [c for c in to_check if c.location in local]
    remote = [c for c in to_check if c.location not in local]
    results = [check_one(archive, c, deadline) for c in in_line]
    threads = min(archive.config.tasks.threads, len(remote))
    if threads <= 1:
        results += [check_one(archive, c, deadline) for c in remote]
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="safekeeper-reconfirm") as pool:
            results += pool.map(lambda c: check_one(archive, c, deadline), remote)
    results = _under_fresh_identity(archive, results)
    return results + skipped


def _under_fresh_identity(archive: Archive, results: list[Result]) -> list[Result]:
    """Not found (or other bytes) is evidence only under a fresh identity check: the
    markers were read before the batch, and a disk can go away during it. Before any
    copy is condemned, its store's marker is read again; a store refused now confirms
    and condemns nothing of this batch."""
    damaged = {r.check.location for r in results if r.outcome.confirmed is False}
    refused: dict[str, str] = {}
    for location in sorted(damaged):
        try:
            archive.store(location, fresh=True)
        except SafekeeperError as exc:
            refused[location] = f"store identity refused: {exc}"
    if not refused:
        return results
    return [
        Result(r.check, Outcome.UNKNOWN, detail=refused[r.check.location])
        if r.check.location in refused
        else r
        for r in results
    ]


def _is_local(archive: Archive, location: str) -> bool:
    try:
        return isinstance(archive.store(location), FileStore)
    except SafekeeperError:
        return False  # check_one says why, per copy


def needs_record(results: Sequence[Result]) -> bool:
    """Whether ``record_in`` would write anything for these results."""
    return any(_damaged(r) or _moved(r) for r in results)


def _damaged(result: Result) -> bool:
    return result.outcome in (Outcome.MISSING, Outcome.CORRUPT)


def _moved(result: Result) -> bool:
    # Only a fingerprint that moved needs writing: an unchanged last copy re-hashed
    # right costs no write (its ``verified_at`` stays; the fingerprint vouches for it).
    return result.outcome == Outcome.REHASHED and result.fingerprint != result.check.fingerprint


def record_in(session: Session, results: Sequence[Result], now: datetime) -> None:
    """Mark the copies found gone or changed; refresh those re-hashed right."""
    for result in results:
        if not _damaged(result):
            continue
        new = CopyState.MISSING if result.outcome == Outcome.MISSING else CopyState.CORRUPT
        detail = f": {result.detail}" if result.detail else ""
        transition(
            session,
            result.check.copy_id,
            CopyState.PRESENT,
            new,
            now,
            last_error=f"found {result.outcome.value} when gc re-confirmed it{detail}",
        )
    rehashed = {r.check.copy_id: r.fingerprint for r in results if _moved(r)}
    if rehashed:
        record_rehashed(session, rehashed, now)
