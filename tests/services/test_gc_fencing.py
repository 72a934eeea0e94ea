"""Fenced gc claims, holds and staging jobs that pin, and clock sanity (invariants 4,
5, 8, 12; docs/design.md "Fenced claims" and "Clock sanity").

Each test runs a gc split into its phases (claim → re-check → fence → delete →
record) and interleaves another actor between two of them: a gc that recovers the
claims once they expire, a hold, a staging job, a clock step. Checked on the files on
disk: every ``present`` row's object exists, every deletion has exactly one audit row.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db import claims
from safekeeper.db.blobs import get_blob
from safekeeper.db.models import AuditEntry, Blob, Copy, CopyState, Location
from safekeeper.db.refs import remove_reference, set_reference
from safekeeper.engine.embedded import run_due
from safekeeper.errors import Conflict
from safekeeper.ids import RefSpec
from safekeeper.services.copies import replication
from safekeeper.services.copies.ingest import put_stream
from safekeeper.services.deletion import gc, holds, jobs, planner
from tests.conftest import FakeClock

CONFIG = """
[policy]
min_archive_copies = 1
grace_period = "7d"
gc_claim_timeout = "10m"

[locations.inbox]
kind = "source"
store = "file:inbox"

[locations.archive]
kind = "archive"
store = "file:archive"

[locations.scratch]
kind = "processing"
store = "file:scratch"
"""

TIMEOUT = timedelta(minutes=10)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def archive(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Archive]:
    (tmp_path / "safekeeper.toml").write_text(CONFIG)
    environ = {}
    if request.param == "postgresql":
        environ["SAFEKEEPER_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    with Archive(load_config(data_dir=tmp_path, environ=environ), clock=clock) as opened:
        yield opened


# -- helpers ----------------------------------------------------------------------


def _replicate(archive: Archive) -> None:
    replication.replication_pass(archive)
    run_due(archive)


def _archived(archive: Archive, data: bytes, location: str = "inbox") -> str:
    """A referenced blob at ``location`` and (verified) in the archive: the copy at
    ``location`` is deletable as archived elsewhere."""
    sha256 = put_stream(archive, [data], ref=RefSpec("app", sha_key(data)), location=location)
    _replicate(archive)
    return sha256.sha256


def sha_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _copy_id(archive: Archive, sha256: str, location: str) -> int:
    with archive.db.read() as session:
        copy_id = session.scalar(
            select(Copy.id)
            .join(Blob, Copy.blob_id == Blob.id)
            .join(Location, Copy.location_id == Location.id)
            .where(Blob.sha256 == sha256, Location.name == location, Copy.state != "deleted")
        )
    assert copy_id is not None, (sha256[:12], location)
    return copy_id


def _planned(archive: Archive, sha256: str, location: str) -> int:
    plan = planner.make_plan(archive)
    matches = [d.copy_id for d in plan.deletions if d.blob == sha256 and d.location == location]
    assert matches, f"{sha256[:12]} at {location} is not planned"
    return matches[0]


def _on_disk(archive: Archive, location: str, sha256: str) -> bool:
    root = Path(archive.config.store_url(location).removeprefix("file://"))
    return any(root.rglob(sha256))


def _audit(archive: Archive) -> list[tuple[str, str, str]]:
    with archive.db.read() as session:
        return [
            (row.blob_sha256 or "", row.location or "", row.action)
            for row in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


def _check_physical_truth(archive: Archive) -> None:
    """Every present row's object is on disk with the right bytes; every deleted row
    has exactly one audit row and no object; nothing is left claimed."""
    with archive.db.read() as session:
        rows = session.execute(
            select(Location.name, Blob.sha256, Copy.state)
            .join(Copy, Copy.location_id == Location.id)
            .join(Blob, Copy.blob_id == Blob.id)
        ).all()
    for location, sha256, state in rows:
        if state == CopyState.PRESENT:
            digest = hashlib.sha256(b"".join(archive.store(location).open(sha256))).hexdigest()
            assert digest == sha256, f"present copy at {location} lost its bytes"
    deleted = Counter((sha, loc) for loc, sha, state in rows if state == CopyState.DELETED)
    audited = Counter((sha, loc) for sha, loc, _ in _audit(archive))
    assert deleted == audited, "every deletion has exactly one audit row"
    for sha256, location in deleted:
        live = {(loc, state) for loc, sha, state in rows if sha == sha256 and loc == location}
        if not any(state != CopyState.DELETED for _, state in live):
            assert not _on_disk(archive, location, sha256), f"deleted, yet at {location}"


def _state(archive: Archive, copy_id: int) -> str:
    with archive.db.read() as session:
        return session.get_one(Copy, copy_id).state


def _finish(archive: Archive, location: str, held: gc.Claim, report: gc.GcReport) -> None:
    """Phases 3-6 after a re-check, exactly as ``process_claimed`` runs them."""
    verdicts = gc.recheck(archive, held.copy_ids)
    _finish_from(archive, location, held, verdicts, report)


def _finish_from(
    archive: Archive,
    location: str,
    held: gc.Claim,
    verdicts: list[gc.Verdict],
    report: gc.GcReport,
) -> None:
    allowed = [v for v in verdicts if v.decision.allowed]
    gc.release(archive, held, [v.facts.copy_id for v in verdicts if not v.decision.allowed])
    owned = gc.fence(archive, held, [v.facts.copy_id for v in allowed])
    report.claims_lost += len(allowed) - len(owned)
    fenced = [v for v in allowed if v.facts.copy_id in owned]
    gone = gc.delete_objects(archive, location, fenced) if fenced else set()
    recorded = gc.record_deleted(
        archive, held, [v for v in fenced if v.facts.copy_id in gone], "paused"
    )
    report.deleted += len(recorded)


# -- claims that expire under a live gc -------------------------------------------


@pytest.mark.parametrize("pause", ["after-claim", "after-recheck"])
def test_a_gc_paused_past_its_claim_timeout_neither_deletes_nor_records(
    archive: Archive, clock: FakeClock, pause: str
) -> None:
    blob = _archived(archive, b"paused gc" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    paused = gc.claim(archive, [inbox_copy])
    assert paused.copy_ids == [inbox_copy]
    verdicts = gc.recheck(archive, paused.copy_ids) if pause == "after-recheck" else None
    # -- paused past the timeout; another gc recovers the claim: the object is there,
    # the claim was never fenced, so it goes back to present.
    clock.advance(minutes=11)
    other = gc.GcReport()
    gc.recover_stale_claims(archive, "other", other)
    assert other.recovered == 1
    assert _state(archive, inbox_copy) == CopyState.PRESENT
    # -- resumes: must neither delete the object nor write an audit row
    report = gc.GcReport()
    if verdicts is None:
        gc.process_claimed(archive, "inbox", paused, "paused", report)
    else:
        _finish_from(archive, "inbox", paused, verdicts, report)
    assert (report.deleted, report.claims_lost) == (0, 1)
    assert _on_disk(archive, "inbox", blob)
    assert _state(archive, inbox_copy) == CopyState.PRESENT
    assert _audit(archive) == []
    _check_physical_truth(archive)
    # The next gc deletes it, once, audited once.
    assert gc.run_gc(archive).deleted == 1
    assert _audit(archive) == [(blob, "inbox", "delete")]
    _check_physical_truth(archive)


def test_a_gc_paused_after_its_fence_is_finished_by_the_recovering_gc(
    archive: Archive, clock: FakeClock
) -> None:
    """Past the fence the claimant may delete at any moment: the recovering gc does not
    hand the copy back as present; it decides again, deletes and records — once."""
    blob = _archived(archive, b"fenced then paused" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    paused = gc.claim(archive, [inbox_copy])
    verdicts = gc.recheck(archive, paused.copy_ids)
    assert gc.fence(archive, paused, [inbox_copy]) == {inbox_copy}
    clock.advance(minutes=11)
    other = gc.GcReport()
    gc.recover_stale_claims(archive, "other", other)
    assert (other.recovered, other.deleted) == (1, 1)
    assert not _on_disk(archive, "inbox", blob)
    # the paused gc resumes: its store delete finds nothing; its record matches nothing
    gc.delete_objects(archive, "inbox", verdicts)
    assert gc.record_deleted(archive, paused, verdicts, "paused") == []
    assert _audit(archive) == [(blob, "inbox", "delete")]
    _check_physical_truth(archive)


def test_record_deleted_writes_audit_rows_only_for_rows_it_owns(archive: Archive) -> None:
    blob = _archived(archive, b"owned" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    held = gc.claim(archive, [inbox_copy])
    verdicts = gc.recheck(archive, held.copy_ids)
    stranger = gc.Claim("0" * 32, held.copy_ids)
    assert gc.fence(archive, stranger, held.copy_ids) == set()
    assert gc.record_deleted(archive, stranger, verdicts, "stranger") == []
    assert gc.release(archive, stranger, held.copy_ids) == set()
    assert _audit(archive) == [] and _state(archive, inbox_copy) == CopyState.DELETING
    _finish_from(archive, "inbox", held, verdicts, gc.GcReport())
    assert _audit(archive) == [(blob, "inbox", "delete")]
    _check_physical_truth(archive)


def test_a_heartbeat_keeps_a_slow_gc_claim(archive: Archive, clock: FakeClock) -> None:
    blob = _archived(archive, b"slow" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    slow = gc.claim(archive, [inbox_copy])
    beat = gc.Heartbeat(archive, slow)
    beat.every = 0  # as if a quarter of the timeout had passed in wall time
    for _ in range(3):
        clock.advance(minutes=6)
        beat()
    report = gc.GcReport()
    gc.recover_stale_claims(archive, "other", report)
    assert report.recovered == 0
    gc.process_claimed(archive, "inbox", slow, "slow", report)
    assert report.deleted == 1 and not _on_disk(archive, "inbox", blob)
    _check_physical_truth(archive)


def test_a_recovery_that_looked_before_a_heartbeat_takes_nothing(
    archive: Archive, clock: FakeClock
) -> None:
    """The take-over re-checks staleness in its UPDATE: a live claimant whose heartbeat
    landed between the recovering gc's read and its UPDATE keeps its claim."""
    blob = _archived(archive, b"heartbeat in between" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    live = gc.claim(archive, [inbox_copy])
    clock.advance(minutes=11)
    with archive.db.read() as session:
        stale = claims.stale_claims(session, clock(), TIMEOUT)
    assert stale == [inbox_copy]
    beat = gc.Heartbeat(archive, live)
    beat.every = 0
    beat()
    with archive.db.write() as session:
        assert claims.take_over(session, stale, claims.new_token(), clock(), TIMEOUT) == {}
    report = gc.GcReport()
    gc.process_claimed(archive, "inbox", live, "live", report)
    assert (report.deleted, report.claims_lost) == (1, 0)
    _check_physical_truth(archive)


def test_a_future_dated_claim_is_recovered(archive: Archive, clock: FakeClock) -> None:
    """A gc whose clock was a year ahead claimed, then died; the clock was corrected."""
    blob = _archived(archive, b"from the future" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    right = clock.now
    clock.now = right + timedelta(days=365)
    assert gc.claim(archive, [inbox_copy]).copy_ids == [inbox_copy]
    clock.now = right
    report = gc.run_gc(archive)
    assert report.recovered == 1
    assert report.deleted == 1  # released, then planned and deleted normally
    assert _audit(archive) == [(blob, "inbox", "delete")]
    _check_physical_truth(archive)


def test_a_claim_dated_slightly_ahead_is_not_taken_from_a_live_gc(
    archive: Archive, clock: FakeClock
) -> None:
    blob = _archived(archive, b"slightly ahead" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    right = clock.now
    clock.now = right + timedelta(minutes=5)
    live = gc.claim(archive, [inbox_copy])
    clock.now = right
    report = gc.GcReport()
    gc.recover_stale_claims(archive, "other", report)
    assert report.recovered == 0
    gc.process_claimed(archive, "inbox", live, "live", report)
    assert report.deleted == 1


# -- holds and staging jobs pin ---------------------------------------------------


@pytest.mark.parametrize("target", ["blob", "namespace"])
@pytest.mark.parametrize("when", ["after-claim", "after-recheck"])
def test_a_hold_added_during_gc_keeps_every_copy(archive: Archive, target: str, when: str) -> None:
    blob = _archived(archive, b"held during gc" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    held = gc.claim(archive, [inbox_copy])
    verdicts = gc.recheck(archive, held.copy_ids) if when == "after-recheck" else None
    view = holds.add_hold(archive, blob if target == "blob" else "app", "legal", "lawyer")
    assert view.id
    assert _state(archive, inbox_copy) == CopyState.PRESENT  # the claim was taken back
    report = gc.GcReport()
    if verdicts is None:
        gc.process_claimed(archive, "inbox", held, "gc", report)
        # Its re-check keeps the copy; the claim it would release is already gone.
        assert report.claims_lost == 1
    else:
        _finish_from(archive, "inbox", held, verdicts, report)
    assert report.deleted == 0
    assert _on_disk(archive, "inbox", blob) and _on_disk(archive, "archive", blob)
    assert gc.run_gc(archive).deleted == 0  # and the hold keeps them from now on
    assert _on_disk(archive, "inbox", blob)
    _check_physical_truth(archive)


def test_a_hold_after_the_fence_fails_with_conflict(archive: Archive) -> None:
    blob = _archived(archive, b"too late for a hold" * 100)
    inbox_copy = _planned(archive, blob, "inbox")
    held = gc.claim(archive, [inbox_copy])
    verdicts = gc.recheck(archive, held.copy_ids)
    assert gc.fence(archive, held, held.copy_ids) == {inbox_copy}
    with pytest.raises(Conflict, match="being deleted right now"):
        holds.add_hold(archive, blob, "legal", "lawyer")
    assert holds.list_holds(archive) == []  # nothing half-written
    gone = gc.delete_objects(archive, "inbox", verdicts)
    assert (
        len(
            gc.record_deleted(archive, held, [v for v in verdicts if v.facts.copy_id in gone], "gc")
        )
        == 1
    )
    assert holds.add_hold(archive, blob, "legal", "lawyer").id  # now it lands
    assert _on_disk(archive, "archive", blob)
    _check_physical_truth(archive)


@pytest.mark.parametrize("when", ["after-claim", "after-recheck"])
def test_a_staging_job_started_during_gc_keeps_its_copy(archive: Archive, when: str) -> None:
    blob = _archived(archive, b"staged during gc" * 100, location="scratch")
    scratch_copy = _planned(archive, blob, "scratch")
    held = gc.claim(archive, [scratch_copy])
    verdicts = gc.recheck(archive, held.copy_ids) if when == "after-recheck" else None
    job = jobs.start_job(archive, "render", "scratch", [blob])
    assert job.blobs == 1
    assert _state(archive, scratch_copy) == CopyState.PRESENT
    report = gc.GcReport()
    if verdicts is None:
        gc.process_claimed(archive, "scratch", held, "gc", report)
    else:
        _finish_from(archive, "scratch", held, verdicts, report)
    assert report.deleted == 0
    assert _on_disk(archive, "scratch", blob)
    assert gc.run_gc(archive).deleted == 0
    assert _on_disk(archive, "scratch", blob)
    _check_physical_truth(archive)


def test_a_staging_job_after_the_fence_fails_with_conflict(archive: Archive) -> None:
    blob = _archived(archive, b"too late for a job" * 100, location="scratch")
    scratch_copy = _planned(archive, blob, "scratch")
    held = gc.claim(archive, [scratch_copy])
    gc.recheck(archive, held.copy_ids)
    gc.fence(archive, held, held.copy_ids)
    with pytest.raises(Conflict, match="being deleted right now"):
        jobs.start_job(archive, "render", "scratch", [blob])
    assert jobs.list_jobs(archive) == []


# -- clock sanity -----------------------------------------------------------------


def test_a_clock_stepped_back_does_not_age_an_unreferenced_blob(
    archive: Archive, clock: FakeClock
) -> None:
    """Referenced at T; the clock steps back a year; the reference is removed; the
    clock is right again: the grace period counts from T, not from a year ago."""
    data = b"clock step" * 100
    blob = archive.put_bytes(data, ref="app:doc").sha256
    _replicate(archive)
    right = clock.now
    clock.now = right - timedelta(days=365)
    with archive.db.write() as session:
        remove_reference(session, RefSpec("app", "doc"), clock())
    # and a blob put without a reference while the clock is wrong
    stray = archive.put_bytes(b"stray while wrong").sha256
    clock.now = right + timedelta(days=1)
    assert gc.run_gc(archive).deleted == 1  # only the referenced-elsewhere inbox copy
    assert _on_disk(archive, "archive", blob) and _on_disk(archive, "inbox", stray)
    with archive.db.read() as session:
        since = session.scalar(select(Blob.unreferenced_since).where(Blob.sha256 == blob))
    assert since is not None and since >= right - timedelta(minutes=1)
    clock.now = right + timedelta(days=7, minutes=2)
    report = gc.run_gc(archive)
    assert not _on_disk(archive, "archive", blob)  # garbage now, a grace period later
    assert report.deleted >= 1
    _check_physical_truth(archive)


def test_a_reference_replaced_while_the_clock_is_behind(archive: Archive, clock: FakeClock) -> None:
    old = archive.put_bytes(b"first version", ref="app:doc").sha256
    new = archive.put_bytes(b"second version").sha256
    right = clock.now
    clock.now = right - timedelta(days=30)
    with archive.db.write() as session:
        set_reference(session, RefSpec("app", "doc"), get_blob(session, new), clock())
    clock.now = right + timedelta(days=1)
    gc.run_gc(archive)
    assert _on_disk(archive, "inbox", old)  # not garbage yet by the database's clock
    with archive.db.read() as session:
        since = session.scalar(select(Blob.unreferenced_since).where(Blob.sha256 == old))
    assert since is not None and since >= right - timedelta(minutes=1)
    _check_physical_truth(archive)
