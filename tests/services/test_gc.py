"""gc end to end: frees what the plan allows, keeps what the rules protect, audits all."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.blobs import get_blob
from safekeeper.db.refs import remove_reference, set_reference
from safekeeper.engine.embedded import run_due
from safekeeper.errors import Conflict, PolicyDenied, TransientStoreError
from safekeeper.ids import RefSpec
from safekeeper.services.copies import inventory, replication
from safekeeper.services.copies.ingest import put_stream
from safekeeper.services.copies.verify import verify
from safekeeper.services.deletion import gc, gc_queue, holds, jobs, planner
from safekeeper.services.operations import audit
from safekeeper.stores.base import Store
from tests.conftest import FakeClock


def _states(archive: Archive, blob: str) -> dict[str, str]:
    return {c.location: c.state for c in inventory.stat_blob(archive, blob).copies}


def _replicate(archive: Archive) -> None:
    replication.replication_pass(archive)
    run_due(archive)


def _object_path(archive: Archive, location: str, blob: str) -> Path:
    root = Path(archive.config.store_url(location).removeprefix("file://"))
    return next(root.rglob(blob))


def test_the_scenario(archive: Archive) -> None:
    """put → gc keeps (no archive) → replicate → gc frees the inbox → the archive object
    rots → verify → a new put's inbox copy is kept until the archive is repaired."""
    data = b"precious" * 1000
    blob = archive.put_bytes(data, ref="proj:data").sha256
    report = gc.run_gc(archive)
    assert (report.planned, report.deleted) == (0, 0)
    assert [e.decision.rule for e in planner.explain(archive, blob)] == ["archived-elsewhere"]

    _replicate(archive)
    report = gc.run_gc(archive)
    assert report.deleted == 1 and report.bytes_freed == len(data)
    assert _states(archive, blob) == {"archive": "present"}
    assert not archive.store("inbox").exists(blob)

    path = _object_path(archive, "archive", blob)
    path.chmod(0o644)
    path.write_bytes(b"x" + data[1:])
    result = verify(archive)
    assert result.corrupt == [f"{blob} at archive"]
    assert result.unrepairable == [f"{blob} at archive"]  # the inbox copy is gone

    assert archive.put_bytes(data).stored  # the user puts it again
    assert gc.run_gc(archive).deleted == 0  # kept: no verified archive copy
    assert _states(archive, blob) == {"archive": "corrupt", "inbox": "present"}

    _replicate(archive)  # repairs the archive copy from the inbox
    assert _states(archive, blob) == {"archive": "present", "inbox": "present"}
    assert gc.run_gc(archive).deleted == 1
    assert hashlib.sha256(path.read_bytes()).hexdigest() == blob
    entries = audit.read_audit(archive, blob=blob)
    assert [(e.location, e.rule) for e in entries] == [("inbox", "archived-elsewhere")] * 2
    assert entries[0].evidence["other_copies"][0]["confirmed_in_store"] is True


def test_garbage_loses_every_copy_archive_last(archive: Archive, clock: FakeClock) -> None:
    blob = archive.put_bytes(b"soon garbage", ref="ns:k").sha256
    kept = archive.put_bytes(b"still wanted", ref="ns:other").sha256
    _replicate(archive)
    with archive.db.write() as session:
        remove_reference(session, RefSpec("ns", "k"), clock())
    clock.advance(days=7, seconds=-1)
    assert all(d.blob != blob for d in planner.make_plan(archive).deletions if d.rule == "garbage")
    clock.advance(seconds=1)
    plan = planner.make_plan(archive)
    garbage = [d for d in plan.deletions if d.blob == blob]
    assert [(d.location, d.rule) for d in garbage] == [("inbox", "garbage"), ("archive", "garbage")]
    gc.run_gc(archive)
    assert _states(archive, blob) == {}
    assert not archive.store("archive").exists(blob)
    assert _states(archive, kept) == {"archive": "present"}
    entries = audit.read_audit(archive, blob=blob)
    assert [(e.location, e.rule) for e in reversed(entries)] == [
        ("inbox", "garbage"),
        ("archive", "garbage"),
    ]


def test_hold_blocks_every_deletion_until_released(archive: Archive, clock: FakeClock) -> None:
    blob = archive.put_bytes(b"evidence", ref="case:exhibit-a").sha256
    _replicate(archive)
    holds.add_hold(archive, "case", "litigation", "legal")
    assert {e.decision.rule for e in planner.explain(archive, blob)} == {"hold"}
    assert gc.run_gc(archive).deleted == 0
    # a namespace on hold is frozen: its blobs cannot be turned into garbage
    with archive.db.write() as session, pytest.raises(PolicyDenied, match="on hold"):
        remove_reference(session, RefSpec("case", "exhibit-a"), clock())
    holds.release_holds(archive, "case")
    # a hold on the blob itself keeps even garbage
    holds.add_hold(archive, blob[:12], "keep the bytes", "legal")
    with archive.db.write() as session:
        remove_reference(session, RefSpec("case", "exhibit-a"), clock())
    clock.advance(days=30)
    assert gc.run_gc(archive).deleted == 0
    assert _states(archive, blob) == {"archive": "present", "inbox": "present"}
    holds.release_holds(archive, blob)
    assert gc.run_gc(archive).deleted == 2
    assert [h.released_at is not None for h in holds.list_holds(archive, True)] == [True, True]


def test_staging_job_keeps_its_copies_until_it_ends(tmp_path: Path, clock: FakeClock) -> None:
    data_dir = tmp_path / "jobs"
    data_dir.mkdir()
    (data_dir / "safekeeper.toml").write_text(
        '[locations.inbox]\nkind = "source"\nstore = "file:inbox"\n'
        '[locations.archive]\nkind = "archive"\nstore = "file:archive"\n'
        '[locations.scratch]\nkind = "processing"\nstore = "file:scratch"\n'
    )
    with Archive(load_config(data_dir=data_dir, environ={}), clock=clock) as archive:
        blob = archive.put_bytes(b"input data", ref="run:input").sha256
        _replicate(archive)
        view = jobs.start_job(archive, "reduce-42", "scratch", [blob])
        assert len(view.task_ids) == 1
        run_due(archive)
        assert _states(archive, blob)["scratch"] == "present"
        with pytest.raises(Conflict, match="already active"):
            jobs.start_job(archive, "reduce-42", "scratch", [blob])
        gc.run_gc(archive)  # frees the inbox copy, keeps the job's
        assert _states(archive, blob) == {"archive": "present", "scratch": "present"}
        scratch = {e.location: e.decision for e in planner.explain(archive, blob)}["scratch"]
        assert (scratch.rule, scratch.reason) == ("in-use", "needed by an active staging job")
        jobs.end_job(archive, "reduce-42")
        assert gc.run_gc(archive).deleted == 1
        assert _states(archive, blob) == {"archive": "present"}


def test_disk_pressure_evicts_least_recently_used_down_to_low(
    tmp_path: Path, clock: FakeClock
) -> None:
    data_dir = tmp_path / "pressure"
    data_dir.mkdir()
    (data_dir / "safekeeper.toml").write_text(
        '[locations.inbox]\nkind = "source"\nstore = "file:inbox"\n'
        'high_watermark = "350B"\nlow_watermark = "150B"\n'
        '[locations.archive]\nkind = "archive"\nstore = "file:archive"\n'
    )
    with Archive(load_config(data_dir=data_dir, environ={}), clock=clock) as archive:
        blobs = []
        for i in range(4):
            blobs.append(archive.put_bytes(bytes([i]) * 100, ref=f"ns:{i}").sha256)
            clock.advance(minutes=1)
        _replicate(archive)
        archive.read_blob(blobs[0])  # recently used: evicted last
        plan = planner.make_plan(archive, "inbox")
        # 400 bytes > 350 high; evict LRU until ≤ 150 low: blobs 1, 2 and 3 go, 0 stays
        assert sorted(d.blob for d in plan.locations[0].deletions) == sorted(blobs[1:])
        assert plan.locations[0].kept == {"disk-pressure": [1, 100]}
        gc.run_gc(archive)
        assert _states(archive, blobs[0]) == {"archive": "present", "inbox": "present"}
        # now 100 bytes: below the high watermark, nothing more goes
        assert planner.make_plan(archive, "inbox").deletions == []


def test_a_reference_added_during_gc_keeps_the_blob_or_fails(
    archive: Archive, clock: FakeClock
) -> None:
    data = b"orphan for a week"
    blob = archive.put_bytes(data).sha256  # never referenced: garbage after the grace
    _replicate(archive)
    clock.advance(days=8)
    plan = planner.make_plan(archive)
    inbox_copy = next(d.copy_id for d in plan.deletions if d.location == "inbox")
    archive_copy = next(d.copy_id for d in plan.deletions if d.location == "archive")
    # gc has claimed the inbox copy; a reference now lands on the archive copy
    inbox_claim = gc.claim(archive, [inbox_copy])
    assert inbox_claim.copy_ids == [inbox_copy]
    ref_blob = inventory.stat_blob(archive, blob)
    with archive.db.write() as session:
        set_reference(session, RefSpec("app", "late"), get_blob(session, blob), clock())
    report = gc.GcReport()
    gc.process_claimed(archive, "inbox", inbox_claim, "test", report)
    gc.execute_batch(archive, "archive", [archive_copy], "test", report)
    # No longer garbage: the inbox copy may still go (archived elsewhere), the archive
    # copy stays, and the new reference points at a blob that still has it.
    assert report.deleted == 1
    assert [(loc, rule) for _, loc, rule, _ in report.kept_on_recheck] == [("archive", "archive")]
    assert _states(archive, blob) == {"archive": "present"}
    assert [e.rule for e in audit.read_audit(archive, blob=blob)] == ["archived-elsewhere"]
    assert ref_blob.sha256 == blob
    # When every copy is claimed, pointing a reference at the blob fails clearly...
    with archive.db.write() as session:
        remove_reference(session, RefSpec("app", "late"), clock())
    clock.advance(days=8)
    claimed = gc.claim(archive, [d.copy_id for d in planner.make_plan(archive).deletions])
    assert claimed.copy_ids == [archive_copy]
    with archive.db.write() as session, pytest.raises(Conflict, match="no present copy"):
        set_reference(session, RefSpec("app", "too-late"), get_blob(session, blob), clock())
    # ...while putting the bytes again brings a fresh copy, and the reference keeps it all.
    assert archive.put_bytes(data, ref="app:again").stored
    gc.process_claimed(archive, "archive", claimed, "test", report)
    assert _states(archive, blob) == {"archive": "present", "inbox": "present"}


class FlakyDeletes:
    """A store whose deletes fail (transiently) while ``failing`` is set."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failing = True

    def delete(self, keys: Iterable[str]) -> None:
        if self.failing:
            raise TransientStoreError("simulated outage")
        self.inner.delete(keys)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
def flaky_inbox(archive: Archive) -> Iterator[FlakyDeletes]:
    wrapper = FlakyDeletes(archive.store("inbox"))
    archive._stores["inbox"] = wrapper  # type: ignore[assignment]
    yield wrapper


def test_failed_deletes_retry_then_fail_and_are_listed(
    archive: Archive, flaky_inbox: FlakyDeletes
) -> None:
    blob = archive.put_bytes(b"stubborn").sha256
    _replicate(archive)
    limit = archive.config.policy.max_retries
    for attempt in range(1, limit + 1):
        report = gc.run_gc(archive)
        assert report.failed == [(blob, "inbox", "store delete failed")]
        copy = {c.location: c for c in inventory.stat_blob(archive, blob).copies}["inbox"]
        assert copy.retries == attempt
    assert copy.state == "failed"
    assert gc.run_gc(archive).planned == 0  # failed copies wait for an operator
    assert archive.store("inbox").exists(blob)


def test_a_gc_that_died_is_finished_or_undone_by_the_next(
    archive: Archive, clock: FakeClock
) -> None:
    first = archive.put_bytes(b"claimed, then the gc died").sha256
    second = archive.put_bytes(b"deleted, then the gc died").sha256
    _replicate(archive)
    plan = {d.blob: d.copy_id for d in planner.make_plan(archive).deletions}
    gc.claim(archive, [plan[first], plan[second]])
    archive.store("inbox").delete([second])  # the dead gc got this far for one of them
    assert gc.run_gc(archive).recovered == 0  # claims are fresh: maybe a live gc's
    clock.advance(minutes=11)
    report = gc.run_gc(archive)
    assert report.recovered == 2
    assert report.deleted == 1  # the released copy goes through the normal path
    assert _states(archive, first) == _states(archive, second) == {"archive": "present"}
    rules = {e.blob: (e.action, e.rule) for e in audit.read_audit(archive)}
    assert rules[second] == ("delete-recovered", "recovered")
    assert rules[first] == ("delete", "archived-elsewhere")


def test_queued_gc_leaves_stale_claims_to_the_sites_workers(
    archive: Archive, clock: FakeClock
) -> None:
    """The distributed path recovers a dead gc's claims in a task of their location's
    site, not in the process that queues the batches (it may not reach the store)."""
    first = archive.put_bytes(b"claimed, then the gc died (queued)").sha256
    second = archive.put_bytes(b"deleted, then the gc died (queued)").sha256
    _replicate(archive)
    plan = {d.blob: d.copy_id for d in planner.make_plan(archive).deletions}
    gc.claim(archive, [plan[first], plan[second]])
    archive.store("inbox").delete([second])
    clock.advance(minutes=11)
    _, task_ids = gc_queue.queue_gc(archive, archives=False, actor="tasks", location="archive")
    assert task_ids == []  # the stale claims are at the inbox, not asked about
    _, task_ids = gc_queue.queue_gc(archive, archives=False, actor="tasks")
    assert len(task_ids) == 1, "one recovery task for the inbox, and nothing else planned"
    # Queueing took no claim over: both are still the dead gc's.
    assert (
        _states(archive, first)
        == _states(archive, second)
        == {
            "inbox": "deleting",
            "archive": "present",
        }
    )
    assert run_due(archive) == {"done": 1}
    assert _states(archive, second) == {"archive": "present"}
    assert _states(archive, first) == {"inbox": "present", "archive": "present"}  # released
    actions = {e.blob: (e.action, e.actor) for e in audit.read_audit(archive)}
    assert actions == {second: ("delete-recovered", "tasks")}
    # The released copy is planned again by the next gc.
    planned, task_ids = gc_queue.queue_gc(archive, archives=False, actor="tasks")
    assert planned == 1 and run_due(archive) == {"done": 1}
    assert _states(archive, first) == {"archive": "present"}


def test_gc_only_in_one_location(archive: Archive) -> None:
    blob = put_stream(archive, [b"in two places"], location="inbox").sha256
    _replicate(archive)
    assert gc.run_gc(archive, location="archive").deleted == 0
    assert _states(archive, blob) == {"archive": "present", "inbox": "present"}


def test_gc_batches_run_as_tasks_on_the_engine(archive: Archive, clock: FakeClock) -> None:
    """The distributed path (batches queued per site) on the embedded executor."""
    kept = archive.put_bytes(b"archived, referenced", ref="ns:kept").sha256
    garbage = archive.put_bytes(b"never referenced").sha256
    _replicate(archive)
    clock.advance(days=8)
    planned, first = gc_queue.queue_gc(archive, archives=False, actor="tasks")
    assert planned == 3  # two inbox copies, and the garbage blob's archive copy
    assert run_due(archive) == {"done": len(first)}
    assert _states(archive, garbage) == {"archive": "present"}  # archive copies go last
    _, second = gc_queue.queue_gc(archive, archives=True, actor="tasks")
    assert run_due(archive) == {"done": len(second)}
    assert _states(archive, garbage) == {}
    assert _states(archive, kept) == {"archive": "present"}
    assert {e.actor for e in audit.read_audit(archive)} == {"tasks"}
    assert len(audit.read_audit(archive)) == 3
