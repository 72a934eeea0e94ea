"""Ingest benchmark: baselines and ``safekeeper put`` side by side, with ratios.

    python bench/ingest.py                       # everything, full sizes (tens of minutes)
    python bench/ingest.py --quick               # small sizes, one repeat (smoke test)
    python bench/ingest.py --only big,many --repeats 5 --json-out bench/out/ingest.json

Benchmarks (every command is the real CLI in a subprocess, Python startup included):

``big``
    One file of ``--big-size`` random bytes. Baseline ``cp FILE DEST && sync DEST``
    (copy plus fsync, the durability safekeeper gives) against
    ``safekeeper --data-dir D put FILE`` into a fresh, initialised data dir; an info
    row times ``openssl dgst -sha256 FILE``. Ratio = safekeeper MB/s / baseline MB/s
    (target >= 0.85), and against the floor max(cp && sync, openssl) (target >= 0.7:
    copying and hashing overlapped can be no faster than the slower of the two).
``many``
    ``--many-count`` files of ``--file-size`` bytes in one directory. Baseline
    ``git annex add DIR`` in a fresh ``git annex init``-ed repository holding a copy of
    the files, against ``safekeeper --data-dir D put DIR``.
    Ratio = annex time / safekeeper time ("x faster"); target >= 20.
``refs``
    ``--many-count`` files of ``--file-size`` bytes in one directory, four sides
    interleaved (order rotated each round): ``cp -r DIR DEST && sync -f DEST``,
    ``rclone copy --checksum DIR DEST && sync -f DEST`` (rclone itself fsyncs nothing),
    ``safekeeper put DIR --no-ref`` and ``safekeeper put DIR --ref bench:tree`` (one
    reference per file). safekeeper makes the same bytes durable with a ``syncfs`` of
    the store's filesystem per batch of files (``sync -f`` is one ``syncfs``) plus
    SQLite's commit. Ratios: speed of ``put --ref`` against cp (target >= 0.5) and
    rclone (target >= 1), and what references cost over ``--no-ref`` (target <= 10 %).
``growth``
    ``safekeeper put`` of each of ``--growth-sizes`` small files into a fresh data dir:
    time per file for each size, the per-file ratio largest/smallest (flat = 1; Python
    startup inflates the smallest size), and the marginal per-file time between
    consecutive sizes, (t(n2) - t(n1)) / (n2 - n1), the fairer flatness measure.

Start-up (``safekeeper --help``, ``ls``) is measured by ``bench/startup.py``.

Before each timed run, outside the timing: the source is read once (page cache warm
for both sides), destinations are fresh, and dirty pages are written back (``sync``).
Baseline and safekeeper runs are interleaved, alternating which goes first; tables
show medians, the JSON output (``--json-out``) every sample.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    MB,
    Row,
    Samples,
    Timed,
    add_output_options,
    alternate,
    annex_version,
    exit_status,
    find_executable,
    flush_disk,
    format_bytes,
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
)

BENCHMARKS = ("big", "many", "refs", "growth")
BIG_TARGET = 0.85
BIG_FLOOR_TARGET = 0.7
MANY_TARGET = 20.0
REFS_CP_TARGET = 0.5
REFS_RCLONE_TARGET = 1.0
REFS_OVERHEAD_TARGET = 0.10


@dataclass(frozen=True)
class Defaults:
    big_size: str
    many_count: int
    growth_sizes: str
    repeats: int


FULL = Defaults(big_size="1GiB", many_count=10_000, growth_sizes="1000,10000,100000", repeats=3)
QUICK = Defaults(big_size="16MiB", many_count=100, growth_sizes="100,200,400", repeats=1)

#: git refuses to commit without an identity; a CI machine may have none configured.
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "safekeeper bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "safekeeper bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


@dataclass(frozen=True)
class Settings:
    work: Path
    safekeeper: str
    repeats: int
    annex_repeats: int
    big_size: int
    many_count: int
    file_size: int
    growth_sizes: tuple[int, ...]


# -- safekeeper helpers ----------------------------------------------------------------


def fresh_data_dir(settings: Settings, path: Path) -> Path:
    """An initialised, empty data dir at ``path`` (untimed)."""
    remove(path)
    run([settings.safekeeper, "init", path])
    return path


def timed_put(
    settings: Settings, data_dir: Path, source: Path, expected_files: int, *extra: str
) -> float:
    """Time ``safekeeper --data-dir D put SOURCE [EXTRA...]`` and check it stored every
    file."""
    return timed_put_cpu(settings, data_dir, source, expected_files, *extra).seconds


def timed_put_cpu(
    settings: Settings, data_dir: Path, source: Path, expected_files: int, *extra: str
) -> Timed:
    """``timed_put`` with the command's CPU time as well."""
    result = run_timed([settings.safekeeper, "--data-dir", data_dir, "put", source, *extra])
    stored = sum(1 for line in result.stdout.splitlines() if line.startswith("stored "))
    if stored != expected_files:
        raise RuntimeError(
            f"safekeeper put {source} printed {stored} 'stored' lines, expected "
            f"{expected_files}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result


# -- big ---------------------------------------------------------------------------------


def bench_big(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    root = settings.work / "big"
    source = root / "source.bin"
    log(f"big: writing {format_bytes(settings.big_size)} of random bytes")
    write_random_file(source, settings.big_size)
    baseline = Samples("cp FILE DEST && sync DEST")
    ours = Samples("safekeeper put FILE")

    def run_baseline() -> float:
        dest_dir = root / "cp-dest"
        remove(dest_dir)
        dest_dir.mkdir()
        dest = dest_dir / source.name
        warm_cache(source)
        flush_disk()
        script = 'cp -- "$1" "$2" && sync -- "$2"'
        seconds = run_timed(["sh", "-c", script, "sh", source, dest]).seconds
        if dest.stat().st_size != settings.big_size:
            raise RuntimeError(f"cp wrote {dest.stat().st_size} bytes, not {settings.big_size}")
        remove(dest_dir)
        return seconds

    def run_safekeeper() -> float:
        data_dir = fresh_data_dir(settings, root / "sk-data")
        warm_cache(source)
        flush_disk()
        seconds = timed_put(settings, data_dir, source, 1)
        remove(data_dir)
        return seconds

    def run_openssl() -> float:
        warm_cache(source)
        flush_disk()
        digest = run_timed(["openssl", "dgst", "-sha256", source])
        if "=" not in digest.stdout:
            raise RuntimeError(f"openssl dgst printed no digest: {digest.stdout!r}")
        return digest.seconds

    openssl = Samples("openssl dgst -sha256 FILE (info)")
    sides: dict[str, tuple[Samples, Callable[[], float]]] = {
        "baseline": (baseline, run_baseline),
        "safekeeper": (ours, run_safekeeper),
    }
    if not have_tools("openssl"):
        sides["openssl"] = (openssl, run_openssl)
    names = list(sides)
    for i in range(settings.repeats):
        for side in names[i % len(names) :] + names[: i % len(names)]:
            samples, action = sides[side]
            seconds = action()
            samples.add(seconds)
            rate = settings.big_size / MB / seconds
            log(f"big: round {i + 1} {side}: {seconds:.3f} s ({rate:.0f} MB/s)")
    remove(source)

    base_rate = settings.big_size / MB / baseline.median
    our_rate = settings.big_size / MB / ours.median
    ratio = our_rate / base_rate
    result = {
        "size_bytes": settings.big_size,
        "baseline": baseline.as_dict(),
        "safekeeper": ours.as_dict(),
        "baseline_mb_s": round(base_rate, 1),
        "safekeeper_mb_s": round(our_rate, 1),
        "ratio": round(ratio, 3),
        "target": f">= {BIG_TARGET}",
        "passed": ratio >= BIG_TARGET,
    }
    rows = [
        Row(
            "big",
            f"1 file of {format_bytes(settings.big_size)}: MB/s (s)",
            f"{base_rate:.0f} ({baseline.median:.2f} s)",
            f"{our_rate:.0f} ({ours.median:.2f} s)",
            f"{ratio:.2f}",
            f">= {BIG_TARGET}",
            verdict(ratio >= BIG_TARGET),
        )
    ]
    if openssl.seconds:
        floor = max(baseline.median, openssl.median)
        floor_ratio = floor / ours.median
        result["openssl"] = openssl.as_dict()
        result["floor_seconds"] = round(floor, 3)
        result["floor_ratio"] = round(floor_ratio, 3)
        result["floor_passed"] = floor_ratio >= BIG_FLOOR_TARGET
        rows.append(
            Row(
                "big",
                "vs floor max(cp && sync, openssl dgst -sha256): s",
                f"{floor:.2f} (openssl {openssl.median:.2f})",
                f"{ours.median:.2f}",
                f"{floor_ratio:.2f}",
                f">= {BIG_FLOOR_TARGET}",
                verdict(floor_ratio >= BIG_FLOOR_TARGET),
            )
        )
    return result, rows


# -- many --------------------------------------------------------------------------------


def bench_many(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    root = settings.work / "many"
    source = root / "files"
    count = settings.many_count
    log(f"many: writing {count} files of {format_bytes(settings.file_size)}")
    write_random_files(source, count, settings.file_size)
    annex = Samples("git annex add DIR")
    ours = Samples("safekeeper put DIR")

    def run_annex() -> float:
        repo = root / "annex-repo"
        remove(repo)
        repo.mkdir()
        run(["git", "init", "-q"], cwd=repo, env=GIT_ENV)
        run(["git", "annex", "init", "-q", "bench"], cwd=repo, env=GIT_ENV)
        run(["cp", "-r", "--", source, repo / "files"])
        flush_disk()
        seconds = run_timed(["git", "annex", "add", "files"], cwd=repo, env=GIT_ENV).seconds
        annexed = int(run(["git", "annex", "find", "--format=.", "files"], cwd=repo).count("."))
        if annexed != count:
            raise RuntimeError(f"git annex add annexed {annexed} files, expected {count}")
        remove(repo)
        return seconds

    def run_safekeeper() -> float:
        data_dir = fresh_data_dir(settings, root / "sk-data")
        warm_cache(source)
        flush_disk()
        seconds = timed_put(settings, data_dir, source, count)
        remove(data_dir)
        return seconds

    rounds = max(settings.repeats, settings.annex_repeats)
    for i in range(rounds):
        for side in alternate(i, "annex", "safekeeper"):
            if side == "annex" and i < settings.annex_repeats:
                seconds = run_annex()
                annex.add(seconds)
            elif side == "safekeeper" and i < settings.repeats:
                seconds = run_safekeeper()
                ours.add(seconds)
            else:
                continue
            log(
                f"many: round {i + 1} {side}: {seconds:.2f} s ({seconds / count * 1e6:.0f} µs/file)"
            )
    remove(source)

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
    rows = [
        Row(
            "many",
            f"{count} files of {format_bytes(settings.file_size)}: s (files/s)",
            f"{annex.median:.2f} ({count / annex.median:.0f})",
            f"{ours.median:.2f} ({count / ours.median:.0f})",
            f"{ratio:.2f}x faster",
            f">= {MANY_TARGET:g}x",
            verdict(ratio >= MANY_TARGET),
        )
    ]
    return result, rows


# -- refs --------------------------------------------------------------------------------


def bench_refs(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    root = settings.work / "refs"
    source = root / "files"
    count = settings.many_count
    log(f"refs: writing {count} files of {format_bytes(settings.file_size)}")
    write_random_files(source, count, settings.file_size)
    dest = root / "dest"

    def run_tool(script: str) -> Timed:
        remove(dest)
        warm_cache(source)
        flush_disk()
        timed = run_timed(["sh", "-c", script, "sh", source, dest])
        copied = sum(1 for _ in dest.iterdir())
        if copied != count:
            raise RuntimeError(f"{script} copied {copied} files, expected {count}")
        remove(dest)
        return timed

    def run_put(*extra: str) -> Timed:
        data_dir = fresh_data_dir(settings, root / "sk-data")
        warm_cache(source)
        flush_disk()
        timed = timed_put_cpu(settings, data_dir, source, count, *extra)
        remove(data_dir)
        return timed

    samples = {
        "cp": Samples("cp -r DIR DEST && sync -f DEST"),
        "rclone": Samples("rclone copy --checksum DIR DEST && sync -f DEST"),
        "no-ref": Samples("safekeeper put DIR --no-ref"),
        "ref": Samples("safekeeper put DIR --ref bench:tree"),
    }
    actions: dict[str, Callable[[], Timed]] = {
        "cp": lambda: run_tool('cp -r -- "$1" "$2" && sync -f "$2"'),
        "rclone": lambda: run_tool('rclone copy --checksum "$1" "$2" && sync -f "$2"'),
        "no-ref": lambda: run_put("--no-ref"),
        "ref": lambda: run_put("--ref", "bench:tree"),
    }
    if have_tools("rclone"):
        del samples["rclone"], actions["rclone"]
        log("refs: rclone not found on PATH; its row is skipped")
    cpu = {side: Samples(f"{s.label}: CPU (user + system)") for side, s in samples.items()}
    names = list(actions)
    for i in range(settings.repeats):
        for side in names[i % len(names) :] + names[: i % len(names)]:
            timed = actions[side]()
            samples[side].add(timed.seconds)
            cpu[side].add(timed.cpu_seconds)
            log(
                f"refs: round {i + 1} {side}: {timed.seconds:.2f} s "
                f"({count / timed.seconds:.0f} files/s), CPU {timed.cpu_seconds:.2f} s"
            )
    remove(source)

    ref = samples["ref"].median
    cp_ratio = samples["cp"].median / ref
    overhead = ref / samples["no-ref"].median - 1
    result: dict[str, Any] = {
        "count": count,
        "file_size_bytes": settings.file_size,
        **{side: s.as_dict() for side, s in samples.items()},
        "cpu": {side: s.as_dict() for side, s in cpu.items()},
        "ratio_vs_cp": round(cp_ratio, 3),
        "ref_overhead": round(overhead, 3),
        "targets": {
            "vs_cp": f">= {REFS_CP_TARGET}",
            "vs_rclone": f">= {REFS_RCLONE_TARGET}",
            "ref_overhead": f"<= {REFS_OVERHEAD_TARGET}",
        },
        "passed": cp_ratio >= REFS_CP_TARGET and overhead <= REFS_OVERHEAD_TARGET,
    }
    measure = f"{count} files of {format_bytes(settings.file_size)}: s (files/s)"
    ours = f"{ref:.2f} ({count / ref:.0f})"

    def tool(side: str) -> str:
        median = samples[side].median
        return f"{side}: {median:.2f} ({count / median:.0f})"

    rows = [
        Row(
            "refs",
            f"put --ref vs cp -r && sync, {measure}",
            tool("cp"),
            ours,
            f"{cp_ratio:.2f}",
            f">= {REFS_CP_TARGET}",
            verdict(cp_ratio >= REFS_CP_TARGET),
        )
    ]
    if "rclone" in samples:
        rclone_ratio = samples["rclone"].median / ref
        result["ratio_vs_rclone"] = round(rclone_ratio, 3)
        result["passed"] = result["passed"] and rclone_ratio >= REFS_RCLONE_TARGET
        rows.append(
            Row(
                "refs",
                f"put --ref vs rclone copy --checksum && sync, {measure}",
                tool("rclone"),
                ours,
                f"{rclone_ratio:.2f}",
                f">= {REFS_RCLONE_TARGET:g}",
                verdict(rclone_ratio >= REFS_RCLONE_TARGET),
            )
        )
    no_ref = samples["no-ref"].median
    rows.append(
        Row(
            "refs",
            f"put --ref vs put --no-ref, {measure}",
            f"--no-ref: {no_ref:.2f} ({count / no_ref:.0f})",
            ours,
            f"{overhead:+.0%}",
            f"<= +{REFS_OVERHEAD_TARGET:.0%}",
            verdict(overhead <= REFS_OVERHEAD_TARGET),
        )
    )
    # CPU: what each side costs whatever else the machine runs (info).
    ours_cpu = cpu["ref"].median
    for side in cpu:
        if side != "ref":
            rows.append(
                Row(
                    "refs",
                    f"CPU s (user + system): put --ref vs {side}",
                    f"{side}: {cpu[side].median:.2f}",
                    f"{ours_cpu:.2f}",
                    f"{cpu[side].median / ours_cpu:.2f}",
                    "(info)",
                )
            )
    return result, rows


# -- growth ------------------------------------------------------------------------------


def bench_growth(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    root = settings.work / "growth"
    sizes = settings.growth_sizes
    sources: dict[int, Path] = {}
    for n in sizes:
        log(f"growth: writing {n} files of {format_bytes(settings.file_size)}")
        sources[n] = write_random_files(root / f"files-{n}", n, settings.file_size)
    samples = {n: Samples(f"safekeeper put DIR ({n} files)") for n in sizes}
    for i in range(settings.repeats):
        # Rotate the order each round so no size always runs first (or last).
        order = sizes[i % len(sizes) :] + sizes[: i % len(sizes)]
        for n in order:
            data_dir = fresh_data_dir(settings, root / "sk-data")
            warm_cache(sources[n])
            flush_disk()
            seconds = timed_put(settings, data_dir, sources[n], n)
            remove(data_dir)
            samples[n].add(seconds)
            log(
                f"growth: round {i + 1} {n} files: {seconds:.2f} s "
                f"({seconds / n * 1e6:.0f} µs/file)"
            )
    for path in sources.values():
        remove(path)

    per_file = {n: samples[n].median / n * 1e6 for n in sizes}
    marginal: list[dict[str, Any]] = []
    for a, b in itertools.pairwise(sizes):
        us = (samples[b].median - samples[a].median) / (b - a) * 1e6
        marginal.append({"from": a, "to": b, "us_per_file": round(us, 1)})
    largest, smallest = sizes[-1], sizes[0]
    per_file_ratio = per_file[largest] / per_file[smallest]
    marginal_ratio = (
        marginal[-1]["us_per_file"] / marginal[0]["us_per_file"]
        if len(marginal) >= 2 and marginal[0]["us_per_file"] > 0
        else None
    )
    result = {
        "file_size_bytes": settings.file_size,
        "sizes": list(sizes),
        "safekeeper": {str(n): samples[n].as_dict() for n in sizes},
        "us_per_file": {str(n): round(per_file[n], 1) for n in sizes},
        "per_file_ratio_largest_smallest": round(per_file_ratio, 3),
        "marginal": marginal,
        "marginal_ratio_last_first": None if marginal_ratio is None else round(marginal_ratio, 3),
        "target": "flat (ratio ~ 1); informational",
    }
    rows = [
        Row(
            "growth",
            f"{n} files: s (µs/file)",
            safekeeper=f"{samples[n].median:.2f} ({per_file[n]:.0f})",
        )
        for n in sizes
    ]
    rows.append(
        Row(
            "growth",
            f"µs/file {largest} / µs/file {smallest}",
            ratio=f"{per_file_ratio:.2f}",
            target="~1 (info)",
        )
    )
    for m in marginal:
        rows.append(
            Row(
                "growth",
                f"marginal µs/file {m['from']} -> {m['to']}",
                safekeeper=f"{m['us_per_file']:.0f}",
            )
        )
    if marginal_ratio is not None:
        first, last = marginal[0], marginal[-1]
        rows.append(
            Row(
                "growth",
                f"marginal ({last['from']}->{last['to']}) / ({first['from']}->{first['to']})",
                ratio=f"{marginal_ratio:.2f}",
                target="~1 (info)",
            )
        )
    return result, rows


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark safekeeper put against cp+sync and git-annex.",
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
        help="small sizes and one repeat (big 16MiB, many/refs 100, growth 100,200,400)",
    )
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 3; quick 1)")
    parser.add_argument(
        "--annex-repeats", type=int, help="repeats of the git-annex baseline (default: --repeats)"
    )
    parser.add_argument("--big-size", help="size of the big file (default 1GiB; quick 16MiB)")
    parser.add_argument(
        "--many-count", type=int, help="files for 'many' and 'refs' (default 10000)"
    )
    parser.add_argument("--file-size", default="4KiB", help="small file size (default 4KiB)")
    parser.add_argument(
        "--growth-sizes", help="file counts for 'growth' (default 1000,10000,100000)"
    )
    add_output_options(
        parser,
        "put temp data in a fresh directory under this one (default: /tmp when it is on "
        "the repository's filesystem, else bench/out)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = parse_only(args.only, BENCHMARKS)
    defaults = QUICK if args.quick else FULL
    repeats = args.repeats or defaults.repeats
    growth_text = str(args.growth_sizes or defaults.growth_sizes)
    growth_sizes = tuple(sorted({int(n) for n in growth_text.split(",") if n.strip()}))
    if "growth" in only and len(growth_sizes) < 2:
        raise SystemExit("error: --growth-sizes needs at least two sizes")
    if repeats < 1 or (args.annex_repeats is not None and args.annex_repeats < 1):
        raise SystemExit("error: repeats must be at least 1")
    safekeeper = find_executable("safekeeper")
    skipped: dict[str, str] = {}
    if "many" in only and (missing := have_tools("git-annex")):
        skipped["many"] = f"skipped: {', '.join(missing)} not found on PATH"
        only.remove("many")
        log(f"many: {skipped['many']}")

    status = 0
    with workdir(args.workdir, keep=args.keep) as work:
        settings = Settings(
            work=work,
            safekeeper=safekeeper,
            repeats=repeats,
            annex_repeats=args.annex_repeats or repeats,
            big_size=parse_size(str(args.big_size or defaults.big_size)),
            many_count=args.many_count or defaults.many_count,
            file_size=parse_size(args.file_size),
            growth_sizes=growth_sizes,
        )
        machine = machine_info(work)
        runners = {
            "big": bench_big,
            "many": bench_many,
            "refs": bench_refs,
            "growth": bench_growth,
        }
        results: dict[str, Any] = {name: {"skipped": note} for name, note in skipped.items()}
        rows: list[Row] = [Row(name, note) for name, note in skipped.items()]
        try:
            status = run_selected(runners, only, settings, results, rows)
        finally:
            report(
                "ingest",
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
                    "growth_sizes": list(settings.growth_sizes),
                    "git_annex": annex_version() if "many" in only else None,
                },
                json_out=args.json_out,
            )
    return exit_status(results, status, args.check_targets)


if __name__ == "__main__":
    sys.exit(main())
