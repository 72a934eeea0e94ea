"""Replication benchmark: ``safekeeper replicate --wait`` against rclone and git-annex.

    python bench/replicate.py                      # everything, full sizes (~40 minutes)
    python bench/replicate.py --quick              # small sizes, one repeat (smoke test)
    python bench/replicate.py --only big-fs,big-s3 --repeats 5 --json-out bench/out/rep.json

Benchmarks (every command is the real CLI in a subprocess, Python startup included):

``big-fs``
    One file of ``--big-size`` random bytes, filesystem to filesystem on the same disk.
    ``safekeeper put FILE`` into the inbox of a fresh data dir (untimed), then timed
    ``safekeeper replicate --wait`` (transfer, hash, fsync into a ``file:`` archive)
    against ``rclone copy --checksum SRC_DIR DST_DIR`` into a fresh destination.
    Ratio = safekeeper MB/s / rclone MB/s; target >= 0.8. rclone does not fsync; an
    informational ``rclone copy --checksum && sync DST`` row shows what that costs.
``big-s3``
    The same into SeaweedFS (started here on loopback, stopped at the end): the archive
    location is ``s3://bucket/prefix`` (endpoint, keys, allow_http in safekeeper.toml),
    against ``rclone copy --checksum`` to an S3 remote configured by RCLONE_CONFIG_*
    environment variables. A fresh prefix for every run on both sides. Target >= 0.8.
``many``
    ``--many-count`` files of ``--file-size`` bytes. Timed ``safekeeper replicate --wait``
    after an untimed ``safekeeper put DIR``, against timed ``git annex copy --to archive``
    (a ``type=directory`` special remote) after an untimed ``git annex add`` and commit.
    Both sides start each run from a copy of the same prepared state.
    Ratio = annex time / safekeeper time ("x faster"); target >= 20.
``dist``
    The distributed mode against the embedded one on the same data (1,000 x 4 KiB and
    4 x 200 MiB; quick 50 and 1 x 8 MiB), file -> S3 and S3 -> S3, through PostgreSQL,
    Redis and one ``safekeeper worker`` per site: see bench/distributed.py.
``many-fs``
    ``--many-count`` files of ``--file-size`` bytes (issue 17): timed ``safekeeper
    replicate --wait`` (embedded executor) after an untimed ``safekeeper put DIR``,
    against timed ``rclone copy --checksum SRC DST`` of the same files into a fresh
    directory. Ratio = rclone time / safekeeper time; target >= 0.5. rclone does not
    fsync; safekeeper syncs the target filesystem once per batch of transfers before
    recording them. An informational row adds ``&& sync DST`` to rclone.
``many-s3``
    The same into SeaweedFS (``s3://bucket/prefix``, a fresh prefix per run on both
    sides; safekeeper's put is repeated per run, untimed). Target >= 0.5.
``growth``
    ``safekeeper replicate --wait`` of ``--growth-counts`` files (default 1000, 10000,
    100000), one run each: time per file at each count (less the fixed cost: the same
    command run again with nothing to do), and the largest count's over the
    smallest's. Target <= 1.25 (flat).

Before each timed run, outside the timing: sources are in the page cache, destinations
are fresh, dirty pages are written back (``sync``). Baseline and safekeeper runs are
interleaved, alternating which goes first; tables show medians, ``--json-out`` every
sample. A benchmark whose tools are missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    MB,
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
    run_selected,
    run_timed,
    verdict,
    warm_cache,
    workdir,
    write_random_file,
    write_random_files,
    write_safekeeper_config,
)

BENCHMARKS = ("big-fs", "big-s3", "many", "many-fs", "many-s3", "growth", "dist")
BIG_TARGET = 0.8
MANY_TARGET = 20.0
#: Small files, safekeeper's speed over rclone's (issue 17).
MANY_RCLONE_TARGET = 0.5
#: Time per file at the largest growth count over the smallest's.
GROWTH_TARGET = 1.25
BUCKET = "skbench"
S3_ACCESS_KEY = "safekeeper"
S3_SECRET_KEY = "sk-bench-secret"
RCLONE_REMOTE = "SKBENCH"  # rclone names the remote from RCLONE_CONFIG_<NAME>_*


@dataclass(frozen=True)
class Defaults:
    big_size: str
    many_count: int
    repeats: int
    growth_counts: str


FULL = Defaults(big_size="1GiB", many_count=10_000, repeats=3, growth_counts="1000,10000,100000")
QUICK = Defaults(big_size="16MiB", many_count=100, repeats=1, growth_counts="50,200")


@dataclass(frozen=True)
class Settings:
    work: Path
    safekeeper: str
    repeats: int
    annex_repeats: int
    big_size: int
    many_count: int
    file_size: int
    growth_counts: tuple[int, ...]
    quick: bool = False


Result = tuple[dict[str, Any], list[Row]]


# -- helpers ---------------------------------------------------------------------------


def inbox_and_archive(archive_location: dict[str, Any]) -> dict[str, Any]:
    """A safekeeper.toml: a ``file:inbox`` source and the given archive location."""
    return {
        "policy": {"min_archive_copies": 1, "grace_period": "7d"},
        "sites": {"local": {"description": "this machine"}},
        "locations": {
            "inbox": {"kind": "source", "site": "local", "store": "file:inbox"},
            "archive": {"kind": "archive", "site": "local", **archive_location},
        },
    }


def new_data_dir(settings: Settings, path: Path, archive_location: dict[str, Any]) -> Path:
    """A fresh data dir with our safekeeper.toml, its database created (untimed)."""
    remove(path)
    write_safekeeper_config(path, inbox_and_archive(archive_location))
    run([settings.safekeeper, "--data-dir", path, "locations"])  # creates the database
    return path


def put(settings: Settings, data_dir: Path, source: Path, expected: int) -> None:
    out = run([settings.safekeeper, "--data-dir", data_dir, "put", source])
    stored = sum(1 for line in out.splitlines() if line.startswith("stored "))
    if stored != expected:
        raise RuntimeError(f"put {source}: {stored} stored, expected {expected}:\n{out[-2000:]}")


def timed_replicate(settings: Settings, data_dir: Path, expected: int) -> float:
    """Time ``safekeeper replicate --wait`` and check that every transfer succeeded."""
    result = run_timed([settings.safekeeper, "--data-dir", data_dir, "replicate", "--wait"])
    if f"tasks: {expected} done" not in result.stdout:
        raise RuntimeError(
            f"replicate --wait did not finish {expected} transfers:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.seconds


def replicate_a_clone(settings: Settings, ready: Path, run_dir: Path, count: int) -> float:
    """Time ``replicate --wait`` of a fresh clone of the data dir ``ready`` (its inbox
    hard-linked, in the page cache) into an empty file archive; check every object got there."""
    data_dir = clone_data_dir(ready, run_dir, hardlink_stores=("inbox",))
    warm_cache(data_dir / "inbox")
    flush_disk()
    seconds = timed_replicate(settings, data_dir, count)
    if count_files(data_dir / "archive") != count:
        raise RuntimeError("replicate did not write every archive object")
    remove(data_dir)
    return seconds


def rate_row(
    name: str, size: int, baseline: Samples, ours: Samples, target: float
) -> tuple[dict[str, Any], Row]:
    base_rate = size / MB / baseline.median
    our_rate = size / MB / ours.median
    ratio = our_rate / base_rate
    result = {
        "size_bytes": size,
        "baseline": baseline.as_dict(),
        "safekeeper": ours.as_dict(),
        "baseline_mb_s": round(base_rate, 1),
        "safekeeper_mb_s": round(our_rate, 1),
        "ratio": round(ratio, 3),
        "target": f">= {target}",
        "passed": ratio >= target,
    }
    row = Row(
        name,
        f"1 file of {format_bytes(size)}: MB/s (s)",
        f"{base_rate:.0f} ({baseline.median:.2f} s)",
        f"{our_rate:.0f} ({ours.median:.2f} s)",
        f"{ratio:.2f}",
        f">= {target}",
        verdict(ratio >= target),
    )
    return result, row


def interleave(
    name: str,
    repeats: int,
    sides: dict[str, tuple[Samples, Callable[[int], float]]],
    describe: Callable[[float], str],
    limits: dict[str, int] | None = None,
) -> None:
    """Run each side once per round, alternating the order; log every sample."""
    first, second = list(sides)[:2]
    rest = list(sides)[2:]
    rounds = max([repeats, *(limits or {}).values()])
    for i in range(rounds):
        for side in [*alternate(i, first, second), *rest]:
            if i >= (limits or {}).get(side, repeats):
                continue
            samples, action = sides[side]
            seconds = action(i)
            samples.add(seconds)
            log(f"{name}: round {i + 1} {side}: {seconds:.3f} s ({describe(seconds)})")


# -- big-fs ----------------------------------------------------------------------------


def bench_big_fs(settings: Settings) -> Result:
    root = settings.work / "big-fs"
    source_dir = root / "src"
    source = source_dir / "big.bin"
    size = settings.big_size
    log(f"big-fs: writing {format_bytes(size)} of random bytes")
    write_random_file(source, size)
    rclone = Samples("rclone copy --checksum SRC DST")
    rclone_sync = Samples("rclone copy --checksum SRC DST && sync DST (info)")
    ours = Samples("safekeeper replicate --wait (file: -> file:)")
    dest = root / "rclone-dst"

    def run_rclone(_i: int) -> float:
        remove(dest)
        warm_cache(source)
        flush_disk()
        seconds = run_timed(["rclone", "copy", "--checksum", source_dir, dest]).seconds
        if (dest / source.name).stat().st_size != size:
            raise RuntimeError("rclone wrote the wrong size")
        remove(dest)
        return seconds

    def run_rclone_sync(_i: int) -> float:
        remove(dest)
        warm_cache(source)
        flush_disk()
        script = 'rclone copy --checksum "$1" "$2" && sync -f "$2"'
        seconds = run_timed(["sh", "-c", script, "sh", source_dir, dest]).seconds
        remove(dest)
        return seconds

    def run_safekeeper(_i: int) -> float:
        data_dir = new_data_dir(settings, root / "sk-data", {"store": "file:archive"})
        put(settings, data_dir, source, 1)
        warm_cache(data_dir / "inbox")
        flush_disk()
        seconds = timed_replicate(settings, data_dir, 1)
        if count_files(data_dir / "archive") != 1:
            raise RuntimeError("replicate left no archive object")
        remove(data_dir)
        return seconds

    interleave(
        "big-fs",
        settings.repeats,
        {
            "rclone": (rclone, run_rclone),
            "safekeeper": (ours, run_safekeeper),
            "rclone+sync": (rclone_sync, run_rclone_sync),
        },
        lambda s: f"{size / MB / s:.0f} MB/s",
    )
    remove(source_dir)
    result, row = rate_row("big-fs", size, rclone, ours, BIG_TARGET)
    sync_rate = size / MB / rclone_sync.median
    result["info_rclone_then_sync"] = {
        **rclone_sync.as_dict(),
        "mb_s": round(sync_rate, 1),
        "ratio_safekeeper_to_it": round(result["safekeeper_mb_s"] / sync_rate, 3),
    }
    info = Row(
        "big-fs",
        "info: vs rclone copy --checksum && sync",
        f"{sync_rate:.0f} ({rclone_sync.median:.2f} s)",
        row.safekeeper,
        f"{result['safekeeper_mb_s'] / sync_rate:.2f}",
        "(info)",
    )
    return result, [row, info]


# -- big-s3 ----------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    process: subprocess.Popen[bytes]
    base: Path
    grpc_ports: tuple[int, ...]

    def rclone_env(self) -> dict[str, str]:
        prefix = f"RCLONE_CONFIG_{RCLONE_REMOTE}_"
        # rclone's AWS SDK refuses to start when AWS_CA_BUNDLE is set ("unsupported
        # transport"); the endpoint is plain http on loopback, so no CA is involved.
        inherited = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        return {
            **inherited,
            prefix + "TYPE": "s3",
            prefix + "PROVIDER": "Other",
            prefix + "ENV_AUTH": "false",
            prefix + "ENDPOINT": self.url,
            prefix + "REGION": "us-east-1",
            prefix + "ACCESS_KEY_ID": S3_ACCESS_KEY,
            prefix + "SECRET_ACCESS_KEY": S3_SECRET_KEY,
            prefix + "FORCE_PATH_STYLE": "true",
        }


@contextlib.contextmanager
def seaweedfs(base: Path) -> Iterator[S3Endpoint]:
    """One ``weed server`` (master, volume, filer, S3) on free loopback ports, with a
    static identity, like tests/servers.py; stopped (and its sockets removed) at exit."""
    weed = find_executable("weed")
    data = base / "data"
    data.mkdir(parents=True)
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    identity = {
        "name": "safekeeper",
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    s3_config = base / "s3.json"
    s3_config.write_text(json.dumps({"identities": [identity]}))
    # A Unix socket's path must stay under ~107 bytes: not under a deep --workdir.
    sockets = Path(tempfile.mkdtemp(prefix="sk-weed-"))
    command = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=1024",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer",
        "-s3",
        f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={sockets / 'filer.sock'}",
        f"-s3.localSocket={sockets / 's3.sock'}",
    ]
    for name in ports:
        command += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={grpc[name]}"]
    log_path = base / "weed.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=base)
    endpoint = S3Endpoint(f"http://127.0.0.1:{ports['s3']}", process, base, tuple(grpc.values()))
    try:
        _wait_ready(endpoint, log_path)
        yield endpoint
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for port in grpc.values():
            for name in ports:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
        shutil.rmtree(sockets, ignore_errors=True)


def _wait_ready(endpoint: S3Endpoint, log_path: Path) -> None:
    """Until a bucket can be created and written (the volume server registers late)."""
    env = endpoint.rclone_env()
    probe = endpoint.base / "probe.txt"
    probe.write_text("ok\n")
    deadline = time.monotonic() + 90
    while True:
        try:
            run(["rclone", "mkdir", f"{RCLONE_REMOTE}:{BUCKET}"], env=env)
            run(["rclone", "copyto", probe, f"{RCLONE_REMOTE}:{BUCKET}/probe.txt"], env=env)
            run(["rclone", "deletefile", f"{RCLONE_REMOTE}:{BUCKET}/probe.txt"], env=env)
            return
        except CommandFailed as exc:
            if endpoint.process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"SeaweedFS did not start ({exc}); log:\n{tail}") from exc
            time.sleep(0.5)


def s3_options(s3: S3Endpoint) -> dict[str, Any]:
    """The settings of a safekeeper S3 location on the benchmark's SeaweedFS."""
    return {
        "endpoint": s3.url,
        "region": "us-east-1",
        "access_key_id": S3_ACCESS_KEY,
        "secret_access_key": S3_SECRET_KEY,
        "allow_http": True,
    }


def bench_big_s3(settings: Settings) -> Result:
    root = settings.work / "big-s3"
    source_dir = root / "src"
    source = source_dir / "big.bin"
    size = settings.big_size
    log(f"big-s3: writing {format_bytes(size)} of random bytes")
    write_random_file(source, size)
    rclone = Samples("rclone copy --checksum SRC s3:BUCKET/PREFIX")
    ours = Samples("safekeeper replicate --wait (file: -> s3:)")
    with seaweedfs(root / "weed") as s3:
        log(f"big-s3: SeaweedFS S3 at {s3.url}")
        env = s3.rclone_env()

        def run_rclone(i: int) -> float:
            target = f"{RCLONE_REMOTE}:{BUCKET}/rclone-{i}"
            warm_cache(source)
            flush_disk()
            seconds = run_timed(
                ["rclone", "copy", "--checksum", source_dir, target], env=env
            ).seconds
            listed = run(["rclone", "size", "--json", target], env=env)
            if json.loads(listed)["bytes"] != size:
                raise RuntimeError(f"rclone stored the wrong size: {listed}")
            run(["rclone", "purge", target], env=env)
            return seconds

        def run_safekeeper(i: int) -> float:
            location = {
                "store": f"s3://{BUCKET}/sk-{i}",
                **s3_options(s3),
            }
            data_dir = new_data_dir(settings, root / "sk-data", location)
            put(settings, data_dir, source, 1)
            warm_cache(data_dir / "inbox")
            flush_disk()
            seconds = timed_replicate(settings, data_dir, 1)
            # The store's identity marker (``.safekeeper-store``) is not an object.
            target = f"{RCLONE_REMOTE}:{BUCKET}/sk-{i}"
            listed = run(["rclone", "size", "--json", "--exclude", ".*", target], env=env)
            if json.loads(listed)["bytes"] != size:
                raise RuntimeError(f"safekeeper stored the wrong size: {listed}")
            run(["rclone", "purge", f"{RCLONE_REMOTE}:{BUCKET}/sk-{i}"], env=env)
            remove(data_dir)
            return seconds

        interleave(
            "big-s3",
            settings.repeats,
            {"rclone": (rclone, run_rclone), "safekeeper": (ours, run_safekeeper)},
            lambda s: f"{size / MB / s:.0f} MB/s",
        )
    remove(source_dir)
    result, row = rate_row("big-s3", size, rclone, ours, BIG_TARGET)
    result["server"] = "SeaweedFS (weed server -s3) on loopback, same disk"
    return result, [row]


# -- many ------------------------------------------------------------------------------


def bench_many(settings: Settings) -> Result:
    root = settings.work / "many"
    files = root / "files"
    count = settings.many_count
    log(f"many: writing {count} files of {format_bytes(settings.file_size)}")
    write_random_files(files, count, settings.file_size)
    env = git_env()

    # Safekeeper's prepared state: the files put into the inbox, nothing replicated.
    sk_ready = new_data_dir(settings, root / "sk-ready", {"store": "file:archive"})
    log(f"many: safekeeper put of {count} files (untimed setup)")
    put(settings, sk_ready, files, count)

    # git-annex's prepared state: the files added and committed, a directory remote.
    annex_ready = root / "annex-ready"
    annex_remote = root / "annex-remote"
    annex_ready.mkdir()
    run(["git", "init", "-q"], cwd=annex_ready, env=env)
    # No background `git gc --auto` after the commit: it would repack while we copy the
    # repository for a run ("cp: cannot stat .git/objects/..").
    run(["git", "config", "gc.auto", "0"], cwd=annex_ready, env=env)
    run(["git", "annex", "init", "-q", "bench"], cwd=annex_ready, env=env)
    clone_tree(files, annex_ready / "files")
    log(f"many: git annex add of {count} files (untimed setup)")
    run(["git", "annex", "add", "--quiet", "files"], cwd=annex_ready, env=env)
    run(["git", "commit", "-q", "-m", "add files"], cwd=annex_ready, env=env)
    annex_remote.mkdir()
    run(
        [
            "git",
            "annex",
            "initremote",
            "archive",
            "type=directory",
            f"directory={annex_remote}",
            "encryption=none",
        ],
        cwd=annex_ready,
        env=env,
    )

    annex = Samples("git annex copy --to archive (directory remote)")
    ours = Samples("safekeeper replicate --wait")

    def run_annex(_i: int) -> float:
        repo = root / "annex-run"
        remove(repo)
        remove(annex_remote)
        annex_remote.mkdir()
        clone_tree(annex_ready, repo)
        warm_cache(repo / ".git" / "annex" / "objects")
        flush_disk()
        seconds = run_timed(
            ["git", "annex", "copy", "--quiet", "--to", "archive", "files"], cwd=repo, env=env
        ).seconds
        there = run(["git", "annex", "find", "--in", "archive", "files"], cwd=repo, env=env)
        if len(there.splitlines()) != count:
            raise RuntimeError(f"git annex copy: {len(there.splitlines())} of {count} copied")
        remove(repo)
        return seconds

    def run_safekeeper(_i: int) -> float:
        return replicate_a_clone(settings, sk_ready, root / "sk-run", count)

    interleave(
        "many",
        max(settings.repeats, settings.annex_repeats),
        {"annex": (annex, run_annex), "safekeeper": (ours, run_safekeeper)},
        lambda s: f"{count / s:.0f} files/s",
        limits={"annex": settings.annex_repeats, "safekeeper": settings.repeats},
    )
    for path in (files, sk_ready, annex_ready, annex_remote):
        remove(path)

    ratio = annex.median / ours.median
    result = {
        "count": count,
        "file_size_bytes": settings.file_size,
        "baseline": annex.as_dict(),
        "safekeeper": ours.as_dict(),
        "ratio_times_faster": round(ratio, 3),
        "target": f">= {MANY_TARGET}",
        "passed": ratio >= MANY_TARGET,
    }
    row = Row(
        "many",
        f"{count} files of {format_bytes(settings.file_size)}: s (files/s)",
        f"{annex.median:.2f} ({count / annex.median:.0f})",
        f"{ours.median:.2f} ({count / ours.median:.0f})",
        f"{ratio:.2f}x faster",
        f">= {MANY_TARGET:g}x",
        verdict(ratio >= MANY_TARGET),
    )
    return result, [row]


# -- many-fs, many-s3: small files against rclone -----------------------------------------


def _many_row(
    name: str, what: str, count: int, baseline: Samples, ours: Samples, target: float
) -> tuple[dict[str, Any], Row]:
    ratio = baseline.median / ours.median
    result = {
        "count": count,
        "baseline": baseline.as_dict(),
        "safekeeper": ours.as_dict(),
        "ratio": round(ratio, 3),
        "safekeeper_ms_per_file": round(ours.median / count * 1000, 3),
        "baseline_ms_per_file": round(baseline.median / count * 1000, 3),
        "target": f">= {target}",
        "passed": ratio >= target,
    }
    row = Row(
        name,
        what,
        f"{baseline.median:.2f} ({count / baseline.median:.0f})",
        f"{ours.median:.2f} ({count / ours.median:.0f})",
        f"{ratio:.2f}",
        f">= {target}",
        verdict(ratio >= target),
    )
    return result, row


def bench_many_fs(settings: Settings) -> Result:
    root = settings.work / "many-fs"
    files = root / "files"
    count = settings.many_count
    log(f"many-fs: writing {count} files of {format_bytes(settings.file_size)}")
    write_random_files(files, count, settings.file_size)
    sk_ready = new_data_dir(settings, root / "sk-ready", {"store": "file:archive"})
    log(f"many-fs: safekeeper put of {count} files (untimed setup)")
    put(settings, sk_ready, files, count)
    # The same into an archive with layout = "flat": what the fan-out directories cost
    # (a new directory, fsynced, for almost every tiny object).
    flat = {"store": "file:archive", "layout": "flat"}
    sk_flat = new_data_dir(settings, root / "sk-ready-flat", flat)
    put(settings, sk_flat, files, count)
    rclone = Samples("rclone copy --checksum SRC DST")
    rclone_sync = Samples("rclone copy --checksum SRC DST && sync DST (info)")
    ours = Samples("safekeeper replicate --wait (file: -> file:)")
    ours_flat = Samples('safekeeper replicate --wait into layout = "flat" (info)')
    dest = root / "rclone-dst"

    def run_rclone(_i: int) -> float:
        remove(dest)
        warm_cache(files)
        flush_disk()
        seconds = run_timed(["rclone", "copy", "--checksum", files, dest]).seconds
        if count_files(dest) != count:
            raise RuntimeError(f"rclone copied {count_files(dest)} of {count} files")
        remove(dest)
        return seconds

    def run_rclone_sync(_i: int) -> float:
        remove(dest)
        warm_cache(files)
        flush_disk()
        script = 'rclone copy --checksum "$1" "$2" && sync -f "$2"'
        seconds = run_timed(["sh", "-c", script, "sh", files, dest]).seconds
        remove(dest)
        return seconds

    def run_safekeeper(_i: int) -> float:
        return replicate_a_clone(settings, sk_ready, root / "sk-run", count)

    def run_safekeeper_flat(_i: int) -> float:
        return replicate_a_clone(settings, sk_flat, root / "sk-run-flat", count)

    interleave(
        "many-fs",
        settings.repeats,
        {
            "rclone": (rclone, run_rclone),
            "safekeeper": (ours, run_safekeeper),
            "rclone+sync": (rclone_sync, run_rclone_sync),
            "safekeeper-flat": (ours_flat, run_safekeeper_flat),
        },
        lambda s: f"{count / s:.0f} files/s",
    )
    for path in (files, sk_ready, sk_flat):
        remove(path)
    what = f"{count} files of {format_bytes(settings.file_size)}: s (files/s)"
    result, row = _many_row("many-fs", what, count, rclone, ours, MANY_RCLONE_TARGET)
    info = _info_row(
        result,
        "info_rclone_then_sync",
        "vs rclone copy --checksum && sync",
        rclone_sync,
        ours,
        rclone_sync,
        count,
    )
    flat_row = _info_row(
        result,
        "info_flat_layout",
        'safekeeper into layout = "flat" vs rclone',
        rclone,
        ours_flat,
        ours_flat,
        count,
    )
    return result, [row, info, flat_row]


def _info_row(
    result: dict[str, Any],
    field: str,
    what: str,
    baseline: Samples,
    ours: Samples,
    added: Samples,
    count: int,
) -> Row:
    """An informational many-fs row (no target); ``added``, the side the main row does
    not have, is kept in ``result[field]`` with the ratio."""
    ratio = baseline.median / ours.median
    result[field] = {**added.as_dict(), "ratio": round(ratio, 3)}
    return Row(
        "many-fs",
        f"info: {what}",
        f"{baseline.median:.2f} ({count / baseline.median:.0f})",
        f"{ours.median:.2f} ({count / ours.median:.0f})",
        f"{ratio:.2f}",
        "(info)",
    )


def bench_many_s3(settings: Settings) -> Result:
    root = settings.work / "many-s3"
    files = root / "files"
    count = settings.many_count
    log(f"many-s3: writing {count} files of {format_bytes(settings.file_size)}")
    write_random_files(files, count, settings.file_size)
    rclone = Samples("rclone copy --checksum SRC s3:BUCKET/PREFIX")
    ours = Samples("safekeeper replicate --wait (file: -> s3:)")
    with seaweedfs(root / "weed") as s3:
        log(f"many-s3: SeaweedFS S3 at {s3.url}")
        env = s3.rclone_env()

        def listed_count(target: str) -> int:
            out = run(["rclone", "size", "--json", "--exclude", ".*", target], env=env)
            return int(json.loads(out)["count"])

        def run_rclone(i: int) -> float:
            target = f"{RCLONE_REMOTE}:{BUCKET}/many-rclone-{i}"
            warm_cache(files)
            flush_disk()
            seconds = run_timed(["rclone", "copy", "--checksum", files, target], env=env).seconds
            if listed_count(target) != count:
                raise RuntimeError(f"rclone stored {listed_count(target)} of {count} objects")
            run(["rclone", "purge", target], env=env)
            return seconds

        def run_safekeeper(i: int) -> float:
            location = {
                "store": f"s3://{BUCKET}/many-sk-{i}",
                **s3_options(s3),
            }
            data_dir = new_data_dir(settings, root / "sk-data", location)
            put(settings, data_dir, files, count)
            warm_cache(data_dir / "inbox")
            flush_disk()
            seconds = timed_replicate(settings, data_dir, count)
            target = f"{RCLONE_REMOTE}:{BUCKET}/many-sk-{i}"
            if listed_count(target) != count:
                raise RuntimeError(f"safekeeper stored {listed_count(target)} of {count}")
            run(["rclone", "purge", target], env=env)
            remove(data_dir)
            return seconds

        interleave(
            "many-s3",
            settings.repeats,
            {"rclone": (rclone, run_rclone), "safekeeper": (ours, run_safekeeper)},
            lambda s: f"{count / s:.0f} files/s",
        )
    remove(files)
    what = f"{count} files of {format_bytes(settings.file_size)} to S3: s (files/s)"
    result, row = _many_row("many-s3", what, count, rclone, ours, MANY_RCLONE_TARGET)
    result["server"] = "SeaweedFS (weed server -s3) on loopback, same disk"
    return result, [row]


# -- growth ----------------------------------------------------------------------------


def bench_growth(settings: Settings) -> Result:
    root = settings.work / "growth"
    per_file: dict[int, float] = {}
    for count in settings.growth_counts:
        files = root / f"files-{count}"
        log(f"growth: writing {count} files of {format_bytes(settings.file_size)}")
        write_random_files(files, count, settings.file_size)
        data_dir = new_data_dir(settings, root / "sk-data", {"store": "file:archive"})
        log(f"growth: safekeeper put of {count} files (untimed setup)")
        put(settings, data_dir, files, count)
        remove(files)
        warm_cache(data_dir / "inbox")
        flush_disk()
        seconds = timed_replicate(settings, data_dir, count)
        # The fixed cost (start-up, a pass finding nothing): the same command again.
        fixed = run_timed([settings.safekeeper, "--data-dir", data_dir, "replicate", "--wait"])
        per_file[count] = max(seconds - fixed.seconds, 0.0) / count
        log(
            f"growth: {count} files in {seconds:.2f} s, {fixed.seconds:.2f} s of it fixed "
            f"({per_file[count] * 1000:.3f} ms/file)"
        )
        remove(data_dir)
    smallest, largest = min(per_file), max(per_file)
    growth = per_file[largest] / per_file[smallest]
    result = {
        "ms_per_file": {str(n): round(t * 1000, 3) for n, t in per_file.items()},
        "growth": round(growth, 3),
        "target": f"<= {GROWTH_TARGET}",
        "passed": growth <= GROWTH_TARGET,
    }
    row = Row(
        "growth",
        f"replicate: ms/file (less fixed cost) at {smallest} vs {largest} files",
        f"{per_file[smallest] * 1000:.3f}",
        f"{per_file[largest] * 1000:.3f}",
        f"{growth:.2f}",
        f"<= {GROWTH_TARGET}",
        verdict(growth <= GROWTH_TARGET),
    )
    return result, [row]


# -- dist ------------------------------------------------------------------------------


def bench_dist(settings: Settings) -> Result:
    import distributed  # the harness of processes lives in its own module
    from deletion import postgres_missing, postgres_server

    missing = postgres_missing()
    if missing:
        log(f"dist: skipped: {missing}")
        return {"skipped": missing}, [Row("dist", f"skipped: {missing}")]
    root = settings.work / "dist"
    with seaweedfs(root / "weed") as s3, postgres_server(keep=False, durable=True) as pg:
        env = s3.rclone_env()

        def purge(prefix: str) -> None:
            run(["rclone", "purge", f"{RCLONE_REMOTE}:{BUCKET}/{prefix}"], env=env)

        sizes = distributed.QUICK if settings.quick else distributed.FULL
        plan = distributed.Plan(
            work=root,
            safekeeper=settings.safekeeper,
            repeats=settings.repeats,
            file_size=settings.file_size,
            s3=s3_options(s3),
            bucket=BUCKET,
            purge=purge,
            **sizes,
        )
        return distributed.bench(plan, pg.rsplit("/", 1)[0] + "/postgres")


# -- main ------------------------------------------------------------------------------

TOOLS = {
    "big-fs": ("rclone",),
    "big-s3": ("rclone", "weed"),
    "many": ("git-annex",),
    "many-fs": ("rclone",),
    "many-s3": ("rclone", "weed"),
    "growth": (),
    "dist": ("rclone", "weed", "redis-server"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark safekeeper replicate against rclone and git-annex.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[1] if __doc__ else None,
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one repeat (big 16MiB, many 100)"
    )
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 3; quick 1)")
    parser.add_argument(
        "--annex-repeats", type=int, help="repeats of the git-annex baseline (default: --repeats)"
    )
    parser.add_argument("--big-size", help="size of the big file (default 1GiB)")
    parser.add_argument("--many-count", type=int, help="files for 'many' (default 10000)")
    parser.add_argument("--file-size", default="4KiB", help="small file size (default 4KiB)")
    parser.add_argument(
        "--growth-counts", help="file counts for 'growth' (default 1000,10000,100000)"
    )
    add_output_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = parse_only(args.only, BENCHMARKS)
    defaults = QUICK if args.quick else FULL
    repeats = args.repeats or defaults.repeats
    if repeats < 1 or (args.annex_repeats is not None and args.annex_repeats < 1):
        raise SystemExit("error: repeats must be at least 1")
    safekeeper = find_executable("safekeeper")
    skipped: dict[str, str] = {}
    for name in list(only):
        missing = have_tools(*TOOLS[name])
        if missing:
            skipped[name] = f"skipped: {', '.join(missing)} not found on PATH"
            log(f"{name}: {skipped[name]}")
            only.remove(name)

    status = 0
    results: dict[str, Any] = {name: {"skipped": note} for name, note in skipped.items()}
    rows: list[Row] = [Row(name, note) for name, note in skipped.items()]
    with workdir(args.workdir, keep=args.keep) as work:
        settings = Settings(
            work=work,
            safekeeper=safekeeper,
            repeats=repeats,
            annex_repeats=args.annex_repeats or repeats,
            big_size=parse_size(str(args.big_size or defaults.big_size)),
            many_count=args.many_count or defaults.many_count,
            file_size=parse_size(args.file_size),
            quick=args.quick,
            growth_counts=tuple(
                int(n) for n in str(args.growth_counts or defaults.growth_counts).split(",")
            ),
        )
        machine = machine_info(work)
        runners: dict[str, Callable[[Settings], Result]] = {
            "big-fs": bench_big_fs,
            "big-s3": bench_big_s3,
            "many": bench_many,
            "many-fs": bench_many_fs,
            "many-s3": bench_many_s3,
            "growth": bench_growth,
            "dist": bench_dist,
        }
        try:
            status = run_selected(runners, only, settings, results, rows)
        finally:
            tools = {
                "rclone": None
                if have_tools("rclone")
                else run(["rclone", "version"]).splitlines()[0],
                "git_annex": annex_version(),
                "weed": None
                if have_tools("weed")
                else run(["weed", "version"]).strip().splitlines()[-1],
            }
            report(
                "replication",
                machine,
                rows,
                results,
                complete=status == 0,
                repeats=f"repeats {settings.repeats} (annex {settings.annex_repeats})",
                settings={
                    "quick": args.quick,
                    "repeats": settings.repeats,
                    "annex_repeats": settings.annex_repeats,
                    "big_size": settings.big_size,
                    "many_count": settings.many_count,
                    "file_size": settings.file_size,
                    "growth_counts": list(settings.growth_counts),
                },
                json_out=args.json_out,
                extra={"tools": tools} if args.json_out else None,
            )
    return exit_status(results, status, args.check_targets)


if __name__ == "__main__":
    sys.exit(main())
