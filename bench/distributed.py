"""The distributed row of bench/replicate.py (``--only dist``): ``safekeeper replicate
--wait`` through Celery workers against the embedded executor, on the same data.

Not a script of its own: bench/replicate.py starts SeaweedFS and calls ``bench``.

Two data sets, each timed in two steps:

``many``  1,000 small files of ``--file-size`` (4 KiB); quick: 50
``big``   4 files of 200 MiB; quick: 1 of 8 MiB

1. file -> S3: the files are put into a ``file:`` inbox (untimed); timed ``replicate
   --wait`` copies them to the ``archive`` location, ``s3://BUCKET/PREFIX/archive``.
2. S3 -> S3: timed ``replicate --wait`` again: the archive's ``replicate_to`` copies
   every object on to ``mirror``, another prefix of the same bucket.

*embedded*: the default single-host deployment: SQLite in the data directory, the
transfers run inside the ``replicate`` command (``tasks.threads`` of them at once).

*distributed*: the deployment of docs/deploy.md on this host: PostgreSQL (a private
cluster, default durability), Redis (the broker, no persistence), the same SeaweedFS,
and one ``safekeeper worker --site S`` process per site: the inbox at site ``ingest``,
both S3 locations at ``vault``. file -> S3 transfers run on ``ingest``'s worker (where
the file is), S3 -> S3 on ``vault``'s. ``replicate --wait`` sends the tasks and polls
the database until they have ended (every 0.5 s).

Every round starts fresh on both sides (a new data dir or database, new S3 prefixes,
workers started on the new configuration and ready before the clock starts). The two
sides alternate which goes first. Ratio = distributed files/s / embedded files/s (1.0:
as fast; below: the price of the broker, the workers and PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from common import (
    MB,
    MiB,
    Row,
    Samples,
    alternate,
    find_executable,
    flush_disk,
    format_bytes,
    free_port,
    log,
    remove,
    run,
    run_timed,
    warm_cache,
    write_random_file,
    write_random_files,
    write_safekeeper_config,
)

SITES = ("ingest", "vault")
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Plan:
    work: Path
    safekeeper: str
    repeats: int
    many_count: int
    file_size: int
    big_count: int
    big_size: int
    #: Options of an S3 location on the benchmark's server (endpoint, keys, allow_http).
    s3: Mapping[str, Any]
    bucket: str
    #: Deletes everything under ``s3://bucket/PREFIX`` (after a round, untimed).
    purge: Callable[[str], None]


FULL = {"many_count": 1000, "big_count": 4, "big_size": 200 * 1024 * 1024}
QUICK = {"many_count": 50, "big_count": 1, "big_size": 8 * 1024 * 1024}

Result = tuple[dict[str, Any], list[Row]]


# -- the servers and the workers -------------------------------------------------------


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(base: Path) -> Iterator[str]:
    """A private ``redis-server`` on a free loopback port (no persistence, like
    tests/redis_server.py); yields its URL."""
    binary = find_executable("redis-server")
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = base / "redis.log"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(base)]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        log(f"dist: redis on 127.0.0.1:{port}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Workers:
    """One ``safekeeper worker --site S`` process per site (as tests/engine/processes.py)."""

    def __init__(self, safekeeper: str, data_dir: Path, env: Mapping[str, str]) -> None:
        self.safekeeper, self.data_dir, self.env = safekeeper, data_dir, dict(env)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._files: list[IO[bytes]] = []

    def start(self) -> None:
        for site in SITES:
            path = self.data_dir / f"worker-{site}.log"
            log_file = open(path, "wb")  # noqa: SIM115 - closed in stop()
            self._files.append(log_file)
            self.logs[site] = path
            self.processes[site] = subprocess.Popen(
                [self.safekeeper, "--data-dir", str(self.data_dir), "worker", "--site", site],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        for site, path in self.logs.items():
            # Celery's "ready." comes after the start-up replication pass.
            while " ready." not in path.read_text(errors="replace"):
                if self.processes[site].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {site} did not start:\n{self.tails()}")
                time.sleep(0.1)

    def tails(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in self.logs.values()
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for log_file in self._files:
            log_file.close()


def _create_database(admin_url: str, name: str) -> str:
    import sqlalchemy

    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


# -- one round -------------------------------------------------------------------------


def _config(plan: Plan, prefix: str, tasks: Mapping[str, Any], database: str | None) -> Any:
    s3 = dict(plan.s3)
    document: dict[str, Any] = {
        "tasks": {"replicate_interval": "1h", **tasks},
        "sites": {site: {"description": f"bench site {site}"} for site in SITES},
        "locations": {
            "inbox": {"kind": "source", "site": "ingest", "store": "file:inbox"},
            "archive": {
                "kind": "archive",
                "site": "vault",
                "store": f"s3://{plan.bucket}/{prefix}/archive",
                "replicate_to": ["mirror"],
                **s3,
            },
            "mirror": {
                "kind": "archive",
                "site": "vault",
                "store": f"s3://{plan.bucket}/{prefix}/mirror",
                **s3,
            },
        },
    }
    if database is not None:
        document["database"] = {"url": database}
    return document


def _put(plan: Plan, data_dir: Path, source: Path, expected: int) -> None:
    out = run([plan.safekeeper, "--data-dir", data_dir, "put", source])
    stored = sum(1 for line in out.splitlines() if line.startswith("stored "))
    if stored != expected:
        raise RuntimeError(f"put {source}: {stored} stored, expected {expected}:\n{out[-2000:]}")


def _replicate(plan: Plan, data_dir: Path, expected: int, env: Mapping[str, str]) -> float:
    result = run_timed([plan.safekeeper, "--data-dir", data_dir, "replicate", "--wait"], env=env)
    if f"tasks: {expected} done" not in result.stdout:
        raise RuntimeError(
            f"replicate --wait did not finish {expected} transfers:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.seconds


def _two_steps(
    plan: Plan, data_dir: Path, source: Path, count: int, env: Mapping[str, str]
) -> tuple[float, float]:
    """Put (untimed), then the timed file -> S3 and S3 -> S3 passes."""
    _put(plan, data_dir, source, count)
    warm_cache(data_dir / "inbox")
    flush_disk()
    to_s3 = _replicate(plan, data_dir, count, env)
    flush_disk()
    s3_to_s3 = _replicate(plan, data_dir, count, env)
    return to_s3, s3_to_s3


def _environment() -> dict[str, str]:
    # Settings come from the data dir's safekeeper.toml only.
    return {k: v for k, v in os.environ.items() if not k.startswith(("SAFEKEEPER", "AWS_"))}


def run_embedded(plan: Plan, tag: str, source: Path, count: int) -> tuple[float, float]:
    data_dir = plan.work / f"emb-{tag}"
    remove(data_dir)
    write_safekeeper_config(data_dir, _config(plan, f"emb-{tag}", {}, None))
    env = _environment()
    run([plan.safekeeper, "--data-dir", data_dir, "locations"], env=env)  # creates the db
    try:
        return _two_steps(plan, data_dir, source, count, env)
    finally:
        remove(data_dir)
        plan.purge(f"emb-{tag}")


def run_distributed(
    plan: Plan, tag: str, source: Path, count: int, admin_url: str, broker: str
) -> tuple[float, float]:
    data_dir = plan.work / f"dist-{tag}"
    remove(data_dir)
    database = _create_database(admin_url, f"skdist_{tag.replace('-', '_')}")
    tasks = {"executor": "celery", "broker_url": broker}
    write_safekeeper_config(data_dir, _config(plan, f"dist-{tag}", tasks, database))
    env = _environment()
    run([plan.safekeeper, "--data-dir", data_dir, "db", "upgrade"], env=env)
    workers = Workers(plan.safekeeper, data_dir, env)
    try:
        workers.start()
        return _two_steps(plan, data_dir, source, count, env)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{workers.tails()}") from exc
    finally:
        workers.stop()
        remove(data_dir)
        plan.purge(f"dist-{tag}")


# -- the benchmark ---------------------------------------------------------------------


def _rows(
    name: str, count: int, size: int, samples: Mapping[str, Samples]
) -> tuple[dict[str, Any], list[Row]]:
    result: dict[str, Any] = {"count": count, "file_size_bytes": size}
    rows = []
    for step in ("file->s3", "s3->s3"):
        embedded, distributed = samples[f"embedded {step}"], samples[f"distributed {step}"]
        emb_rate, dist_rate = count / embedded.median, count / distributed.median
        ratio = dist_rate / emb_rate
        result[step] = {
            "embedded": embedded.as_dict(),
            "distributed": distributed.as_dict(),
            "embedded_files_s": round(emb_rate, 2),
            "distributed_files_s": round(dist_rate, 2),
            "embedded_mb_s": round(emb_rate * size / MB, 1),
            "distributed_mb_s": round(dist_rate * size / MB, 1),
            "ratio_distributed_to_embedded": round(ratio, 3),
        }
        if size >= MB:
            unit = "files/s, MB/s (s)"

            def cell(rate: float, seconds: float) -> str:
                return f"{rate:.2f}, {rate * size / MB:.0f} ({seconds:.2f} s)"
        else:
            unit = "files/s (s)"

            def cell(rate: float, seconds: float) -> str:
                return f"{rate:.0f} ({seconds:.2f} s)"

        rows.append(
            Row(
                name,
                f"{step} {count} x {format_bytes(size)}: {unit}",
                cell(emb_rate, embedded.median),
                cell(dist_rate, distributed.median),
                f"{ratio:.2f}",
                "(info)",
            )
        )
    return result, rows


def bench(plan: Plan, pg_admin_url: str) -> Result:
    """Both data sets, ``plan.repeats`` interleaved rounds each; rows baseline=embedded,
    safekeeper=distributed."""
    results: dict[str, Any] = {
        "baseline": "embedded executor (SQLite, transfers in the replicate process)",
        "compared": "celery executor (PostgreSQL, Redis, one worker per site)",
        "ratio": "distributed files/s / embedded files/s",
    }
    rows: list[Row] = []
    sets = [
        ("dist-many", plan.many_count, plan.file_size),
        ("dist-big", plan.big_count, plan.big_size),
    ]
    with redis_server(plan.work / "redis") as broker:
        for name, count, size in sets:
            source = plan.work / "src" / name
            log(f"{name}: writing {count} files of {format_bytes(size)}")
            if size >= MiB:
                for i in range(count):
                    write_random_file(source / f"big-{i}.bin", size)
            else:
                write_random_files(source, count, size)
            samples = {
                f"{side} {step}": Samples(f"{side} replicate --wait ({step})")
                for side in ("embedded", "distributed")
                for step in ("file->s3", "s3->s3")
            }
            for i in range(plan.repeats):
                for side in alternate(i, "embedded", "distributed"):
                    tag = f"{name}-{i}"
                    if side == "embedded":
                        seconds = run_embedded(plan, tag, source, count)
                    else:
                        seconds = run_distributed(plan, tag, source, count, pg_admin_url, broker)
                    for step, value in zip(("file->s3", "s3->s3"), seconds, strict=True):
                        samples[f"{side} {step}"].add(value)
                    log(
                        f"{name}: round {i + 1} {side}: file->s3 {seconds[0]:.2f} s "
                        f"({count / seconds[0]:.1f} files/s), s3->s3 {seconds[1]:.2f} s "
                        f"({count / seconds[1]:.1f} files/s)"
                    )
            remove(source)
            results[name], new_rows = _rows(name, count, size, samples)
            rows.extend(new_rows)
    return results, rows
