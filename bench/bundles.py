"""Bundle benchmark: ``safekeeper export`` / ``import`` against ``tar -cf`` / ``tar -xf``.

    python bench/bundles.py                  # 2,000 blobs of 512 KiB (1000 MiB), 3 rounds
    python bench/bundles.py --quick          # 50 blobs, 1 round (smoke test)
    python -m bench.bundles --count 500 --json-out bench/out/bundles.json

One namespace holds ``--count`` references to distinct blobs of ``--blob-size`` random
bytes (put once, untimed). Every command is the real CLI in a subprocess:

``export``
    ``safekeeper --data-dir D export bench -o B.tar`` (an uncompressed bundle, fsynced
    before its rename) against ``tar -cf T.tar files && sync T.tar`` over the same
    files (plain ``tar -cf`` is timed too, for information).
``import``
    ``safekeeper --data-dir D2 import B.tar`` into a fresh data directory (every blob
    hashed, staged, synced, recorded) against ``tar -xf T.tar -C DIR && sync -f DIR``
    (plain ``tar -xf`` timed too).

Throughput is the blobs' bytes over wall time; ratio = safekeeper MB/s / baseline MB/s,
target >= 0.8 in both directions. Before each timed run, outside the timing: the input
is read once (page cache warm for both sides), outputs are fresh, dirty pages are
written back. Sides are interleaved, alternating which goes first; medians reported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python -m bench.bundles` too

from common import (
    MB,
    CommandFailed,
    Row,
    Samples,
    add_output_options,
    alternate,
    count_files,
    exit_status,
    find_executable,
    flush_disk,
    format_bytes,
    log,
    machine_info,
    parse_size,
    remove,
    report,
    run,
    run_timed,
    verdict,
    warm_cache,
    workdir,
    write_random_files,
)

TARGET = 0.8


@dataclass(frozen=True)
class Settings:
    work: Path
    safekeeper: str
    tar: str
    repeats: int
    count: int
    blob_size: int

    @property
    def total(self) -> int:
        return self.count * self.blob_size


def prepare(settings: Settings) -> tuple[Path, Path]:
    """The source files and a data directory referencing each as ``bench:files/<name>``."""
    files = settings.work / "files"
    log(f"writing {settings.count} files of {format_bytes(settings.blob_size)}")
    write_random_files(files, settings.count, settings.blob_size)
    data_dir = settings.work / "sk-source"
    run([settings.safekeeper, "init", data_dir])
    run([settings.safekeeper, "--data-dir", data_dir, "put", files, "--ref", "bench:files"])
    return files, data_dir


def measure(
    settings: Settings,
    name: str,
    sides: dict[str, Callable[[], float]],
) -> dict[str, Samples]:
    samples = {side: Samples(side) for side in sides}
    order = list(sides)
    for i in range(settings.repeats):
        first, second = alternate(i, order[0], order[1])
        for side in [first, second, *order[2:]]:
            seconds = sides[side]()
            samples[side].add(seconds)
            rate = settings.total / MB / seconds
            log(f"{name}: round {i + 1} {side}: {seconds:.2f} s ({rate:.0f} MB/s)")
    return samples


def summarize(
    settings: Settings, name: str, samples: dict[str, Samples], baseline: str, plain: str
) -> tuple[dict[str, Any], list[Row]]:
    ours = samples["safekeeper"]
    rates = {side: settings.total / MB / s.median for side, s in samples.items()}
    ratio = rates["safekeeper"] / rates[baseline]
    plain_ratio = rates["safekeeper"] / rates[plain]
    result = {
        "bytes": settings.total,
        "count": settings.count,
        **{side: s.as_dict() for side, s in samples.items()},
        **{f"{side}_mb_s": round(rate, 1) for side, rate in rates.items()},
        "ratio": round(ratio, 3),
        "ratio_vs_plain_tar": round(plain_ratio, 3),
        "target": f">= {TARGET}",
        "passed": ratio >= TARGET,
    }
    what = f"{settings.count} x {format_bytes(settings.blob_size)}: MB/s (s)"
    rows = [
        Row(
            name,
            what,
            f"{baseline}: {rates[baseline]:.0f} ({samples[baseline].median:.2f} s)",
            f"{rates['safekeeper']:.0f} ({ours.median:.2f} s)",
            f"{ratio:.2f}",
            f">= {TARGET}",
            verdict(ratio >= TARGET),
        ),
        Row(
            name,
            what,
            f"{plain}: {rates[plain]:.0f} ({samples[plain].median:.2f} s)",
            f"{rates['safekeeper']:.0f} ({ours.median:.2f} s)",
            f"{plain_ratio:.2f}",
            "info",
        ),
    ]
    return result, rows


def bench(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    files, source = prepare(settings)
    out = settings.work / "out"
    bundle, tarball = out / "bundle.tar", out / "files.tar"
    out.mkdir()

    def export_safekeeper() -> float:
        remove(bundle)
        warm_cache(source / "inbox")
        flush_disk()
        argv = [settings.safekeeper, "--data-dir", source, "export", "bench", "-o", bundle]
        result = run_timed(argv)
        if f"{settings.count} blobs" not in result.stdout:
            raise RuntimeError(f"unexpected export output: {result.stdout}{result.stderr}")
        return result.seconds

    def export_tar(sync: bool) -> Callable[[], float]:
        def action() -> float:
            remove(tarball)
            warm_cache(files)
            flush_disk()
            script = 'tar -cf "$1" -C "$2" files' + (' && sync "$1"' if sync else "")
            return run_timed(["sh", "-c", script, "sh", tarball, settings.work]).seconds

        return action

    export = measure(
        settings,
        "export",
        {
            "safekeeper": export_safekeeper,
            "tar -cf + sync": export_tar(True),
            "tar -cf": export_tar(False),
        },
    )
    export_result, rows = summarize(settings, "export", export, "tar -cf + sync", "tar -cf")

    target_dir = settings.work / "sk-target"
    extract_dir = settings.work / "extracted"

    def import_safekeeper() -> float:
        remove(target_dir)
        run([settings.safekeeper, "init", target_dir])
        warm_cache(bundle)
        flush_disk()
        result = run_timed([settings.safekeeper, "--data-dir", target_dir, "import", bundle])
        if f"{settings.count} blobs stored" not in result.stdout:
            raise RuntimeError(f"unexpected import output: {result.stdout}{result.stderr}")
        return result.seconds

    def import_tar(sync: bool) -> Callable[[], float]:
        def action() -> float:
            remove(extract_dir)
            extract_dir.mkdir()
            warm_cache(tarball)
            flush_disk()
            script = 'tar -xf "$1" -C "$2"' + (' && sync -f "$2"' if sync else "")
            seconds = run_timed(["sh", "-c", script, "sh", tarball, extract_dir]).seconds
            if count_files(extract_dir) != settings.count:
                raise RuntimeError(f"tar extracted {count_files(extract_dir)} files")
            return seconds

        return action

    imported = measure(
        settings,
        "import",
        {
            "safekeeper": import_safekeeper,
            "tar -xf + sync": import_tar(True),
            "tar -xf": import_tar(False),
        },
    )
    import_result, import_rows = summarize(
        settings, "import", imported, "tar -xf + sync", "tar -xf"
    )
    for path in (target_dir, extract_dir, out, files, source):
        remove(path)
    return {"export": export_result, "import": import_result}, rows + import_rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark safekeeper export/import against tar.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[1] if __doc__ else None,
    )
    parser.add_argument("--quick", action="store_true", help="50 blobs and one round")
    parser.add_argument("--count", type=int, help="blobs in the namespace (default 2000)")
    parser.add_argument("--blob-size", default="512KiB", help="bytes per blob (512KiB)")
    parser.add_argument("--repeats", type=int, help="rounds (default 3; quick 1)")
    add_output_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    count = args.count or (50 if args.quick else 2000)
    if repeats < 1 or count < 1:
        raise SystemExit("error: --repeats and --count must be at least 1")
    status = 0
    with workdir(args.workdir, keep=args.keep) as work:
        settings = Settings(
            work=work,
            safekeeper=find_executable("safekeeper"),
            tar=find_executable("tar"),
            repeats=repeats,
            count=count,
            blob_size=parse_size(args.blob_size),
        )
        machine = machine_info(work)
        results: dict[str, Any] = {}
        rows: list[Row] = []
        try:
            results, rows = bench(settings)
        except CommandFailed as exc:
            log(f"error: {exc}")
            status = 2
        finally:
            report(
                "bundles",
                machine,
                rows,
                results,
                complete=status == 0,
                repeats=f"repeats {repeats}",
                settings={
                    "quick": args.quick,
                    "repeats": repeats,
                    "count": count,
                    "blob_size": settings.blob_size,
                },
                json_out=args.json_out,
            )
    return exit_status(results, status, args.check_targets)


if __name__ == "__main__":
    sys.exit(main())
