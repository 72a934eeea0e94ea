"""Framework adapters benchmark: what going through safekeeper costs a Django app or a
data team, against what they would use without it.

    python bench/frameworks.py                 # full sizes
    python bench/frameworks.py --quick         # smaller, for a smoke test

``django``
    The test project's ``Document`` model (tests/contrib/django_project) saved through a
    ``ModelForm`` ``--files`` times with a small upload each, then every file opened and
    read back: Django's ``FileSystemStorage`` vs ``SafekeeperStorage`` (embedded default:
    SQLite catalog, ``file:`` inbox). Ratio = baseline time / safekeeper time.
``fsspec``
    One ``--size`` file read whole in ``--range`` ranges through ``fsspec``: ``file://``
    vs ``safekeeper://`` (the same bytes put into safekeeper first, untimed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    MiB,
    Row,
    Samples,
    add_output_options,
    alternate,
    exit_status,
    format_bytes,
    log,
    machine_info,
    parse_only,
    parse_size,
    report,
    workdir,
    write_random_file,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCHMARKS = ("django", "fsspec")


def _timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _interleaved(
    benchmark: str, measure: str, rounds: int, run: Callable[[str, int], None]
) -> tuple[dict[str, Any], list[Row]]:
    """Time ``run(side, round)`` for both sides in alternating order; medians and ratio
    (baseline time / safekeeper time)."""
    samples = {"baseline": Samples("baseline"), "safekeeper": Samples("safekeeper")}
    for round_index in range(rounds):
        for side in alternate(round_index, "baseline", "safekeeper"):
            samples[side].add(_timed(lambda s=side, r=round_index: run(s, r)))
    base, ours = samples["baseline"].median, samples["safekeeper"].median
    row = Row(benchmark, measure, f"{base:.2f} s", f"{ours:.2f} s", f"{base / ours:.2f}x")
    result = {side: sample.as_dict() for side, sample in samples.items()}
    return {**result, "ratio": base / ours}, [row]


def bench_django(work: Path, files: int, rounds: int) -> tuple[dict[str, Any], list[Row]]:
    from safekeeper.config import write_default

    data_dir = work / "django-data"
    write_default(data_dir)
    os.environ["SAFEKEEPER_DATA_DIR"] = str(data_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.contrib.django_project.settings"
    import django

    django.setup()
    from django import forms
    from django.core.files.storage import FileSystemStorage, default_storage
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.core.management import call_command

    from tests.contrib.django_project.djapp.models import Document

    call_command("migrate", verbosity=0)

    class DocumentForm(forms.ModelForm):  # type: ignore[type-arg]
        class Meta:
            model = Document
            fields = ["title", "upload"]

    field = Document._meta.get_field("upload")
    storages = {"baseline": FileSystemStorage(location=work / "fs-media"), "safekeeper": None}

    def save_and_read(side: str, round_index: int) -> None:
        field.storage = storages[side] or default_storage
        names = []
        for i in range(files):
            body = f"{side} {round_index} {i} ".encode() * 200  # ~4 KiB, distinct
            upload = SimpleUploadedFile(f"r{round_index}-f{i}.txt", body)
            form = DocumentForm({"title": str(i)}, {"upload": upload})
            if not form.is_valid():
                raise RuntimeError(form.errors)
            names.append(form.save().upload.name)
        for name in names:
            with field.storage.open(name) as opened:
                opened.read()

    return _interleaved("django", f"save + open {files} files via ModelForm", rounds, save_and_read)


def bench_fsspec(
    work: Path, size: int, range_size: int, rounds: int
) -> tuple[dict[str, Any], list[Row]]:
    import fsspec

    from safekeeper.config import write_default

    source = write_random_file(work / "big.bin", size)
    data_dir = work / "fsspec-data"
    write_default(data_dir)
    safekeeper_fs = fsspec.filesystem("safekeeper", data_dir=data_dir)
    safekeeper_fs.put_file(str(source), "bench/big.bin")
    local_fs = fsspec.filesystem("file")
    paths = {"baseline": (local_fs, str(source)), "safekeeper": (safekeeper_fs, "bench/big.bin")}

    def read_all(side: str) -> None:
        filesystem, path = paths[side]
        for start in range(0, size, range_size):
            data = filesystem.cat_file(path, start=start, end=min(start + range_size, size))
            if len(data) != min(range_size, size - start):
                raise RuntimeError(f"{side}: short range at {start}")

    measure = f"read {format_bytes(size)} in {format_bytes(range_size)} ranges"
    return _interleaved("fsspec", measure, rounds, lambda side, _round: read_all(side))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--files", type=int, help="django: files per side (default 2000)")
    parser.add_argument("--size", type=parse_size, help="fsspec: file size (default 1G)")
    parser.add_argument("--range", type=parse_size, help="fsspec: range size (default 64M)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    add_output_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = parse_only(args.only, BENCHMARKS)
    files = args.files or (200 if args.quick else 2000)
    size = args.size or (64 * MiB if args.quick else 1024 * MiB)
    range_size = args.range or (8 * MiB if args.quick else 64 * MiB)
    rounds = args.rounds or (1 if args.quick else 3)
    results: dict[str, Any] = {}
    rows: list[Row] = []
    with workdir(args.workdir, keep=args.keep) as work:
        machine = machine_info(work)
        if "django" in only:
            log(f"django: {files} files per side, {rounds} rounds")
            results["django"], new_rows = bench_django(work, files, rounds)
            rows += new_rows
        if "fsspec" in only:
            log(f"fsspec: {format_bytes(size)} in {format_bytes(range_size)} ranges")
            results["fsspec"], new_rows = bench_fsspec(work, size, range_size, rounds)
            rows += new_rows
        report(
            "frameworks",
            machine,
            rows,
            results,
            complete=True,
            repeats=f"{rounds} interleaved rounds",
            settings={
                "quick": args.quick,
                "files": files,
                "size": size,
                "range": range_size,
                "rounds": rounds,
            },
            json_out=args.json_out,
        )
    return exit_status(results, 0, args.check_targets)


if __name__ == "__main__":
    sys.exit(main())
