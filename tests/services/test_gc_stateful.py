"""Hypothesis stateful test of the deletion manager's safety claims.

Random interleavings of put, replicate, verify, tampering with archive objects behind
safekeeper's back, adding and removing references, holds, staging jobs, plans, gc
runs, two gc runs interleaved, gc runs that die half-way, gc runs paused between two
of their phases (after the claim, after the re-check, after the store delete) and
resumed any number of steps later — across claim expiry, recoveries by other gcs,
holds and jobs added meanwhile — and the clock stepped back and corrected. After
every step:

- no referenced or held blob has lost its last good copy (an object that exists and
  hashes to the blob id, recorded as present — or deleting, for a dead gc's claim);
- every present copy's object exists, except where the test removed it behind
  safekeeper's back;
- every deleted copy has exactly one audit record;
- a copy present (or claimed but not fenced) when a hold or staging job was accepted
  is not deleted while the hold or job lasts;
- no blob is deleted as garbage before its grace period, counted from the database's
  clock floor when it was last referenced to the true time of the deletion (the
  archive's clock may be stepped back meanwhile);
- whatever the planner would delete, the pure policy allows.

Tampering changes an object's size, or rewrites a random present object in place with
other bytes of the same size (keeping its timestamp): gc re-confirms every other copy
against change right before deleting — fingerprint, and a re-hash of the last one —
and counts only those re-confirmed (invariants 2, 11, 12).

In the archive world ``tape-a`` is a directory, and its disk is unmounted (an empty
directory left at its root) and mounted again at random (invariant 10): whatever
safekeeper wrote to the empty mount point would vanish on remount, so the invariants
read the objects where they physically are — on the disk, wherever it is mounted.

Invariant 11 (bytes counted only after hashing): wrong objects of the right size are
planted at keys before puts and transfers, puts are rolled back after publishing their
object, and in the "interval" world (a file inbox with interval keys) an object is
planted at the next serial number, as a database restore would leave one. After every
step every present copy's object (at its key, interval keys included) must hash right.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import delete, select

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.blobs import find_blob
from safekeeper.db.clock import STEP
from safekeeper.db.evidence import gather
from safekeeper.db.models import (
    AuditEntry,
    Blob,
    ClockFloor,
    Copy,
    CopyState,
    Hold,
    IdSequence,
    Location,
    Namespace,
    Reference,
    StagingJob,
    StagingJobBlob,
    Task,
)
from safekeeper.db.refs import remove_reference, set_reference
from safekeeper.engine.embedded import run_due
from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    Conflict,
    NotFound,
    PolicyDenied,
    StoreIdentityError,
)
from safekeeper.ids import RefSpec
from safekeeper.policy import decide
from safekeeper.services.copies import ingest, replication
from safekeeper.services.copies.verify import verify
from safekeeper.services.deletion import gc, holds, jobs, planner
from safekeeper.stores import Store, open_store

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
store = "file:tape-a"

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
    "interval": (
        COMMON.format(min_archive=1, name="interval-world")
        + """
[locations.inbox]
kind = "source"
store = "file:inbox"
layout = "interval"
replicate_to = ["tape-a"]
delete_after_copies_at = ["tape-a"]

[locations.tape-a]
kind = "archive"
store = "memory://interval-world-tape-a"
""",
        ["tape-a"],
    ),
}

#: Same size as PAYLOADS[i], other bytes: what size-only acceptance would take.
WRONG = [b"#" + p[1:] for p in PAYLOADS]


def _fail_after_publish(*_: object) -> None:
    raise BadInput("the put fails after publishing its object")


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
                ClockFloor,
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
            # The database has been in use before: its clock floor is the true time. (A
            # database whose very first write comes from a wrong clock cannot know.)
            session.add(ClockFloor(id=1, high_water=self.clock.now))
        # The disk that is unmounted and mounted again: the archive world's tape-a.
        tape = self.archive.config.store_url("tape-a") if "tape-a" in self.locations else ""
        self.disk = Path(tape.removeprefix("file://")) if tape.startswith("file:") else None
        for name in self.locations:
            store = self.archive.store(name)
            store.delete([info.key for info in store.list()])
        self.tampered: set[tuple[str, str]] = set()
        self.foreign: dict[str, bytes] = {}
        self.job_running = False
        #: The true time; the archive's clock is ``skew`` behind it.
        self.true_now = self.clock.now
        self.skew = timedelta(0)
        #: gc runs paused between two phases: (location, claim, phase, verdicts).
        self.paused: list[tuple[str, gc.Claim, str, list[gc.Verdict]]] = []
        #: Copy ids a hold (by hold id) or the running job pinned when accepted.
        self.pinned_by_hold: dict[int, set[int]] = {}
        self.pinned_by_job: set[int] = set()
        #: Blob id → the database's clock floor when it was last seen referenced (or
        #: first seen).
        self.last_referenced: dict[int, datetime] = {}
        self.audits_checked = 0
        self.last_floor = self.true_now

    def teardown(self) -> None:
        if hasattr(self, "disk"):
            self.mount_disk()

    def _unmounted_at(self) -> Path | None:
        return self.disk.with_name(self.disk.name + "-unmounted") if self.disk else None

    def _physical(self, location: str) -> Store:
        """The location's store where its bytes really are: for an unmounted disk, the
        disk itself, not the empty mount point (reads bypass the identity check)."""
        url = self.archive.config.store_url(location)
        hidden = self._unmounted_at()
        if self.disk and hidden and hidden.exists() and url == self.disk.as_uri():
            url = hidden.as_uri()
        return open_store(url, self.archive.config.locations[location].store_options())

    # -- the application ----------------------------------------------------------

    @rule(i=st.integers(0, 2), ref=st.sampled_from([None, *REFS]))
    def put(self, i: int, ref: RefSpec | None) -> None:
        # refused cleanly when being deleted right now, or the namespace is on hold
        with contextlib.suppress(Conflict, PolicyDenied):
            self.archive.put_bytes(PAYLOADS[i], ref=ref)

    @rule(i=st.integers(0, 2), ref=st.sampled_from([None, *REFS]))
    def put_rolled_back(self, i: int, ref: RefSpec | None) -> None:
        """A put that dies after publishing its object, before its commit."""
        with contextlib.suppress(BadInput, Conflict, PolicyDenied):
            ingest.put_stream(self.archive, [PAYLOADS[i]], ref, on_record=_fail_after_publish)

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
        # Conflict: a gc is past its fence on a copy of the blob — refused, not ignored
        try:
            if on:
                view = holds.add_hold(self.archive, HASHES[i], "test", "machine")
                self.pinned_by_hold[view.id] = self._live_copies(
                    select(Blob.id).where(Blob.sha256 == HASHES[i])
                )
            else:
                holds.release_holds(self.archive, HASHES[i])
        except (NotFound, Conflict):
            pass
        self._forget_released_holds()

    @rule(on=st.booleans())
    def hold_namespace(self, on: bool) -> None:
        try:
            if on:
                view = holds.add_hold(self.archive, "ns", "test", "machine")
                self.pinned_by_hold[view.id] = self._live_copies(
                    select(Reference.blob_id)
                    .join(Namespace, Reference.namespace_id == Namespace.id)
                    .where(Namespace.name == "ns")
                )
            else:
                holds.release_holds(self.archive, "ns")
        except (NotFound, Conflict):
            pass
        self._forget_released_holds()

    def _live_copies(self, blob_ids: Any, location: str | None = None) -> set[int]:
        """Copies a pin must keep: present ones (a claim taken back is present again)."""
        query = select(Copy.id).where(Copy.blob_id.in_(blob_ids), Copy.state == "present")
        if location is not None:
            query = query.join(Location, Copy.location_id == Location.id).where(
                Location.name == location
            )
        with self.archive.db.read() as session:
            return set(session.scalars(query))

    def _forget_released_holds(self) -> None:
        with self.archive.db.read() as session:
            active = set(session.scalars(select(Hold.id).where(Hold.released_at.is_(None))))
        self.pinned_by_hold = {k: v for k, v in self.pinned_by_hold.items() if k in active}

    @rule(i=st.integers(0, 2))
    def start_job(self, i: int) -> None:
        if self.job_running:
            return
        try:
            jobs.start_job(self.archive, "job", "scratch", [HASHES[i]])
        except (NotFound, Conflict):
            return
        self.job_running = True
        self.pinned_by_job = self._live_copies(
            select(Blob.id).where(Blob.sha256 == HASHES[i]), "scratch"
        )
        run_due(self.archive)

    @rule()
    def end_job(self) -> None:
        if self.job_running:
            jobs.end_job(self.archive, "job")
            self.job_running = False
            self.pinned_by_job = set()

    def _tick(self, delta: timedelta = timedelta(0)) -> None:
        self.true_now += delta
        self.clock.now = self.true_now - self.skew

    @rule(days=st.sampled_from([0.01, 1, 3, 8]))
    def time_passes(self, days: float) -> None:
        self._tick(timedelta(days=days))

    @rule(days=st.sampled_from([0, 0, 2, 30, 365]))
    def clock_steps(self, days: int) -> None:
        """The archive's clock is stepped back by ``days`` (0: corrected again)."""
        self.skew = timedelta(days=days)
        self._tick()

    @rule(
        days=st.sampled_from([2, 30, 365]),
        i=st.integers(0, 2),
        ref=st.sampled_from(REFS),
        how=st.sampled_from(["remove", "put", "replace"]),
    )
    def clock_wrong_while_unreferencing(self, days: int, i: int, ref: RefSpec, how: str) -> None:
        """The clock is behind while a blob loses its last reference (or is put without
        one); it is corrected, a day passes, gc runs."""
        self.skew = timedelta(days=days)
        self._tick()
        if how == "remove":
            self.remove_reference(ref)
        else:
            self.put(i, None if how == "put" else ref)
        self.skew = timedelta(0)
        self._tick(timedelta(days=1))
        self.run_gc()

    # -- operators and the world --------------------------------------------------

    @rule()
    def unmount_disk(self) -> None:
        """Behind safekeeper's back: the disk under a directory store goes away and
        leaves its empty mount point."""
        hidden = self._unmounted_at()
        if self.disk is None or hidden is None or hidden.exists() or not self.disk.exists():
            return
        os.rename(self.disk, hidden)
        self.disk.mkdir()

    @rule()
    def mount_disk(self) -> None:
        """The disk comes back over the mount point, hiding whatever was written there."""
        hidden = self._unmounted_at()
        if self.disk is None or hidden is None or not hidden.exists():
            return
        shutil.rmtree(self.disk)
        os.rename(hidden, self.disk)

    @rule(data=st.data())
    def disk_away_for_a_while(self, data: st.DataObject) -> None:
        """The disk is unmounted while the application and the operators carry on,
        then mounted again (the episode the two rules above make by chance)."""
        if self.disk is None:
            return
        self.unmount_disk()
        steps = st.sampled_from(["put", "replicate", "gc", "verify", "time"])
        for step in data.draw(st.lists(steps, min_size=1, max_size=6)):
            if step == "put":
                self.put(data.draw(st.integers(0, 2)), data.draw(st.sampled_from(REFS)))
            elif step == "replicate":
                self.replicate()
            elif step == "gc":
                self.run_gc()
            elif step == "verify":
                self.run_verify()
            else:
                self.time_passes(data.draw(st.sampled_from([1, 8])))
        self.mount_disk()

    @rule()
    def replicate(self) -> None:
        replication.replication_pass(self.archive)
        run_due(self.archive)

    @rule()
    def run_verify(self) -> None:
        try:
            verify(self.archive)
        except StoreIdentityError:
            return  # refuses a store that is not the recorded one (invariant 10)
        run_due(self.archive)
        self.tampered.clear()  # verify has now marked every tampered copy

    @rule(i=st.integers(0, 2), pick=st.integers(0, 1), grow=st.booleans())
    def tamper(self, i: int, pick: int, grow: bool) -> None:
        """Behind safekeeper's back: remove an object, or change its size — but never
        the last intact one (that loss would be the adversary's, not safekeeper's)."""
        where = self.tamper_targets[pick % len(self.tamper_targets)]
        store = self._physical(where)
        if not store.exists(HASHES[i]) or not self._intact_elsewhere(HASHES[i], where):
            return
        store.delete([HASHES[i]])
        if grow:
            with contextlib.suppress(AlreadyExists):
                store.put(HASHES[i], [PAYLOADS[i] + b"!"])
        self.tampered.add((where, HASHES[i]))

    @rule(i=st.integers(0, 2), where=st.integers(0, 9), flip=st.integers(0, 10_000))
    def corrupt_in_place(self, i: int, where: int, flip: int) -> None:
        """Behind safekeeper's back: same-size in-place corruption of a random present
        object (one byte changed, the timestamp kept), never the last intact one."""
        location = self.locations[where % len(self.locations)]
        if self.archive.uses_serial_keys(location):
            return  # keys are serial numbers there; planting covers that world
        store = self._physical(location)
        if not store.exists(HASHES[i]) or not self._intact_elsewhere(HASHES[i], location):
            return
        bucket = getattr(store, "_bucket", None)
        if bucket is not None:  # memory store: write in place
            with bucket.lock:
                data, modified = bucket.objects[HASHES[i]]
                at = flip % len(data)
                changed = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
                bucket.objects[HASHES[i]] = (changed, modified)
        else:  # a file: overwrite one byte where it is, then put the mtime back
            path = store._path(HASHES[i])  # type: ignore[attr-defined]
            before = path.stat()
            with path.open("r+b") as f:
                at = flip % before.st_size
                f.seek(at)
                byte = f.read(1)
                f.seek(at)
                f.write(bytes([byte[0] ^ 0xFF]))
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        self.tampered.add((location, HASHES[i]))

    @rule(i=st.integers(0, 2), pick=st.integers(0, 9))
    def plant_wrong_object(self, i: int, pick: int) -> None:
        """Behind safekeeper's back: same-size wrong bytes at a content key where no copy
        counts (none, or pending, missing, corrupt, failed) — before a put or transfer."""
        names = [n for n in self.locations if not self.archive.uses_serial_keys(n)]
        where = names[pick % len(names)]
        with self.archive.db.read() as session:
            counted = session.scalar(
                select(Copy.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .join(Location, Copy.location_id == Location.id)
                .where(
                    Blob.sha256 == HASHES[i],
                    Location.name == where,
                    Copy.state.in_([CopyState.PRESENT, CopyState.DELETING]),
                )
            )
        if counted is not None:
            return
        store = self._physical(where)  # an unmounted disk too: where the bytes are
        store.delete([HASHES[i]])
        store.put(HASHES[i], [WRONG[i]])

    @rule()
    def plant_at_next_serial(self) -> None:
        """Another blob's bytes at the interval key the next put will get, as a database
        restored from an older backup leaves them: never to be overwritten."""
        serial = [n for n in self.locations if self.archive.uses_serial_keys(n)]
        if not serial:
            return
        with self.archive.db.read() as session:
            upcoming = session.scalar(
                select(IdSequence.next_value).where(IdSequence.name == "blobs")
            )
        store = self.archive.store(serial[0])
        key = str(upcoming)
        if not store.exists(key):
            store.put(key, [b"bytes of a blob the database forgot"])
            self.foreign[key] = b"bytes of a blob the database forgot"

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
            # A refused store (invariant 10) leaves the claims for recovery.
            with contextlib.suppress(StoreIdentityError):
                gc.process_claimed(self.archive, location, ids, "machine", gc.GcReport())

    @rule(data=st.data())
    def gc_dies_half_way(self, data: st.DataObject) -> None:
        """Claims copies, maybe deletes some objects, then dies without recording."""
        deletions = planner.make_plan(self.archive).deletions
        if not deletions:
            return
        chosen = data.draw(st.lists(st.sampled_from(deletions), max_size=3, unique=True))
        for deletion in chosen:
            held = gc.claim(self.archive, [deletion.copy_id])
            if not held:
                continue
            verdicts = gc.recheck(self.archive, held.copy_ids)
            if (
                data.draw(st.booleans())
                and verdicts
                and verdicts[0].decision.allowed
                and gc.fence(self.archive, held, held.copy_ids)
            ):
                with contextlib.suppress(StoreIdentityError):
                    gc.delete_objects(self.archive, deletion.location, verdicts)

    @rule()
    def claims_go_stale(self) -> None:
        self._tick(timedelta(minutes=11))

    @rule()
    def another_gc_recovers_claims(self) -> None:
        gc.recover_stale_claims(self.archive, "recoverer", gc.GcReport())

    @rule(data=st.data(), phase=st.sampled_from(["claim", "recheck", "delete"]))
    def gc_pauses(self, data: st.DataObject, phase: str) -> None:
        """A gc runs up to a phase and stops there (until ``paused_gc_resumes``)."""
        deletions = planner.make_plan(self.archive).deletions
        if not deletions:
            return
        location = data.draw(st.sampled_from(sorted({d.location for d in deletions})))
        ids = [d.copy_id for d in deletions if d.location == location][:2]
        held = gc.claim(self.archive, ids)
        verdicts: list[gc.Verdict] = []
        if phase in ("recheck", "delete"):
            verdicts = gc.recheck(self.archive, held.copy_ids)
        if phase == "delete":
            allowed = [v for v in verdicts if v.decision.allowed]
            gc.release(
                self.archive, held, [v.facts.copy_id for v in verdicts if not v.decision.allowed]
            )
            owned = gc.fence(self.archive, held, [v.facts.copy_id for v in allowed])
            verdicts = [v for v in allowed if v.facts.copy_id in owned]
            gone = gc.delete_objects(self.archive, location, verdicts) if verdicts else set()
            verdicts = [v for v in verdicts if v.facts.copy_id in gone]
        self.paused.append((location, held, phase, verdicts))

    @rule(
        data=st.data(),
        phase=st.sampled_from(["claim", "recheck", "delete"]),
        other=st.sampled_from(["recovery", "gc", "hold", "job", "nothing"]),
    )
    def gc_paused_while_others_act(self, data: st.DataObject, phase: str, other: str) -> None:
        """The interleavings that matter, in one step: a gc pauses after a phase; its
        claims expire and another gc recovers them (alone, or in a whole run), or a
        hold or a staging job lands on the blob it claimed; then it resumes."""
        before = len(self.paused)
        self.gc_pauses(data, phase)
        if len(self.paused) == before:
            return
        _, held, _, _ = self.paused[-1]
        if other in ("recovery", "gc"):
            self.claims_go_stale()
            if other == "recovery":
                self.another_gc_recovers_claims()
            else:
                self.run_gc()
        elif other in ("hold", "job") and held.copy_ids:
            with self.archive.db.read() as session:
                sha256 = session.scalar(
                    select(Blob.sha256)
                    .join(Copy, Copy.blob_id == Blob.id)
                    .where(Copy.id == held.copy_ids[0])
                )
            i = HASHES.index(str(sha256))
            if other == "hold":
                self.hold_blob(i, True)
            else:
                self.start_job(i)
        self._resume(len(self.paused) - 1)

    @rule(data=st.data())
    def paused_gc_resumes(self, data: st.DataObject) -> None:
        if not self.paused:
            return
        self._resume(data.draw(st.integers(0, len(self.paused) - 1)))

    def _resume(self, index: int) -> None:
        location, held, phase, verdicts = self.paused.pop(index)
        report = gc.GcReport()
        if phase == "claim":
            gc.process_claimed(self.archive, location, held, "machine", report)
            return
        if phase == "recheck":
            allowed = [v for v in verdicts if v.decision.allowed]
            gc.release(
                self.archive, held, [v.facts.copy_id for v in verdicts if not v.decision.allowed]
            )
            owned = gc.fence(self.archive, held, [v.facts.copy_id for v in allowed])
            verdicts = [v for v in allowed if v.facts.copy_id in owned]
            gone = gc.delete_objects(self.archive, location, verdicts) if verdicts else set()
            verdicts = [v for v in verdicts if v.facts.copy_id in gone]
        gc.record_deleted(self.archive, held, verdicts, "machine")

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
            store = self._physical(location)
            try:
                data = b"".join(store.open(self.archive.key_for(location, blob.sha256, blob.id)))
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
                select(Location.name, Blob.sha256, Blob.id)
                .join(Copy, Copy.location_id == Location.id)
                .join(Blob, Copy.blob_id == Blob.id)
                .where(Copy.state == CopyState.PRESENT)
            ).all()
        for location, sha256, blob_id in rows:
            if (location, sha256) in self.tampered:
                continue
            key = self.archive.key_for(location, sha256, blob_id)
            data = b"".join(self._physical(location).open(key))  # NotFound fails
            assert hashlib.sha256(data).hexdigest() == sha256, (location, key, sha256[:12])

    @invariant()
    def foreign_objects_are_never_overwritten(self) -> None:
        if not hasattr(self, "archive"):
            return
        serial = [n for n in self.locations if self.archive.uses_serial_keys(n)]
        for key, data in self.foreign.items():
            assert b"".join(self.archive.store(serial[0]).open(key)) == data, key

    @invariant()
    def pinned_copies_are_not_deleted(self) -> None:
        if not hasattr(self, "archive"):
            return
        pinned = set(self.pinned_by_job).union(*self.pinned_by_hold.values())
        if not pinned:
            return
        with self.archive.db.read() as session:
            gone = set(
                session.scalars(select(Copy.id).where(Copy.id.in_(pinned), Copy.state == "deleted"))
            )
        assert not gone, f"copies deleted under a hold or a job: {gone}"

    @invariant()
    def garbage_waits_its_grace_period_by_the_databases_clock(self) -> None:
        """A blob deleted as garbage was last referenced (or created) at least a grace
        period ago by the database's clock — its clock floor then — measured on the
        true clock, whatever the archive's clock said meanwhile."""
        if not hasattr(self, "archive"):
            return
        grace = self.archive.config.policy.grace_period
        with self.archive.db.read() as session:
            blobs = dict(session.execute(select(Blob.sha256, Blob.id)).all())
            referenced = set(session.scalars(select(Reference.blob_id)))
            entries = session.execute(
                select(AuditEntry.blob_sha256, AuditEntry.rule)
                .order_by(AuditEntry.id)
                .offset(self.audits_checked)
            ).all()
            db_now = session.scalar(select(ClockFloor.high_water))
        for sha256, why in entries:
            if why == "garbage":
                # created and deleted within this step: its floor was at least the last
                last = self.last_referenced.get(blobs[sha256], self.last_floor)
                assert self.true_now - last >= grace - STEP, (
                    f"{sha256[:12]} deleted as garbage {self.true_now - last} after its "
                    "last reference by the database's clock"
                )
        self.audits_checked += len(entries)
        for blob_id in blobs.values():
            if blob_id in referenced or blob_id not in self.last_referenced:
                self.last_referenced[blob_id] = db_now or self.true_now
        self.last_floor = db_now or self.true_now

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


def test_same_size_corruption_replayed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The shortest path to a loss through same-size corruption, replayed without
    hypothesis (fast): a referenced blob, replicated, its mirror copy rewritten in place,
    then gc. gc must keep the inbox copy (it once deleted it on the mirror's size)."""
    config_text, tamper_targets = WORLDS["mutual"]
    data_dir = tmp_path_factory.mktemp("replay")
    (data_dir / "safekeeper.toml").write_text(config_text)
    clock = Clock()
    with Archive(load_config(data_dir=data_dir, environ={}), clock=clock) as archive:
        SHARED["world"] = (archive, clock, tamper_targets)
        machine = DeletionMachine()
        machine.reset()
        machine.put(0, REFS[0])
        machine.replicate()
        machine.corrupt_in_place(0, machine.locations.index("mirror"), 5)
        assert ("mirror", HASHES[0]) in machine.tampered
        machine.run_gc()
        machine.protected_blobs_keep_a_good_copy()
        machine.present_copies_have_their_objects()
        machine.every_deletion_is_audited_once()
        assert archive.store("inbox").exists(HASHES[0])
