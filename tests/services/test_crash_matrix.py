"""Crash matrix: real ``safekeeper`` CLI processes SIGKILLed at random moments of
``put``, ``import`` (of a bundle made by ``export``), ``verify --adopt``,
``replicate --wait`` (embedded executor) and ``gc`` — at least 100 kills in all —
each followed by convergence and a look at the physical truth.

Every round gives each command fresh work (a new tree to put, a bundle whose blobs
the last round's gc deleted, planted orphans, those to replicate, references removed
for gc), runs it and SIGKILLs it after a delay drawn uniformly from late in the CLI's
start-up to the end of the command's measured duration (round 0 runs every command
uninterrupted to measure it; a run that ends before its kill measures it again, and a
kill that finds nothing changed yet moves later kills of that command later), so that
most kills land in its work — the test counts and asserts them. Right after the
kill, nothing it left may contradict the catalog: every ``present`` copy's object
hashes to its blob, and every referenced or held blob keeps a good copy. Then
convergence: the command again (a CLI process), to completion, and gc (in this
process; after a killed gc, the CLI's gc past the claim timeout, so that the dead
one's claims are recovered) — and the physical truth once more, read from the stores:

- every blob with a reference or a hold has a copy whose bytes hash to its id;
- every ``present`` copy's object exists at its key with the right bytes;
- no copy is left ``deleting``;
- every ``deleted`` copy has exactly one audit row, and a copy gc deleted has no
  object left;
- the command's work is done (files referenced, bundle imported, orphans adopted,
  replicas made);
- an uninterrupted run leaves no temp file in a store's ``.tmp``; those the kills left
  are removed by the next run once old (at the end, aged past ``STALE_TEMP_SECONDS``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import delete, exists, func, select, update

from safekeeper.archive import STALE_TEMP_SECONDS, Archive
from safekeeper.config import load_config
from safekeeper.db.clock import sane_now
from safekeeper.db.models import (
    AuditEntry,
    Blob,
    Copy,
    CopyState,
    Hold,
    Location,
    Namespace,
    Reference,
    Task,
)
from safekeeper.db.refs import list_references
from safekeeper.errors import NotFound
from safekeeper.ids import RefSpec
from safekeeper.services.deletion.gc import run_gc
from safekeeper.services.deletion.holds import add_hold, release_holds
from safekeeper.services.packaging.packages import put_package
from safekeeper.stores.filesystem import TMP_DIR
from tests.packages.zips import build_html_package

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SEED = 20261201
COMMANDS = ("put", "import", "verify", "replicate", "gc")
LOCATIONS = ("inbox", "vault", "tape")
#: Rounds of five kills each (one per command), after the measuring round 0.
ROUNDS = 20
PG_ROUNDS = 3
#: Small files per tree (plus two larger ones).
SMALL = 160
BUNDLE_SMALL = 120
#: Orphans planted per location for ``verify --adopt``.
ORPHANS = 15
#: References kept, and blobs held instead, when gc's work is made.
KEPT = 4
HELD = 3
#: Claims older than this are stale: a killed gc's are recovered after sleeping past it.
CLAIM_TIMEOUT = 0.5

CONFIG = """
{database}
[policy]
grace_period = "0s"
gc_batch_size = 20
gc_batch_deadline = "250ms"
gc_claim_timeout = "500ms"

[tasks]
threads = 2
heartbeat_timeout = "1s"
retry_base = "100ms"
retry_max = "1s"

[locations.inbox]
kind = "source"
store = "file:inbox"

[locations.vault]
kind = "archive"
store = "file:vault"

[locations.tape]
kind = "archive"
store = "file:tape"
layout = "interval"
interval_size = 100
"""


def _tree(root: Path, rng: random.Random, small: int, big: int = 2) -> dict[str, bytes]:
    """A few hundred small files and a few larger ones, all new content."""
    root.mkdir(parents=True)
    files = {f"s{i:03d}.bin": rng.randbytes(rng.randint(1, 8192)) for i in range(small)}
    files |= {f"big{i}.bin": rng.randbytes(1024 * 1024) for i in range(big)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}


@dataclass
class Matrix:
    archive: Archive
    config_path: Path
    rng: random.Random
    work: Path
    postgres: bool
    held: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    kills: Counter[str] = field(default_factory=Counter)
    midway: Counter[str] = field(default_factory=Counter)
    #: Kills after the command had changed something (catalog rows, temp files).
    mid_work: Counter[str] = field(default_factory=Counter)
    #: Kills that left temp files (killed while writing objects).
    mid_write: Counter[str] = field(default_factory=Counter)
    #: Per command, the longest delay whose kill found nothing changed yet.
    low: dict[str, float] = field(default_factory=dict)
    startup: float = 0.0

    # -- processes --------------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "safekeeper", "--config", str(self.config_path), *args]

    def run(self, *args: str) -> float:
        """Run a command to completion; return how long it took."""
        started = time.monotonic()
        done = subprocess.run(
            self.argv(*args),
            env=_env(),
            cwd=self.work,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{args} failed: {done.stderr.decode()[-2000:]}"
        return time.monotonic() - started

    def kill_at_random(self, command: str, *args: str) -> float:
        """Start the command, SIGKILL it after a random delay (unless it finished
        first); return the delay. The delays skip most of the interpreter's start-up,
        where a kill interrupts nothing of the command."""
        duration = self.durations[command]
        low = min(self.low.get(command, 0.8 * self.startup), 0.7 * duration)
        delay = self.rng.uniform(low, 0.9 * duration)
        before = self.footprint()
        with (self.work / "stderr.txt").open("w+b") as stderr:
            process = subprocess.Popen(
                self.argv(*args),
                env=_env(),
                cwd=self.work,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            self.kills[command] += 1
            started = time.monotonic()
            while process.poll() is None and time.monotonic() - started < delay:
                time.sleep(0.005)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                self.midway[command] += 1
                if self.footprint() != before:
                    self.mid_work[command] += 1
                else:
                    # Killed before it changed anything: later kills start later.
                    self.low[command] = max(self.low.get(command, 0.0), delay)
            else:
                # It ran to its end: a fresh measure of how long it takes now (the
                # machine's load changes), for the next kills.
                self.durations[command] = time.monotonic() - started
            returncode = process.wait()
            stderr.seek(0)
            assert returncode in (0, -signal.SIGKILL), (
                f"{command} failed on its own: {stderr.read().decode()[-2000:]}"
            )
        return delay

    def converge(self, command: str, *args: str) -> None:
        """The command again, to completion, then gc (past the claim timeout when the
        killed command was gc, so that its claims are stale and recovered)."""
        if command == "gc":
            time.sleep(CLAIM_TIMEOUT + 0.1)
            self.run(*args)
        else:
            self.run(*args)
            run_gc(self.archive, actor="crash-matrix")

    def footprint(self) -> tuple[object, ...]:
        """What the commands change as they work: copy and task rows (states, times,
        attempts), blobs, references, audit rows, temp files."""
        with self.archive.db.read() as session:
            copies = session.execute(
                select(
                    Copy.state, func.count(), func.max(Copy.updated_at), func.max(Copy.verified_at)
                )
                .group_by(Copy.state)
                .order_by(Copy.state)
            ).all()
            tasks = session.execute(
                select(Task.state, func.count(), func.sum(Task.attempts))
                .group_by(Task.state)
                .order_by(Task.state)
            ).all()
            counts = [
                session.scalar(select(func.count()).select_from(table))
                for table in (Blob, Reference, AuditEntry)
            ]
        return tuple(copies), tuple(tasks), tuple(counts), self.temp_files()

    # -- the physical truth --------------------------------------------------------------

    def copies(self) -> list[tuple[int, int, str, str, str]]:
        """(copy id, blob id, sha256, location, state) of every copy row."""
        with self.archive.db.read() as session:
            return [
                (int(c), int(b), s, loc, st)
                for c, b, s, loc, st in session.execute(
                    select(Copy.id, Blob.id, Blob.sha256, Location.name, Copy.state)
                    .join(Blob, Copy.blob_id == Blob.id)
                    .join(Location, Copy.location_id == Location.id)
                )
            ]

    def hashes_right(self, location: str, sha256: str, blob_id: int) -> bool:
        key = self.archive.key_for(location, sha256, blob_id)
        digest = hashlib.sha256()
        try:
            for chunk in self.archive.store(location).open(key):
                digest.update(chunk)
        except NotFound:
            return False
        return digest.hexdigest() == sha256

    def protected(self) -> set[int]:
        with self.archive.db.read() as session:
            blobs = set(session.scalars(select(Reference.blob_id)))
            held = session.scalars(select(Hold.blob_id).where(Hold.released_at.is_(None)))
            return blobs | {b for b in held if b is not None}

    def check_safe(self, context: str, *, converged: bool) -> None:
        """What must hold at every moment (``converged``: also after recovery)."""
        rows = self.copies()
        good: set[int] = set()
        for _copy_id, blob_id, sha256, location, state in rows:
            if state == CopyState.PRESENT:
                assert self.hashes_right(location, sha256, blob_id), (
                    f"{context}: present copy of {sha256[:12]} at {location} has no object "
                    "with its bytes"
                )
                good.add(blob_id)
            elif (
                state == CopyState.DELETING
                and not converged
                and self.hashes_right(location, sha256, blob_id)
            ):
                good.add(blob_id)  # claimed by the killed gc, not deleted yet
        lost = self.protected() - good
        assert not lost, f"{context}: referenced or held blobs without a good copy: {lost}"
        if not converged:
            return
        deleting = [r for r in rows if r[4] == CopyState.DELETING]
        assert not deleting, f"{context}: copies left deleting: {deleting}"
        deleted = {r[0] for r in rows if r[4] == CopyState.DELETED}
        audited = self.audited_copies()
        assert set(audited) == deleted, (
            f"{context}: deleted without audit {deleted - set(audited)}, "
            f"audited but not deleted {set(audited) - deleted}"
        )
        twice = {c: n for c, n in audited.items() if n != 1}
        assert not twice, f"{context}: copies audited more than once: {twice}"

    def audited_copies(self, after: int = 0) -> Counter[int]:
        with self.archive.db.read() as session:
            return Counter(
                int(json.loads(evidence)["copy_id"])
                for evidence in session.scalars(
                    select(AuditEntry.evidence).where(
                        AuditEntry.action.startswith("delete"), AuditEntry.id > after
                    )
                )
            )

    def last_audit_id(self) -> int:
        with self.archive.db.read() as session:
            return int(session.scalar(select(AuditEntry.id).order_by(AuditEntry.id.desc())) or 0)

    def temp_files(self) -> int:
        return sum(
            len(list((self.work / name / TMP_DIR).glob("*")))
            for name in LOCATIONS
            if (self.work / name / TMP_DIR).is_dir()
        )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def matrix(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Matrix]:
    database = ""
    if request.param == "postgresql":
        database = f'[database]\nurl = "{request.getfixturevalue("postgres_url")}"\n'
    work = tmp_path / "world"
    work.mkdir()
    config_path = work / "safekeeper.toml"
    config_path.write_text(CONFIG.format(database=database))
    with Archive(load_config(config_path, environ={})) as archive:
        yield Matrix(archive, config_path, random.Random(SEED), work, request.param == "postgresql")


def _make_bundle(matrix: Matrix, small: int) -> tuple[Path, int]:
    """A bundle of namespace ``course`` (files and an HTML package) exported by the CLI
    from another deployment. Returns its path and its number of references."""
    source_dir = matrix.work.parent / "source"
    # More bytes than a put tree: an import's work is mostly staging them.
    tree = _tree(matrix.work.parent / "course", matrix.rng, small, big=8)
    with Archive(load_config(data_dir=source_dir, environ={})) as source:
        for name, data in tree.items():
            source.put_bytes(data, ref=f"course:files/{name}")
        put_package(
            source,
            io.BytesIO(build_html_package(marker=b"<!-- crash -->")),
            RefSpec("course", "site"),
        )
    bundle = matrix.work.parent / "course.tar"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "safekeeper",
            "--data-dir",
            str(source_dir),
            "export",
            "course",
            "-o",
            str(bundle),
        ],
        env=_env(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return bundle, len(tree) + 1


class Round:
    """One round: every command once, on fresh work; round 0 measures them."""

    def __init__(self, matrix: Matrix, number: int, bundle: Path, bundle_refs: int) -> None:
        self.m, self.number, self.bundle, self.bundle_refs = matrix, number, bundle, bundle_refs
        self.put_files: dict[str, bytes] = {}

    def cycle(self, command: str, args: tuple[str, ...]) -> str:
        """Run ``command`` (measured in round 0, killed at random later), converge,
        check; return the context for the command's own checks."""
        m = self.m
        if self.number == 0:
            m.durations[command] = m.run(*args)
            context = f"round 0: {command} uninterrupted"
            if command != "gc":
                run_gc(m.archive, actor="crash-matrix")
            m.check_safe(context, converged=True)
            assert m.temp_files() == 0, f"{context}: left temp files"
            return context
        before = m.temp_files()
        delay = m.kill_at_random(command, *args)
        context = f"seed {SEED}, round {self.number}, {command} killed after {delay:.3f}s"
        m.check_safe(context, converged=False)
        left = m.temp_files()
        if left > before:
            m.mid_write[command] += 1  # killed while writing an object
        m.converge(command, *args)
        context += ", then converged"
        m.check_safe(context, converged=True)
        assert m.temp_files() == left, f"{context}: an uninterrupted run left temp files"
        return context

    def refs(self, namespace: str) -> dict[str, str]:
        with self.m.archive.db.read() as session:
            return {r.key: r.blob for r in list_references(session, namespace)}

    def put(self) -> None:
        tree = self.m.work / "trees" / f"put{self.number}"
        self.put_files = _tree(tree, self.m.rng, SMALL)
        context = self.cycle("put", ("put", str(tree), "--ref", f"put{self.number}:f"))
        expected = {f"f/{name}": _sha(data) for name, data in self.put_files.items()}
        assert self.refs(f"put{self.number}") == expected, context

    def import_(self) -> None:
        namespace = f"imp{self.number}"
        context = self.cycle("import", ("import", str(self.bundle), "--into", namespace))
        assert len(self.refs(namespace)) == self.bundle_refs, context

    def verify(self) -> None:
        """Orphans to adopt: new blobs' bytes at their keys in ``inbox`` and ``vault``,
        this round's put blobs at their serial keys in ``tape``; and objects whose bytes
        are not their key's blob, which must never be adopted."""
        m = self.m
        planted: list[tuple[str, str]] = []
        for i in range(ORPHANS):
            data = m.rng.randbytes(m.rng.randint(1, 8192))
            location = "inbox" if i % 2 else "vault"
            m.archive.store(location).put(_sha(data), [data])
            planted.append((location, _sha(data)))
        with m.archive.db.read() as session:
            ids = dict(
                session.execute(
                    select(Blob.sha256, Blob.id).where(
                        Blob.sha256.in_([_sha(d) for d in self.put_files.values()])
                    )
                ).all()
            )
        for data in list(self.put_files.values())[:ORPHANS]:
            m.archive.store("tape").put(str(ids[_sha(data)]), [data])
            planted.append(("tape", _sha(data)))
        wrong = [_sha(m.rng.randbytes(32)) for _ in range(3)]
        for key in wrong:
            m.archive.store("vault").put(key, [m.rng.randbytes(100)])
        context = self.cycle("verify", ("verify", "--adopt"))
        recorded = {(location, sha) for _, _, sha, location, _ in m.copies()}
        missed = [p for p in planted if p not in recorded]
        assert not missed, f"{context}: orphans not adopted: {missed}"
        with m.archive.db.read() as session:
            adopted = session.scalars(select(Blob.sha256).where(Blob.sha256.in_(wrong))).all()
        assert not adopted, f"{context}: adopted objects whose bytes are not their key's"
        m.archive.store("vault").delete(wrong)

    def replicate(self) -> None:
        m = self.m
        context = self.cycle("replicate", ("replicate", "--wait"))
        archived = {
            b for _, b, _, loc, st in m.copies() if loc != "inbox" and st == CopyState.PRESENT
        }
        missing = m.protected() - archived
        assert not missing, f"{context}: blobs without an archive copy: {missing}"

    def gc(self) -> None:
        """References of this round removed (a few kept, a few blobs held instead):
        every copy of the rest is garbage; last round's holds released."""
        m = self.m
        with m.archive.db.write() as session:
            # Like ``ref rm`` of each, in bulk: the blobs' grace periods start now.
            references = session.execute(
                select(Reference.id, Reference.blob_id)
                .join(Namespace, Reference.namespace_id == Namespace.id)
                .where(Namespace.name.in_([f"put{self.number}", f"imp{self.number}"]))
                .order_by(Reference.id)
            ).all()
            dropped = m.rng.sample(references, len(references) - KEPT)
            session.execute(delete(Reference).where(Reference.id.in_([r for r, _ in dropped])))
            removed = {b for _, b in dropped}
            session.execute(
                update(Blob)
                .where(Blob.id.in_(removed), ~exists().where(Reference.blob_id == Blob.id))
                .values(unreferenced_since=sane_now(session, m.archive.clock()))
            )
        with m.archive.db.read() as session:
            shas = session.scalars(select(Blob.sha256).where(Blob.id.in_(removed))).all()
        for sha in m.held:
            release_holds(m.archive, sha)
        m.held = m.rng.sample(sorted(shas), HELD)
        for sha in m.held:
            add_hold(m.archive, sha, "crash matrix", "crash-matrix")
        since = m.last_audit_id()
        context = self.cycle("gc", ("gc",))
        live = {(b, loc) for _, b, _, loc, st in m.copies() if st != CopyState.DELETED}
        rows = {c: (b, s, loc) for c, b, s, loc, _ in m.copies()}
        for copy_id in m.audited_copies(after=since):
            blob_id, sha256, location = rows[copy_id]
            if (blob_id, location) not in live:
                key = m.archive.key_for(location, sha256, blob_id)
                assert not m.archive.store(location).exists(key), (
                    f"{context}: deleted copy of {sha256[:12]} still has its object at {location}"
                )


def test_crash_matrix(matrix: Matrix) -> None:
    rounds = PG_ROUNDS if matrix.postgres else ROUNDS
    started = time.monotonic()
    bundle, bundle_refs = _make_bundle(matrix, BUNDLE_SMALL)
    for number in range(rounds + 1):
        round_ = Round(matrix, number, bundle, bundle_refs)
        round_.put()
        round_.import_()
        round_.verify()
        round_.replicate()
        round_.gc()
        if number == 0:
            # A command with next to nothing to do: how long starting up takes.
            matrix.startup = min(matrix.run("ref", "ls", "put0") for _ in range(3))
            print(f"\nmeasured: start-up {matrix.startup:.2f}s, {matrix.durations}")
    # The temp files the kills left: once old, the next run to open a store removes them.
    left = matrix.temp_files()
    for name in LOCATIONS:
        for path in (matrix.work / name / TMP_DIR).glob("*"):
            old = time.time() - STALE_TEMP_SECONDS - 60
            os.utime(path, (old, old))
    matrix.run("verify")
    assert matrix.temp_files() == 0, "stale temp files were not cleaned"
    total, midway = sum(matrix.kills.values()), sum(matrix.midway.values())
    mid_work = sum(matrix.mid_work.values())
    print(
        f"{total} kills in {time.monotonic() - started:.0f}s: {midway} before the command "
        f"ended, {mid_work} of them after it had changed something, "
        f"{sum(matrix.mid_write.values())} while writing objects ({left} temp files left)\n"
        f"kills {dict(matrix.kills)}\nbefore the end {dict(matrix.midway)}\n"
        f"mid-work {dict(matrix.mid_work)}\nleaving temp files {dict(matrix.mid_write)}"
    )
    assert total == len(COMMANDS) * rounds >= (5 if matrix.postgres else 100)
    # Not vacuous: most kills interrupted the command, in every column of the matrix
    # (the few PostgreSQL rounds are more at the mercy of the machine's load).
    assert midway >= (0.5 if matrix.postgres else 0.8) * total
    assert mid_work >= (0.3 if matrix.postgres else 0.5) * total
    for command in COMMANDS:
        if matrix.kills[command] >= 10:
            assert matrix.midway[command] >= 0.6 * matrix.kills[command], command
