"""Hypothesis stateful test of the deletion manager's safety claims.

Random interleavings of put, replicate, verify, tampering with archive objects behind
safekeeper's back, adding and removing references, holds, staging jobs, plans, gc
runs, two gc runs interleaved, and gc runs that die half-way. After every step:

- no referenced or held blob has lost its last good copy (an object that exists and
  hashes to the blob id, recorded as present — or deleting, for a dead gc's claim);
- every present copy's object exists, except where the test removed it behind
  safekeeper's back;
- every deleted copy has exactly one audit record;
- whatever the planner would delete, the pure policy allows.

Tampering changes an object's size: gc re-confirms relied-upon copies by existence and
size right before deleting (invariant 2); same-size rot is verify's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import delete, select

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.blobs import find_blob
from safekeeper.db.evidence import gather
from safekeeper.db.models import (
    AuditEntry,
    Blob,
    Copy,
    CopyState,
    Hold,
    Location,
    Namespace,
    Reference,
    StagingJob,
    StagingJobBlob,
    Task,
)
from safekeeper.db.refs import remove_reference, set_reference
from safekeeper.engine.embedded import run_due
from safekeeper.errors import AlreadyExists, Conflict, NotFound, PolicyDenied
from safekeeper.ids import RefSpec
from safekeeper.policy import decide
from safekeeper.services import gc, holds, jobs, planner, replication
from safekeeper.services.verify import verify

PAYLOADS = [f"payload {i} ".encode() * (i + 1) for i in range(3)]
HASHES = [hashlib.sha256(p).hexdigest() for p in PAYLOADS]
REFS = [RefSpec("ns", "a"), RefSpec("ns", "b"), RefSpec("other", "c")]

COMMON = """
[policy]
min_archive_copies = {min_archive}
grace_period = "7d"
max_retries = 3
gc_batch_size = 2

[tasks]
threads = 1

[locations.scratch]
kind = "processing"
store = "memory://{name}-scratch"
"""

#: Two worlds. "archive": copies go once archived, and the archive objects are
#: tampered with (invariant 2). "mutual": two locations each deletable once the other
#: holds a verified copy, so deleters racing on "the other" copy would lose both
#: (invariants 1 and 4).
WORLDS = {
    "archive": (
        COMMON.format(min_archive=1, name="archive-world")
        + """
[locations.inbox]
kind = "source"
store = "memory://archive-world-inbox"
replicate_to = ["buffer"]

[locations.buffer]
kind = "buffer"
store = "memory://archive-world-buffer"
delete_after_copies_at = ["tape-a"]

[locations.tape-a]
kind = "archive"
store = "memory://archive-world-tape-a"

[locations.tape-b]
kind = "archive"
store = "memory://archive-world-tape-b"
""",
        ["tape-a", "tape-b"],
    ),
    "mutual": (
        COMMON.format(min_archive=0, name="mutual-world")
        + """
[locations.inbox]
kind = "source"
store = "memory://mutual-world-inbox"
replicate_to = ["mirror"]
delete_after_copies_at = ["mirror"]

[locations.mirror]
kind = "buffer"
store = "memory://mutual-world-mirror"
delete_after_copies_at = ["inbox"]
""",
        ["mirror"],
    ),
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


SHARED: dict[str, tuple[Archive, Clock, list[str]]] = {}


class DeletionMachine(RuleBasedStateMachine):
    @initialize()
    def reset(self) -> None:
        self.archive, self.clock, self.tamper_targets = SHARED["world"]
        self.locations = list(self.archive.config.locations)
        self.clock.now = datetime(2026, 3, 1, tzinfo=UTC)
        with self.archive.db.write() as session:
            for model in (
                StagingJobBlob,
                StagingJob,
                Task,
                Hold,
                Reference,
                AuditEntry,
                Copy,
                Namespace,
                Blob,
            ):
                session.execute(delete(model))
        for name in self.locations:
            store = self.archive.store(name)
            store.delete([info.key for info in store.list()])
        self.tampered: set[tuple[str, str]] = set()
        self.job_running = False

    # -- the application ----------------------------------------------------------

    @rule(i=st.integers(0, 2), ref=st.sampled_from([None, *REFS]))
    def put(self, i: int, ref: RefSpec | None) -> None:
        # refused cleanly when being deleted right now, or the namespace is on hold
        with contextlib.suppress(Conflict, PolicyDenied):
            self.archive.put_bytes(PAYLOADS[i], ref=ref)

    @rule(i=st.integers(0, 2), ref=st.sampled_from(REFS))
    def add_reference(self, i: int, ref: RefSpec) -> None:
        with self.archive.db.write() as session:
            blob = find_blob(session, HASHES[i])
            if blob is None:
                return
            try:
                with session.begin_nested():
                    set_reference(session, ref, blob, self.clock())
            except (Conflict, PolicyDenied):
                pass

    @rule(ref=st.sampled_from(REFS))
    def remove_reference(self, ref: RefSpec) -> None:
        with self.archive.db.write() as session:
            try:
                with session.begin_nested():
                    remove_reference(session, ref, self.clock())
            except (NotFound, PolicyDenied):
                pass

    @rule(i=st.integers(0, 2), on=st.booleans())
    def hold_blob(self, i: int, on: bool) -> None:
        try:
            if on:
                holds.add_hold(self.archive, HASHES[i], "test", "machine")
            else:
                holds.release_holds(self.archive, HASHES[i])
        except NotFound:
            pass

    @rule(on=st.booleans())
    def hold_namespace(self, on: bool) -> None:
        try:
            if on:
                holds.add_hold(self.archive, "ns", "test", "machine")
            else:
                holds.release_holds(self.archive, "ns")
        except NotFound:
            pass

    @rule(i=st.integers(0, 2))
    def start_job(self, i: int) -> None:
        if self.job_running:
            return
        try:
            jobs.start_job(self.archive, "job", "scratch", [HASHES[i]])
        except NotFound:
            return
        self.job_running = True
        run_due(self.archive)

    @rule()
    def end_job(self) -> None:
        if self.job_running:
            jobs.end_job(self.archive, "job")
            self.job_running = False

    @rule(days=st.sampled_from([0.01, 1, 3, 8]))
    def time_passes(self, days: float) -> None:
        self.clock.now += timedelta(days=days)

    # -- operators and the world --------------------------------------------------

    @rule()
    def replicate(self) -> None:
        replication.replication_pass(self.archive)
        run_due(self.archive)

    @rule()
    def run_verify(self) -> None:
        verify(self.archive)
        run_due(self.archive)
        self.tampered.clear()  # verify has now marked every tampered copy

    @rule(i=st.integers(0, 2), pick=st.integers(0, 1), grow=st.booleans())
    def tamper(self, i: int, pick: int, grow: bool) -> None:
        """Behind safekeeper's back: remove an object, or change its size — but never
        the last intact one (that loss would be the adversary's, not safekeeper's)."""
        where = self.tamper_targets[pick % len(self.tamper_targets)]
        store = self.archive.store(where)
        if not store.exists(HASHES[i]) or not self._intact_elsewhere(HASHES[i], where):
            return
        store.delete([HASHES[i]])
        if grow:
            with contextlib.suppress(AlreadyExists):
                store.put(HASHES[i], [PAYLOADS[i] + b"!"])
        self.tampered.add((where, HASHES[i]))

    @rule()
    def plan_agrees_with_policy(self) -> None:
        policy = planner.policy_from_config(self.archive.config)
        planned = {d.copy_id for d in planner.make_plan(self.archive).deletions}
        with self.archive.db.read() as session:
            evidence = gather(session, copy_ids=planned)
        for copy_id in planned:
            _, ev = evidence[copy_id]
            assert decide(ev, policy, self.clock()).allowed, copy_id

    @rule()
    def run_gc(self) -> None:
        gc.run_gc(self.archive, actor="machine")

    @rule(data=st.data())
    def two_gcs_interleaved(self, data: st.DataObject) -> None:
        """Two gc processes planned at the same moment; their phases interleave."""
        first = planner.make_plan(self.archive).deletions
        second = planner.make_plan(self.archive).deletions
        order = data.draw(st.permutations(range(len(first) + len(second))))
        claimed: list[tuple[str, list[int]]] = []
        for index in order:
            deletion = (first + second)[index]
            claimed.append((deletion.location, gc.claim(self.archive, [deletion.copy_id])))
        data.draw(st.randoms()).shuffle(claimed)
        for location, ids in claimed:
            gc.process_claimed(self.archive, location, ids, "machine", gc.GcReport())

    @rule(data=st.data())
    def gc_dies_half_way(self, data: st.DataObject) -> None:
        """Claims copies, maybe deletes some objects, then dies without recording."""
        deletions = planner.make_plan(self.archive).deletions
        if not deletions:
            return
        chosen = data.draw(st.lists(st.sampled_from(deletions), max_size=3, unique=True))
        for deletion in chosen:
            if not gc.claim(self.archive, [deletion.copy_id]):
                continue
            verdicts = gc.recheck(self.archive, [deletion.copy_id])
            if data.draw(st.booleans()) and verdicts and verdicts[0].decision.allowed:
                gc.delete_objects(self.archive, deletion.location, verdicts)

    @rule()
    def claims_go_stale(self) -> None:
        self.clock.now += timedelta(minutes=11)

    def _intact_elsewhere(self, sha256: str, besides: str) -> bool:
        with self.archive.db.read() as session:
            blob = find_blob(session, sha256)
            copies = session.execute(
                select(Location.name, Copy.state)
                .join(Location, Copy.location_id == Location.id)
                .where(Copy.blob_id == (blob.id if blob else -1), Location.name != besides)
            ).all()
        return blob is not None and self._good_copy(blob, [(n, s) for n, s in copies])

    # -- invariants -----------------------------------------------------------------

    def _good_copy(self, blob: Blob, copies: list[tuple[str, str]]) -> bool:
        for location, state in copies:
            if state not in (CopyState.PRESENT, CopyState.DELETING):
                continue
            store = self.archive.store(location)
            try:
                data = b"".join(store.open(blob.sha256))
            except NotFound:
                continue
            if hashlib.sha256(data).hexdigest() == blob.sha256:
                return True
        return False

    @invariant()
    def protected_blobs_keep_a_good_copy(self) -> None:
        if not hasattr(self, "archive"):
            return
        with self.archive.db.read() as session:
            protected = set(session.scalars(select(Reference.blob_id)))
            protected |= {
                b
                for b in session.scalars(select(Hold.blob_id).where(Hold.released_at.is_(None)))
                if b is not None
            }
            for blob_id in protected:
                blob = session.get_one(Blob, blob_id)
                copies = session.execute(
                    select(Location.name, Copy.state)
                    .join(Location, Copy.location_id == Location.id)
                    .where(Copy.blob_id == blob_id)
                ).all()
                assert self._good_copy(blob, [(n, s) for n, s in copies]), (
                    f"protected blob {blob.sha256[:12]} has no good copy: {copies}"
                )

    @invariant()
    def present_copies_have_their_objects(self) -> None:
        if not hasattr(self, "archive"):
            return
        with self.archive.db.read() as session:
            rows = session.execute(
                select(Location.name, Blob.sha256)
                .join(Copy, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Copy.state == CopyState.PRESENT)
            ).all()
        for location, sha256 in rows:
            if (location, sha256) not in self.tampered:
                assert self.archive.store(location).exists(sha256), (location, sha256[:12])

    @invariant()
    def every_deletion_is_audited_once(self) -> None:
        if not hasattr(self, "archive"):
            return
        with self.archive.db.read() as session:
            deleted = Counter(
                tuple(row)
                for row in session.execute(
                    select(Blob.sha256, Location.name)
                    .join(Copy, Copy.blob_id == Blob.id)
                    .join(Location, Copy.location_id == Location.id)
                    .where(Copy.state == CopyState.DELETED)
                )
            )
            audited = Counter(
                tuple(row)
                for row in session.execute(select(AuditEntry.blob_sha256, AuditEntry.location))
            )
        assert deleted == audited


@pytest.mark.slow
@pytest.mark.parametrize("world", sorted(WORLDS))
def test_deletion_manager_state_machine(
    world: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config_text, tamper_targets = WORLDS[world]
    data_dir = tmp_path_factory.mktemp(world)
    (data_dir / "safekeeper.toml").write_text(config_text)
    clock = Clock()
    with Archive(load_config(data_dir=data_dir, environ={}), clock=clock) as archive:
        SHARED["world"] = (archive, clock, tamper_targets)
        DeletionMachine.TestCase.settings = settings(
            max_examples=int(os.environ.get("SAFEKEEPER_STATEFUL_EXAMPLES", "80")),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        DeletionMachine.TestCase().runTest()
