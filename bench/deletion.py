"""Deletion benchmark: the deletion plan at scale, ``safekeeper gc`` against ``find -delete``,
and put + replicate + gc end to end against git-annex.

    python bench/deletion.py                       # everything, full sizes (about an hour)
    python bench/deletion.py --quick               # small sizes, one repeat (smoke test)
    python bench/deletion.py --only plan --backends sqlite --json-out bench/out/del.json

Benchmarks:

``plan``
    ``make_plan(archive)`` timed in-process (median of ``--repeats``) over a database
    filled directly with bulk INSERTs through SQLAlchemy: ``--plan-blobs`` blobs (two
    sizes, default 25,000 and 250,000) with a copy row at each of four locations (inbox,
    buffer, two archives: 100k and 1M copies), in a realistic mix — most blobs archived,
    some not yet (pending copies with queued transfer tasks), some inbox copies already
    deleted, some damaged archive copies, references, unreferenced blobs inside and past
    the grace period, a few blob holds (the same ones at both sizes: 25 in a full run)
    and a namespace hold over 1 % of the blobs. Stores are ``memory://`` and stay
    empty: planning reads only the database. On SQLite and on PostgreSQL (a private
    cluster started here on loopback, as tests/pg.py does). Targets: <= 3 s at the
    larger size on each backend, and larger/smaller time ratio <= 10 (issue 17). The CLI
    ``safekeeper plan --json > /dev/null`` is timed once at the larger size (info).
``gc``
    ``--gc-count`` small files put into the inbox and replicated (untimed), then timed
    ``safekeeper gc`` (claims, re-checks against the archive store, deletes the inbox
    copies, records them with audit rows) against ``find DIR -type f -delete`` on a copy
    of the same inbox tree. Both sides start from a fresh ``cp -a`` of the prepared
    tree (the archive store, only read by gc, is hard-linked). Ratio = gc files/s /
    find files/s; target >= 0.8 (issue 17; audit and re-confirmation included).
``e2e``
    ``--e2e-count`` files end to end. safekeeper: ``put DIR``, ``replicate --wait``,
    ``gc`` (deletes the inbox copies once archived) in a fresh data dir; git-annex:
    ``git annex add``, ``git annex copy --to archive`` (a directory special remote),
    ``git annex drop`` (numcopies 1, so drop checks the archive copy) in a fresh
    repository. Ratio = annex total / safekeeper total ("x faster"); target >= 20.

Baseline and safekeeper runs are interleaved, alternating which goes first; dirty
pages are written back before each timed run. Tables show medians, ``--json-out``
every sample.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from common import (
    CommandFailed,
    Row,
    Samples,
    add_output_options,
    alternate,
    annex_version,
    clone_data_dir,
    clone_tree,
    count_files,
    exit_status,
    find_executable,
    flush_disk,
    format_bytes,
    free_port,
    git_env,
    have_tools,
    log,
    machine_info,
    parse_only,
    parse_size,
    remove,
    report,
    run,
    run_timed,
    run_timed_devnull,
    verdict,
    workdir,
    write_random_files,
    write_safekeeper_config,
)

if TYPE_CHECKING:
    from sqlalchemy import Table

BENCHMARKS = ("plan", "gc", "e2e")
BACKENDS = ("sqlite", "postgresql")
PLAN_SECONDS_TARGET = 3.0
PLAN_GROWTH_TARGET = 10.0
GC_TARGET = 0.8
E2E_TARGET = 20.0
LOCATIONS = ("inbox", "buffer", "archive-a", "archive-b")


@dataclass(frozen=True)
class Defaults:
    plan_blobs: tuple[int, int]
    gc_count: int
    e2e_count: int
    repeats: int


FULL = Defaults(plan_blobs=(25_000, 250_000), gc_count=100_000, e2e_count=10_000, repeats=3)
QUICK = Defaults(plan_blobs=(250, 2_500), gc_count=100, e2e_count=50, repeats=1)


@dataclass(frozen=True)
class Settings:
    work: Path
    safekeeper: str
    repeats: int
    annex_repeats: int
    plan_blobs: tuple[int, int]
    backends: tuple[str, ...]
    gc_count: int
    e2e_count: int
    file_size: int


Result = tuple[dict[str, Any], list[Row]]


# -- PostgreSQL ------------------------------------------------------------------------


def pg_bindir() -> Path | None:
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        bindir = out.stdout.strip()
        if bindir and (Path(bindir) / "initdb").exists():
            return Path(bindir)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(found[0]).parent if found else None


def postgres_missing() -> str | None:
    """Why a private PostgreSQL cannot be started here, or None if it can."""
    if pg_bindir() is None:
        return "PostgreSQL server binaries (initdb) not found"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'safekeeper[postgres]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server"
    return None


#: Server options for a load that need not survive a crash.
NO_DURABILITY = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]


@contextlib.contextmanager
def postgres_server(keep: bool, *, durable: bool = False) -> Iterator[str]:
    """A private cluster on loopback (like tests/pg.py); yields a URL to a fresh database.

    Durability is off (fsync, synchronous_commit, full_page_writes) unless ``durable``:
    it only speeds up the bulk load; the timed plan only reads.
    """
    import sqlalchemy

    bindir = pg_bindir()
    assert bindir is not None
    user = "postgres" if os.geteuid() == 0 else None
    as_user = ["runuser", "-u", user, "--"] if user else []
    base = Path(tempfile.mkdtemp(prefix="safekeeper-bench-pg-"))
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    if user:
        shutil.chown(base, user)
        shutil.chown(sockets, user)
    port = free_port()
    run(
        [
            *as_user,
            bindir / "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
    )
    log_file = open(base / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            *as_user,
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(sockets),
            *([] if durable else NO_DURABILITY),
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with admin.connect() as connection:
                    connection.exec_driver_sql("CREATE DATABASE skbench")
                break
            except sqlalchemy.exc.OperationalError as exc:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not start: {(base / 'server.log').read_text()}"
                    ) from exc
                time.sleep(0.2)
        log(f"postgresql: private cluster on 127.0.0.1:{port} ({bindir})")
        yield admin_url.rsplit("/", 1)[0] + "/skbench"
    finally:
        admin.dispose()
        server.terminate()
        server.wait(timeout=60)
        log_file.close()
        if keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


# -- plan: a database of a realistic archive -------------------------------------------


def plan_config(database_url: str | None) -> dict[str, Any]:
    """Four locations on memory:// stores (planning never reads a store)."""
    document: dict[str, Any] = {
        "policy": {"min_archive_copies": 1, "grace_period": "7d"},
        "sites": {"local": {"description": "this machine"}},
        "locations": {
            "inbox": {"kind": "source", "site": "local", "store": "memory://inbox"},
            "buffer": {
                "kind": "buffer",
                "site": "local",
                "store": "memory://buffer",
                "retention": "3d",
                "delete_after_copies_at": ["archive-a", "archive-b"],
            },
            "archive-a": {"kind": "archive", "site": "local", "store": "memory://archive-a"},
            "archive-b": {"kind": "archive", "site": "local", "store": "memory://archive-b"},
        },
    }
    if database_url:
        document["database"] = {"url": database_url}
    return document


#: (inbox, buffer, archive-a, archive-b) copy states per kind of blob; "present*" is a
#: verified present copy. Kinds by ``i % 100``: see ``blob_kind``.
SHAPES: dict[str, tuple[str, str, str, str]] = {
    "archived": ("present", "present", "present*", "present*"),
    "inbox-gone": ("deleted", "present", "present*", "present*"),
    "half-archived": ("present", "present", "present*", "pending"),
    "new": ("present", "present", "pending", "pending"),
    "garbage": ("present", "present", "present*", "present*"),
    "recently-unreferenced": ("present", "present", "present*", "present*"),
    "damaged": ("present", "present", "missing", "corrupt"),
    "failed": ("present", "deleted", "failed", "present*"),
    "held": ("present", "present", "present*", "present*"),
    "namespace-held": ("present", "present", "present*", "present*"),
}


def blob_kind(i: int, held_below: int) -> str:
    """The kind of blob ``i``; blob holds only on blobs below ``held_below``."""
    r = i % 100
    if r < 60:
        return "archived"
    if r < 70:
        return "inbox-gone"
    if r < 78:
        return "half-archived"
    if r < 86:
        return "new"
    if r < 91:
        return "garbage"
    if r < 94:
        return "recently-unreferenced"
    if r < 96:
        return "damaged"
    if r == 96:
        return "failed"
    if r == 97 and i < held_below and (i // 100) % 10 == 0:
        return "held"  # a few blobs have a hold of their own: the same ones at every size
    if r == 98:
        return "namespace-held"
    return "archived"


def populate(
    database: Any, location_ids: dict[str, int], start: int, stop: int, held_below: int
) -> int:
    """Insert blobs ``start`` .. ``stop - 1`` with their copies, references, tasks and
    holds, in bulk INSERTs of 20,000 rows; return the number of copy rows."""
    from sqlalchemy import func, insert, select

    from safekeeper.db.models import Blob, Copy, Hold, Namespace, Reference, Task

    now = datetime.now(UTC)
    old, young = now - timedelta(days=40), now - timedelta(hours=1)
    namespaces = [f"project-{n}" for n in range(50)]
    with database.write() as session:
        existing = dict(session.execute(select(Namespace.name, Namespace.id)).all())
        missing = [n for n in [*namespaces, "legal"] if n not in existing]
        if missing:
            session.execute(
                insert(table_of(Namespace)), [{"name": n, "created_at": old} for n in missing]
            )
            existing = dict(session.execute(select(Namespace.name, Namespace.id)).all())
            if "legal" in missing:
                session.execute(
                    insert(table_of(Hold)),
                    [
                        {
                            "namespace_id": existing["legal"],
                            "reason": "litigation",
                            "created_by": "bench",
                            "created_at": old,
                        }
                    ],
                )
        next_task = (session.scalar(select(func.max(Task.id))) or 0) + 1
    ns_ids = [existing[n] for n in namespaces]
    batch = 5_000  # blobs per transaction: 20,000 copy rows
    copies_written = 0
    for first in range(start, stop, batch):
        blobs: list[dict[str, Any]] = []
        copies: list[dict[str, Any]] = []
        refs: list[dict[str, Any]] = []
        tasks: list[dict[str, Any]] = []
        holds: list[dict[str, Any]] = []
        for i in range(first, min(first + batch, stop)):
            kind = blob_kind(i, held_below)
            blob_id = i + 1
            created = young if kind == "new" else old
            unreferenced = {
                "garbage": now - timedelta(days=30),
                "recently-unreferenced": now - timedelta(days=1),
            }.get(kind)
            blobs.append(
                {
                    "id": blob_id,
                    "sha256": hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
                    "size": 4096 * (1 + (i * 7919) % 2048),
                    "created_at": created,
                    "unreferenced_since": unreferenced,
                }
            )
            copy_ids = {}
            for j, (location, shape) in enumerate(zip(LOCATIONS, SHAPES[kind], strict=True)):
                copy_id = i * 4 + j + 1
                copy_ids[location] = copy_id
                verified = shape == "present*"
                state = shape.rstrip("*")
                copies.append(
                    {
                        "id": copy_id,
                        "blob_id": blob_id,
                        "location_id": location_ids[location],
                        "state": state,
                        "created_at": created,
                        "updated_at": created,
                        "verified_at": created if verified or state == "present" else None,
                        "last_access": None,
                        "retries": 0,
                        "last_error": None,
                    }
                )
                if state == "pending":
                    source = "buffer" if location == "archive-b" else "inbox"
                    tasks.append(
                        {
                            "id": next_task,
                            "kind": "transfer",
                            "state": "queued",
                            "site": "local",
                            "copy_id": copy_id,
                            "source_copy_id": copy_ids.get(source),
                            "attempts": 0,
                            "max_attempts": 5,
                            "not_before": created,
                            "created_at": created,
                        }
                    )
                    next_task += 1
            if unreferenced is None:
                namespace = existing["legal"] if kind == "namespace-held" else ns_ids[i % 50]
                refs.append(
                    {
                        "namespace_id": namespace,
                        "key": f"data/{i // 1000:04d}/{i:07d}.bin",
                        "label": "default",
                        "blob_id": blob_id,
                        "created_at": created,
                        "updated_at": created,
                    }
                )
            if kind == "held":
                holds.append(
                    {
                        "blob_id": blob_id,
                        "reason": "retention request",
                        "created_by": "bench",
                        "created_at": created,
                    }
                )
        with database.write() as session:
            session.execute(insert(table_of(Blob)), blobs)
            session.execute(insert(table_of(Copy)), copies)
            session.execute(insert(table_of(Reference)), refs)
            if tasks:
                session.execute(insert(table_of(Task)), tasks)
            if holds:
                session.execute(insert(table_of(Hold)), holds)
        copies_written += len(copies)
    return copies_written


def table_of(model: type[Any]) -> Table:
    """A mapped class's Table, for Core bulk inserts (no ORM bookkeeping per row)."""
    return cast("Table", model.__table__)


def after_load(database: Any) -> None:
    """PostgreSQL: advance the id sequences past the explicit ids, and ANALYZE as
    autovacuum would after a bulk load. SQLite: nothing (safekeeper never runs ANALYZE)."""
    if database.dialect != "postgresql":
        return
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("blobs", "copies", "refs", "tasks", "holds", "namespaces"):
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )
        conn.exec_driver_sql("VACUUM ANALYZE")


@dataclass
class PlanTarget:
    backend: str
    config: Path
    archive: Any
    location_ids: dict[str, int]
    loaded: int = 0  # blobs so far
    copies: int = 0


def plan_once(target: PlanTarget) -> tuple[float, dict[str, Any]]:
    """Time one ``make_plan(archive)``; return (seconds, a summary of the plan)."""
    from safekeeper.services.deletion.planner import make_plan

    start = time.perf_counter()
    plan = make_plan(target.archive)
    seconds = time.perf_counter() - start
    deletions = {p.location: len(p.deletions) for p in plan.locations}
    kept = {p.location: {r: c for r, (c, _s) in p.kept.items()} for p in plan.locations}
    return seconds, {"deletions": deletions, "kept": kept}


def count_present(target: PlanTarget) -> int:
    from sqlalchemy import func, select

    from safekeeper.db.models import Copy

    with target.archive.db.read() as session:
        return int(session.scalar(select(func.count()).where(Copy.state == "present")) or 0)


def bench_plan(settings: Settings, pg_url: str | None) -> Result:
    from sqlalchemy import select

    from safekeeper import open_archive
    from safekeeper.db.models import Location

    root = settings.work / "plan"
    targets: dict[str, PlanTarget] = {}
    for backend in settings.backends:
        url = pg_url if backend == "postgresql" else None
        data_dir = root / backend
        config = write_safekeeper_config(data_dir, plan_config(url))
        archive = open_archive(config=config)
        with archive.db.read() as session:
            ids = dict(session.execute(select(Location.name, Location.id)).tuples().all())
        targets[backend] = PlanTarget(backend, config, archive, ids)

    small, large = settings.plan_blobs
    samples: dict[tuple[str, int], Samples] = {}
    summaries: dict[str, Any] = {}
    load_seconds: dict[str, float] = {}
    cli: dict[str, float] = {}
    try:
        for blobs in (small, large):
            for backend, target in targets.items():
                log(f"plan: {backend}: loading blobs {target.loaded}..{blobs - 1}")
                start = time.perf_counter()
                target.copies += populate(
                    target.archive.db, target.location_ids, target.loaded, blobs, small
                )
                after_load(target.archive.db)
                load_seconds[f"{backend}-{blobs}"] = round(time.perf_counter() - start, 1)
                target.loaded = blobs
                log(
                    f"plan: {backend}: {target.copies} copy rows after "
                    f"{load_seconds[f'{backend}-{blobs}']} s of loading"
                )
            for backend in targets:
                samples[(backend, blobs)] = Samples(f"make_plan, {backend}, {blobs * 4} copies")
            backends = list(targets)
            for i in range(settings.repeats):
                order = alternate(i, *backends) if len(backends) == 2 else tuple(backends)
                for backend in order:
                    seconds, summary = plan_once(targets[backend])
                    samples[(backend, blobs)].add(seconds)
                    planned = sum(summary["deletions"].values()) + sum(
                        sum(k.values()) for k in summary["kept"].values()
                    )
                    summaries[f"{backend}-{blobs * 4}"] = {**summary, "verdicts": planned}
                    log(
                        f"plan: round {i + 1} {backend} {blobs * 4} copies: {seconds:.2f} s "
                        f"({planned} present copies judged, "
                        f"{sum(summary['deletions'].values())} deletions)"
                    )
            for backend, target in targets.items():
                present = count_present(target)
                judged = summaries[f"{backend}-{blobs * 4}"]["verdicts"]
                if judged != present:
                    raise RuntimeError(
                        f"plan on {backend} judged {judged} copies, but {present} are present"
                    )
        for backend, target in targets.items():
            flush_disk()
            cli[backend] = run_timed_devnull(
                [settings.safekeeper, "--config", target.config, "plan", "--json"]
            )
            log(f"plan: {backend}: safekeeper plan --json > /dev/null: {cli[backend]:.2f} s")
    finally:
        for target in targets.values():
            target.archive.close()

    result: dict[str, Any] = {
        "blobs": [small, large],
        "copies": [small * 4, large * 4],
        "load_seconds": load_seconds,
        "plans": summaries,
        "targets": {"large_s": f"<= {PLAN_SECONDS_TARGET}", "growth": f"<= {PLAN_GROWTH_TARGET}"},
    }
    rows: list[Row] = []
    passed = True
    for backend in targets:
        s_small, s_large = samples[(backend, small)], samples[(backend, large)]
        growth = s_large.median / s_small.median
        ok_large = s_large.median <= PLAN_SECONDS_TARGET
        ok_growth = growth <= PLAN_GROWTH_TARGET
        passed = passed and ok_large and ok_growth
        result[backend] = {
            "small": s_small.as_dict(),
            "large": s_large.as_dict(),
            "growth_ratio": round(growth, 3),
            "cli_plan_json_s": round(cli[backend], 3),
            "passed_large": ok_large,
            "passed_growth": ok_growth,
        }
        rows += [
            Row(
                "plan",
                f"{backend}: make_plan, {small * 4:,} copies: s",
                safekeeper=f"{s_small.median:.2f}",
            ),
            Row(
                "plan",
                f"{backend}: make_plan, {large * 4:,} copies: s",
                safekeeper=f"{s_large.median:.2f}",
                target=f"<= {PLAN_SECONDS_TARGET:g} s",
                result=verdict(ok_large),
            ),
            Row(
                "plan",
                f"{backend}: time {large * 4:,} / time {small * 4:,}",
                ratio=f"{growth:.2f}",
                target=f"<= {PLAN_GROWTH_TARGET:g}",
                result=verdict(ok_growth),
            ),
            Row(
                "plan",
                f"{backend}: CLI plan --json > /dev/null, {large * 4:,} copies: s",
                safekeeper=f"{cli[backend]:.2f}",
                target="(info)",
            ),
        ]
    result["passed"] = passed
    return result, rows


# -- gc --------------------------------------------------------------------------------


def timed_sk(settings: Settings, data_dir: Path, args: Sequence[str], expect: str) -> float:
    """Time ``safekeeper --data-dir D ARGS`` and check its output says ``expect``."""
    result = run_timed([settings.safekeeper, "--data-dir", data_dir, *args])
    if expect not in result.stdout:
        raise RuntimeError(
            f"safekeeper {' '.join(args)}: expected {expect!r} in the output:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.seconds


def bench_gc(settings: Settings) -> Result:
    root = settings.work / "gc"
    count = settings.gc_count
    log(f"gc: writing {count} files of {format_bytes(settings.file_size)}")
    files = write_random_files(root / "files", count, settings.file_size)
    ready = root / "sk-ready"
    run([settings.safekeeper, "init", ready])
    log(f"gc: safekeeper put of {count} files (untimed setup)")
    put_s = timed_sk(settings, ready, ["put", str(files)], f"{count} stored")
    log(f"gc: put took {put_s:.1f} s; replicate --wait (untimed setup)")
    replicate_s = timed_sk(settings, ready, ["replicate", "--wait"], f"tasks: {count} done")
    log(f"gc: replicate took {replicate_s:.1f} s")
    remove(files)
    if count_files(ready / "inbox") != count:
        raise RuntimeError("the inbox does not hold one file per blob")

    find = Samples("find DIR -type f -delete")
    ours = Samples("safekeeper gc")

    def run_find() -> float:
        tree = clone_tree(ready / "inbox", root / "find-tree")
        flush_disk()
        seconds = run_timed(["find", tree, "-type", "f", "-delete"]).seconds
        if count_files(tree) != 0:
            raise RuntimeError("find left files behind")
        remove(tree)
        return seconds

    def run_gc() -> float:
        data_dir = clone_data_dir(ready, root / "sk-run", hardlink_stores=("archive",))
        flush_disk()
        seconds = timed_sk(settings, data_dir, ["gc"], f"deleted {count} ")
        if count_files(data_dir / "inbox") != 0:
            raise RuntimeError("gc left inbox files behind")
        remove(data_dir)
        return seconds

    sides: dict[str, tuple[Samples, Callable[[], float]]] = {
        "find": (find, run_find),
        "safekeeper": (ours, run_gc),
    }
    for i in range(settings.repeats):
        for side in alternate(i, "find", "safekeeper"):
            samples, action = sides[side]
            seconds = action()
            samples.add(seconds)
            log(f"gc: round {i + 1} {side}: {seconds:.2f} s ({count / seconds:.0f} files/s)")
    remove(ready)

    ratio = find.median / ours.median  # = (count / ours) / (count / find)
    result = {
        "count": count,
        "file_size_bytes": settings.file_size,
        "setup_put_s": round(put_s, 2),
        "setup_replicate_s": round(replicate_s, 2),
        "baseline": find.as_dict(),
        "safekeeper": ours.as_dict(),
        "baseline_files_s": round(count / find.median, 1),
        "safekeeper_files_s": round(count / ours.median, 1),
        "ratio": round(ratio, 4),
        "target": f">= {GC_TARGET}",
        "passed": ratio >= GC_TARGET,
    }
    rows = [
        Row(
            "gc",
            f"delete {count:,} inbox files: files/s (s)",
            f"{count / find.median:.0f} ({find.median:.2f} s)",
            f"{count / ours.median:.0f} ({ours.median:.2f} s)",
            f"{ratio:.3f}",
            f">= {GC_TARGET}",
            verdict(ratio >= GC_TARGET),
        ),
        Row(
            "gc",
            f"(setup, untimed) put / replicate --wait of {count:,} files: s",
            safekeeper=f"{put_s:.0f} / {replicate_s:.0f}",
            target="(info)",
        ),
    ]
    return result, rows


# -- e2e -------------------------------------------------------------------------------


def bench_e2e(settings: Settings) -> Result:
    root = settings.work / "e2e"
    count = settings.e2e_count
    log(f"e2e: writing {count} files of {format_bytes(settings.file_size)}")
    files = write_random_files(root / "files", count, settings.file_size)
    env = git_env()
    steps_sk = ("put", "replicate", "gc")
    steps_annex = ("add", "copy", "drop")
    sk = {s: Samples(f"safekeeper {s}") for s in steps_sk}
    annex = {s: Samples(f"git annex {s}") for s in steps_annex}
    sk_total = Samples("safekeeper put + replicate --wait + gc")
    annex_total = Samples("git annex add + copy --to archive + drop")

    def run_safekeeper() -> float:
        data_dir = root / "sk-run"
        remove(data_dir)
        run([settings.safekeeper, "init", data_dir])
        flush_disk()
        times = {
            "put": timed_sk(settings, data_dir, ["put", str(files)], f"{count} stored"),
            "replicate": timed_sk(
                settings, data_dir, ["replicate", "--wait"], f"tasks: {count} done"
            ),
            "gc": timed_sk(settings, data_dir, ["gc"], f"deleted {count} "),
        }
        if count_files(data_dir / "inbox") != 0 or count_files(data_dir / "archive") != count:
            raise RuntimeError("e2e: safekeeper did not end with every file in the archive only")
        for step, seconds in times.items():
            sk[step].add(seconds)
        remove(data_dir)
        total = sum(times.values())
        sk_total.add(total)
        return total

    def run_annex() -> float:
        repo, remote = root / "annex-run", root / "annex-remote"
        remove(repo)
        remove(remote)
        repo.mkdir()
        remote.mkdir()
        run(["git", "init", "-q"], cwd=repo, env=env)
        run(["git", "annex", "init", "-q", "bench"], cwd=repo, env=env)
        run(
            [
                "git",
                "annex",
                "initremote",
                "archive",
                "type=directory",
                f"directory={remote}",
                "encryption=none",
            ],
            cwd=repo,
            env=env,
        )
        run(["git", "annex", "numcopies", "1"], cwd=repo, env=env)
        clone_tree(files, repo / "files")
        flush_disk()
        commands = {
            "add": ["git", "annex", "add", "--quiet", "files"],
            "copy": ["git", "annex", "copy", "--quiet", "--to", "archive", "files"],
            "drop": ["git", "annex", "drop", "--quiet", "files"],
        }
        times = {
            step: run_timed(argv, cwd=repo, env=env).seconds for step, argv in commands.items()
        }
        here = run(["git", "annex", "find", "--in", "here", "files"], cwd=repo, env=env)
        there = run(["git", "annex", "find", "--in", "archive", "files"], cwd=repo, env=env)
        if here.strip() or len(there.splitlines()) != count:
            raise RuntimeError("e2e: git-annex did not end with every file in the archive only")
        for step, seconds in times.items():
            annex[step].add(seconds)
        remove(repo)
        remove(remote)
        total = sum(times.values())
        annex_total.add(total)
        return total

    sides: dict[str, Callable[[], float]] = {"annex": run_annex, "safekeeper": run_safekeeper}
    limits = {"annex": settings.annex_repeats, "safekeeper": settings.repeats}
    for i in range(max(limits.values())):
        for side in alternate(i, "annex", "safekeeper"):
            if i >= limits[side]:
                continue
            seconds = sides[side]()
            log(f"e2e: round {i + 1} {side}: {seconds:.2f} s ({count / seconds:.0f} files/s)")
    remove(files)

    ratio = annex_total.median / sk_total.median
    result = {
        "count": count,
        "file_size_bytes": settings.file_size,
        "baseline": annex_total.as_dict(),
        "safekeeper": sk_total.as_dict(),
        "baseline_steps": {s: annex[s].as_dict() for s in steps_annex},
        "safekeeper_steps": {s: sk[s].as_dict() for s in steps_sk},
        "ratio_times_faster": round(ratio, 3),
        "target": f">= {E2E_TARGET}",
        "passed": ratio >= E2E_TARGET,
    }
    rows = [
        Row(
            "e2e",
            f"{count:,} files archived then freed: s (files/s)",
            f"{annex_total.median:.2f} ({count / annex_total.median:.0f})",
            f"{sk_total.median:.2f} ({count / sk_total.median:.0f})",
            f"{ratio:.2f}x faster",
            f">= {E2E_TARGET:g}x",
            verdict(ratio >= E2E_TARGET),
        )
    ]
    for (a_step, a), (s_step, s) in zip(annex.items(), sk.items(), strict=True):
        rows.append(
            Row(
                "e2e",
                f"step: annex {a_step} / safekeeper {s_step}: s",
                f"{a.median:.2f}",
                f"{s.median:.2f}",
                f"{a.median / s.median:.2f}x",
                "(info)",
            )
        )
    return result, rows


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark deletion planning and gc against find and git-annex.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[1] if __doc__ else None,
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, one repeat (plan 250,2500 blobs; gc 100; e2e 50 files)",
    )
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 3; quick 1)")
    parser.add_argument(
        "--annex-repeats", type=int, help="repeats of the git-annex baseline (default: --repeats)"
    )
    parser.add_argument(
        "--plan-blobs", help="two blob counts for 'plan', 4 copies each (default 25000,250000)"
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="databases for 'plan' (default sqlite,postgresql)",
    )
    parser.add_argument("--gc-count", type=int, help="files for 'gc' (default 100000)")
    parser.add_argument("--e2e-count", type=int, help="files for 'e2e' (default 10000)")
    parser.add_argument("--file-size", default="4KiB", help="small file size (default 4KiB)")
    add_output_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = parse_only(args.only, BENCHMARKS)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if sorted(set(backends) - set(BACKENDS)):
        raise SystemExit(f"error: --backends takes {','.join(BACKENDS)}")
    defaults = QUICK if args.quick else FULL
    repeats = args.repeats or defaults.repeats
    if repeats < 1 or (args.annex_repeats is not None and args.annex_repeats < 1):
        raise SystemExit("error: repeats must be at least 1")
    plan_blobs = defaults.plan_blobs
    if args.plan_blobs:
        sizes = sorted(int(n) for n in args.plan_blobs.split(","))
        if len(sizes) != 2 or sizes[0] < 1:
            raise SystemExit("error: --plan-blobs takes two positive counts")
        plan_blobs = (sizes[0], sizes[1])
    safekeeper = find_executable("safekeeper")

    skipped: dict[str, str] = {}
    if "plan" in only and "postgresql" in backends and (why := postgres_missing()):
        skipped["plan (postgresql)"] = f"skipped: {why}"
        backends.remove("postgresql")
    if "e2e" in only and (missing := have_tools("git-annex")):
        skipped["e2e"] = f"skipped: {', '.join(missing)} not found on PATH"
        only.remove("e2e")
    if "plan" in only and not backends:
        only.remove("plan")
    for name, note in skipped.items():
        log(f"{name}: {note}")

    status = 0
    results: dict[str, Any] = {name: {"skipped": note} for name, note in skipped.items()}
    rows: list[Row] = [Row(name, note) for name, note in skipped.items()]
    with workdir(args.workdir, keep=args.keep) as work, contextlib.ExitStack() as stack:
        settings = Settings(
            work=work,
            safekeeper=safekeeper,
            repeats=repeats,
            annex_repeats=args.annex_repeats or repeats,
            plan_blobs=plan_blobs,
            backends=tuple(backends),
            gc_count=args.gc_count or defaults.gc_count,
            e2e_count=args.e2e_count or defaults.e2e_count,
            file_size=parse_size(args.file_size),
        )
        machine = machine_info(work)
        try:
            for name in BENCHMARKS:
                if name not in only:
                    continue
                if name == "plan":
                    pg_url = (
                        stack.enter_context(postgres_server(args.keep))
                        if "postgresql" in backends
                        else None
                    )
                    results[name], new_rows = bench_plan(settings, pg_url)
                    stack.close()  # stop PostgreSQL before the file benchmarks
                elif name == "gc":
                    results[name], new_rows = bench_gc(settings)
                else:
                    results[name], new_rows = bench_e2e(settings)
                rows.extend(new_rows)
        except (CommandFailed, RuntimeError) as exc:
            log(f"error: {exc}")
            status = 2
        finally:
            stack.close()
            report(
                "deletion",
                machine,
                rows,
                results,
                complete=status == 0,
                repeats=f"repeats {settings.repeats} (annex {settings.annex_repeats})",
                settings={
                    "quick": args.quick,
                    "repeats": settings.repeats,
                    "annex_repeats": settings.annex_repeats,
                    "plan_blobs": list(settings.plan_blobs),
                    "backends": list(settings.backends),
                    "gc_count": settings.gc_count,
                    "e2e_count": settings.e2e_count,
                    "file_size": settings.file_size,
                    "git_annex": annex_version(),
                },
                json_out=args.json_out,
            )
    return exit_status(results, status, args.check_targets)


if __name__ == "__main__":
    sys.exit(main())
