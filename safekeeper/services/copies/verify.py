"""Verification (fsck): re-hash copies, mark the bad ones, schedule repairs, find orphans.

It never deletes anything itself. A copy that is gone becomes ``missing``, one whose
bytes changed becomes ``corrupt``; neither counts as a copy for any safety rule from
then on. Those copies are hashed again on every run: one whose right bytes came back
(a file restored by hand, a disk remounted) is ``present`` again — after hashing,
never on its name or size. Repair turns the rest back into ``pending`` and schedules a
transfer from a good copy (which hashes the object at the key and replaces it
atomically if wrong, ``services.copies.existing``). Objects in a store that no copy row accounts
for are *orphans*: with ``adopt`` those whose bytes hash to the blob their key names
are recorded as present copies (leftovers of a put that died before its commit);
the rest are listed for the operator. Incomplete multipart uploads (S3) older than
``stale_uploads_after`` are leftovers of writers killed mid-upload: they are aborted —
they hold no object anyone can read — and reported.

Progress is committed per copy, and copies are checked oldest-verified first, so an
interrupted run resumes where it stopped when run again.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from safekeeper.db.blobs import ensure_blob
from safekeeper.db.catalog import get_location
from safekeeper.db.copies import record_present, transition
from safekeeper.db.models import Blob, Copy, CopyState, Location
from safekeeper.engine.dispatch import dispatch
from safekeeper.errors import BadInput, NotFound, StoreError
from safekeeper.ids import is_blob_id
from safekeeper.services.copies.existing import hash_object
from safekeeper.services.copies.replication import schedule_transfers, serialize, want_repairs
from safekeeper.stores.base import fingerprint_of

if TYPE_CHECKING:
    from safekeeper.archive import Archive

ORPHAN_BATCH = 1000


@dataclass(frozen=True)
class Orphan:
    location: str
    key: str
    size: int
    #: What became of it: ``adopted``, or why it was not.
    outcome: str


#: Incomplete uploads younger than this may belong to a writer still running.
STALE_UPLOADS_AFTER = timedelta(hours=24)


@dataclass(frozen=True)
class StaleUpload:
    location: str
    key: str
    #: Bytes its parts held.
    size: int
    initiated: datetime


@dataclass
class VerifyReport:
    checked: int = 0
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    #: Missing or corrupt copies whose right bytes were found again: present once more.
    restored: list[str] = field(default_factory=list)
    repairs_scheduled: int = 0
    #: Missing or corrupt copies with no good copy to repair them from.
    unrepairable: list[str] = field(default_factory=list)
    #: Copies that could not be checked (the store failed): ``<blob> at <location>: why``.
    errors: list[str] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    #: Incomplete multipart uploads aborted as leftovers of killed writers.
    stale_uploads: list[StaleUpload] = field(default_factory=list)


@dataclass(frozen=True)
class _Subject:
    copy_id: int
    blob_id: int
    sha256: str
    size: int
    location: str
    state: str = CopyState.PRESENT


#: States whose objects verify hashes: present copies, and lost ones that may be back.
_CHECKED = (CopyState.PRESENT, CopyState.MISSING, CopyState.CORRUPT)


def _locations(archive: Archive, location: str | None) -> list[str]:
    if location is None:
        return list(archive.config.locations)
    if location not in archive.config.locations:
        raise NotFound(f"no location named {location!r}")
    return [location]


def _subjects(
    archive: Archive, locations: list[str], older_than: timedelta | None
) -> list[_Subject]:
    query = (
        select(Copy.id, Blob.id, Blob.sha256, Blob.size, Location.name, Copy.state)
        .join(Blob, Copy.blob_id == Blob.id)
        .join(Location, Copy.location_id == Location.id)
        .where(Copy.state.in_(_CHECKED), Location.name.in_(locations))
        .order_by(Copy.verified_at.is_not(None), Copy.verified_at, Copy.id)
    )
    if older_than is not None:
        cutoff = archive.clock() - older_than
        query = query.where((Copy.verified_at.is_(None)) | (Copy.verified_at < cutoff))
    with archive.db.read() as session:
        return [_Subject(*row) for row in session.execute(query)]


def _check(archive: Archive, subject: _Subject) -> tuple[str, str | None]:
    """``ok``, ``missing`` or ``corrupt`` (or ``error: …`` when the store failed), and
    for ``ok`` the object's fingerprint if it did not change while being hashed."""
    store = archive.store(subject.location)
    key = archive.key_for(subject.location, subject.sha256, subject.blob_id)
    try:
        before = store.stat(key).fingerprint
        digest, size = hash_object(store, key)
    except NotFound:
        return _fresh(archive, subject, "missing"), None
    except StoreError as exc:
        return f"error: {exc}", None
    if (digest, size) != (subject.sha256, subject.size):
        return _fresh(archive, subject, "corrupt"), None
    if subject.state != CopyState.PRESENT:
        # A lost copy comes back only from the recorded store (another one mounted
        # there may hold the same bytes): its identity is read afresh here too.
        verdict = _fresh(archive, subject, "ok")
        if verdict != "ok":
            return verdict, None
    return "ok", before if fingerprint_of(store, key) == before else None


def _fresh(archive: Archive, subject: _Subject, verdict: str) -> str:
    """``verdict``, once the store is known to be the recorded one (invariant 10): the
    identity check ``_check`` relied on may be up to IDENTITY_TTL old, and an unmounted
    disk answers "not found" for everything (another store mounted there: other bytes).
    Not found is evidence only under a fresh identity check."""
    try:
        archive.store(subject.location, fresh=True)
    except StoreError as exc:
        return f"error: {exc}"
    return verdict


def _record(
    archive: Archive, subject: _Subject, verdict: str, fingerprint: str | None, report: VerifyReport
) -> None:
    now = archive.clock()
    with archive.db.write() as session:
        if subject.state != CopyState.PRESENT:
            lost = CopyState(subject.state)
            # Only its right bytes bring a lost copy back; otherwise repair handles it.
            if verdict == "ok" and transition(
                session, subject.copy_id, lost, CopyState.PRESENT, now,
                verified_at=now, last_error=None,
            ):  # fmt: skip
                report.restored.append(f"{subject.sha256} at {subject.location}")
                report.ok += 1
        elif verdict == "ok":
            session.execute(
                update(Copy)
                .where(Copy.id == subject.copy_id, Copy.state == CopyState.PRESENT)
                .values(verified_at=now, fingerprint=fingerprint)
            )
            report.ok += 1
        elif verdict in ("missing", "corrupt"):
            new = CopyState.MISSING if verdict == "missing" else CopyState.CORRUPT
            error = f"verify found the object {verdict}"
            if transition(session, subject.copy_id, CopyState.PRESENT, new, now, last_error=error):
                getattr(report, verdict).append(f"{subject.sha256} at {subject.location}")
        else:
            report.errors.append(f"{subject.sha256} at {subject.location}: {verdict}")
    report.checked += 1


def verify(
    archive: Archive,
    *,
    location: str | None = None,
    sample: float | None = None,
    older_than: timedelta | None = None,
    adopt: bool = False,
    stale_uploads_after: timedelta = STALE_UPLOADS_AFTER,
    on_checked: Callable[[int], None] | None = None,
    rng: random.Random | None = None,
) -> VerifyReport:
    if sample is not None and not 0 < sample <= 1:
        raise BadInput(f"--sample must be a fraction in (0, 1], got {sample}")
    if stale_uploads_after < timedelta(0):
        raise BadInput("the age of a stale upload cannot be negative")
    locations = _locations(archive, location)
    subjects = _subjects(archive, locations, older_than)
    if sample is not None:
        chooser = rng or random.Random()
        subjects = [s for s in subjects if chooser.random() < sample]
    report = VerifyReport()
    with ThreadPoolExecutor(max_workers=archive.config.tasks.threads) as pool:
        for subject, (verdict, fingerprint) in zip(
            subjects, pool.map(lambda s: _check(archive, s), subjects), strict=True
        ):
            _record(archive, subject, verdict, fingerprint, report)
            if on_checked is not None:
                on_checked(subject.size)
    schedule_repairs(archive, locations, report)
    for name in locations:
        report.orphans.extend(find_orphans(archive, name, adopt=adopt))
        abort_stale_uploads(archive, name, stale_uploads_after, report)
    return report


def abort_stale_uploads(
    archive: Archive, location: str, older_than: timedelta, report: VerifyReport
) -> None:
    """Abort the location's incomplete uploads older than ``older_than`` (stores
    without multipart uploads have none). Aborting is a write: the store's marker is
    read afresh first, or another deployment's bucket mounted under the same URL since
    the last check would lose its writers' uploads (invariant 10)."""
    if not hasattr(archive.store(location), "abort_stale_uploads"):
        return
    try:
        aborted = archive.store(location, fresh=True).abort_stale_uploads(older_than)  # type: ignore[attr-defined]
    except StoreError as exc:
        report.errors.append(f"incomplete uploads at {location}: {exc}")
        return
    report.stale_uploads.extend(
        StaleUpload(location, upload.key, upload.size, upload.initiated) for upload in aborted
    )


def schedule_repairs(archive: Archive, locations: list[str], report: VerifyReport) -> None:
    """Turn missing/corrupt copies that have a good copy elsewhere into pending
    transfers; list those that have none."""
    with archive.db.write() as session:
        serialize(session)
        location_ids = list(
            session.scalars(select(Location.id).where(Location.name.in_(locations)))
        )
        want_repairs(session, location_ids)
        report.unrepairable.extend(
            f"{sha256} at {name}"
            for sha256, name in session.execute(
                select(Blob.sha256, Location.name)
                .join(Copy, Copy.blob_id == Blob.id)
                .join(Location, Copy.location_id == Location.id)
                .where(
                    Copy.state.in_([CopyState.MISSING, CopyState.CORRUPT]),
                    Copy.location_id.in_(location_ids),
                )
            )
        )
        task_ids = schedule_transfers(archive, session)
    report.repairs_scheduled = len(task_ids)
    dispatch(archive, task_ids)


def _pages(archive: Archive, location: str) -> Iterator[list[tuple[str, int]]]:
    page: list[tuple[str, int]] = []
    for info in archive.store(location).list():
        page.append((info.key, info.size))
        if len(page) >= ORPHAN_BATCH:
            yield page
            page = []
    if page:
        yield page


def find_orphans(archive: Archive, location: str, *, adopt: bool) -> list[Orphan]:
    interval = archive.uses_serial_keys(location)
    orphans: list[Orphan] = []
    for page in _pages(archive, location):
        with archive.db.read() as session:
            location_id = get_location(session, location).id
            key_column = Blob.id if interval else Blob.sha256
            keys: list[object] = [int(k) for k, _ in page] if interval else [k for k, _ in page]
            accounted = {
                str(key)
                for key in session.scalars(
                    select(key_column)
                    .join(Copy, Copy.blob_id == Blob.id)
                    .where(
                        Copy.location_id == location_id,
                        Copy.state != CopyState.DELETED,
                        key_column.in_(keys),
                    )
                )
            }
        for key, size in page:
            if key not in accounted:
                outcome = _adopt(archive, location, key, interval) if adopt else "not adopted"
                orphans.append(Orphan(location, key, size, outcome))
    return orphans


def _adopt(archive: Archive, location: str, key: str, interval: bool) -> str:
    store = archive.store(location)
    before = fingerprint_of(store, key)
    digest, size = hash_object(store, key)
    fingerprint = before if fingerprint_of(store, key) == before else None
    # The listing and the hash may have read another store mounted there since the
    # cached identity check: adopt only what the recorded store holds, checked now.
    try:
        archive.store(location, fresh=True)
    except StoreError as exc:
        return f"not adopted: {exc}"
    with archive.db.write() as session:
        if interval:
            blob = session.get(Blob, int(key))
            if blob is None or (blob.sha256, blob.size) != (digest, size):
                return "content matches no known blob"
        else:
            if not is_blob_id(key) or digest != key:
                return f"content hashes to {digest}, not its key"
            blob = ensure_blob(session, digest, size, archive.clock())
        location_id = get_location(session, location).id
        record_present(session, blob.id, location_id, archive.clock(), fingerprint=fingerprint)
    return "adopted"
