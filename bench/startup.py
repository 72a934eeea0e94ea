"""Start-up benchmark: what every command pays before doing anything, against the bare
interpreter.

    python bench/startup.py                    # 21 rounds per command (about a minute)
    python bench/startup.py --quick            # 3 rounds (smoke test, ~10 s on an idle machine)
    python bench/startup.py --only help --rounds 41 --json-out bench/out/startup.json

Benchmarks (every command the real ``safekeeper`` entry point in a subprocess):

``help``
    ``safekeeper --help`` against ``python -c pass`` (the interpreter of the
    ``safekeeper`` script, so both pay for the same ``site``). Target: <= 0.15 s.
``ls``
    ``safekeeper --data-dir D ls`` on a data dir made here (``init`` and a few
    ``put``, untimed; migrated) against ``python -c pass``. Target: <= 0.3 s. An info
    row times the import of the libraries ``ls`` cannot do without (Typer, pydantic,
    SQLAlchemy's ORM, a Rich table): the floor for any command that reads the database.

Each runs with two bytecode caches, both private to the run (``PYTHONPYCACHEPREFIX``):

``warm``
    Every module's bytecode is cached (a warm-up run wrote it), as on a machine where
    ``python`` may write ``__pycache__``.
``cold-safekeeper``
    ``PYTHONDONTWRITEBYTECODE=1`` and safekeeper's own modules uncached, everything else
    cached: an editable install where the environment forbids writing bytecode (as in
    this project's sandboxes and CI), so safekeeper's sources are compiled on every
    start. Info only.

Rounds interleave the baseline and the command, alternating which goes first. Tables
show the median wall time and, in brackets, the median CPU time of the child (user +
system): on a shared, loaded machine the CPU time is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    Row,
    Samples,
    add_output_options,
    alternate,
    exit_status,
    find_executable,
    log,
    machine_info,
    parse_only,
    remove,
    report,
    run,
    run_selected,
    verdict,
    workdir,
)

BENCHMARKS = ("help", "ls")
TARGETS = {"help": 0.15, "ls": 0.3}
CACHES = ("warm", "cold-safekeeper")
#: What ``ls`` cannot avoid importing: the CLI framework (which validates parameters
#: with pydantic), the ORM and a table printer.
FLOOR_IMPORTS = "import typer, pydantic, sqlalchemy.orm, rich.table"
BLOBS = 5


@dataclass(frozen=True)
class Settings:
    work: Path
    safekeeper: str
    python: str
    rounds: int
    #: Environment per cache mode (``CACHES``).
    envs: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Timings:
    """Wall and CPU samples of one command under one cache mode."""

    label: str
    wall: Samples = field(init=False)
    cpu: Samples = field(init=False)

    def __post_init__(self) -> None:
        self.wall, self.cpu = Samples(self.label), Samples(self.label)

    def text(self) -> str:
        return f"{self.wall.median:.3f} ({self.cpu.median:.3f})"

    def as_dict(self) -> dict[str, Any]:
        return {"wall": self.wall.as_dict(), "cpu": self.cpu.as_dict()}


def run_measured(
    argv: Sequence[str | os.PathLike[str]], env: dict[str, str]
) -> tuple[float, float]:
    """Run ``argv`` (output discarded); (wall seconds, child CPU seconds). Raises on failure."""
    args = [str(a) for a in argv]
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(
        args,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        check=False,
    )
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(args)}\n{proc.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def interpreter_of(script: str) -> str:
    """The Python a console script runs with (its ``#!`` line), else this one."""
    try:
        with open(script, "rb") as f:
            first = f.readline().decode(errors="replace").strip()
    except OSError:
        return sys.executable
    if first.startswith("#!") and "python" in first:
        candidate = first[2:].split()[0]
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def cache_envs(
    work: Path, python: str, warm_commands: Sequence[Sequence[str]]
) -> dict[str, dict[str, str]]:
    """The environment of each cache mode, with its private bytecode cache made ready."""
    # PYTHONPATH stays: it is how a checkout other than the installed one is measured
    # (PYTHONPATH=/path/to/tree python bench/startup.py), and the package directory
    # below is found with it too.
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SAFEKEEPER_", "PYTHON")) or k == "PYTHONPATH"
    }
    warm_prefix, cold_prefix = work / "pycache-warm", work / "pycache-cold"
    warm = {**base, "PYTHONPYCACHEPREFIX": str(warm_prefix)}
    for argv in warm_commands:  # compile and write everything these commands import
        run_measured(argv, warm)
    package = Path(
        run(
            [python, "-c", "import safekeeper, os; print(os.path.dirname(safekeeper.__file__))"]
        ).strip()
    )
    shutil.copytree(warm_prefix, cold_prefix)
    own = cold_prefix / package.relative_to(package.anchor)
    if not own.is_dir():
        raise RuntimeError(f"no bytecode of {package} under {cold_prefix}: is it installed?")
    shutil.rmtree(own)
    cold = {**base, "PYTHONPYCACHEPREFIX": str(cold_prefix), "PYTHONDONTWRITEBYTECODE": "1"}
    return {"warm": warm, "cold-safekeeper": cold}


def measure(
    settings: Settings, name: str, commands: dict[str, Sequence[str | os.PathLike[str]]]
) -> dict[str, dict[str, Timings]]:
    """Every command under every cache mode, ``settings.rounds`` interleaved rounds."""
    timings = {cache: {label: Timings(label) for label in commands} for cache in CACHES}
    labels = list(commands)
    for i in range(settings.rounds):
        order = labels if i % 2 == 0 else labels[::-1]
        for cache in alternate(i, *CACHES):
            for label in order:
                wall, cpu = run_measured(commands[label], settings.envs[cache])
                timings[cache][label].wall.add(wall)
                timings[cache][label].cpu.add(cpu)
        warm = timings["warm"]
        log(
            f"{name}: round {i + 1}: warm "
            + ", ".join(f"{t.wall.seconds[-1]:.3f}" for t in warm.values())
        )
    return timings


def rows_for(
    name: str, command: str, timings: dict[str, dict[str, Timings]]
) -> tuple[dict[str, Any], list[Row]]:
    target = TARGETS[name]
    rows: list[Row] = []
    result: dict[str, Any] = {"target_s": target}
    for cache in CACHES:
        bare, sk = timings[cache]["python -c pass"], timings[cache][command]
        ratio = sk.wall.median / bare.wall.median
        passed = sk.wall.median <= target
        result[cache] = {label: t.as_dict() for label, t in timings[cache].items()}
        result[cache]["ratio_wall"] = round(ratio, 2)
        if cache == "warm":
            result["passed"] = passed
        rows.append(
            Row(
                name,
                f"{command}, {cache}: s wall (CPU)",
                f"python -c pass: {bare.text()}",
                sk.text(),
                f"{ratio:.1f}x",
                f"<= {target:g} s" if cache == "warm" else "(info)",
                verdict(passed) if cache == "warm" else "",
            )
        )
        for label, extra in timings[cache].items():
            if label not in ("python -c pass", command):
                rows.append(
                    Row(
                        name,
                        f"floor `{label}`, {cache}: s",
                        bare.text(),
                        extra.text(),
                        f"{extra.wall.median / bare.wall.median:.1f}x",
                        "(info)",
                    )
                )
    return result, rows


def bench_help(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    command = "safekeeper --help"
    commands = {
        "python -c pass": [settings.python, "-c", "pass"],
        command: [settings.safekeeper, "--help"],
    }
    return rows_for("help", command, measure(settings, "help", commands))


def bench_ls(settings: Settings) -> tuple[dict[str, Any], list[Row]]:
    data_dir = settings.work / "data"
    command = f"safekeeper ls ({BLOBS} blobs)"
    commands = {
        "python -c pass": [settings.python, "-c", "pass"],
        command: [settings.safekeeper, "--data-dir", data_dir, "ls"],
        FLOOR_IMPORTS: [settings.python, "-c", FLOOR_IMPORTS],
    }
    return rows_for("ls", command, measure(settings, "ls", commands))


def prepare_data_dir(work: Path, safekeeper: str) -> Path:
    """A data dir holding a few blobs, migrated (untimed)."""
    data_dir, files = work / "data", work / "files"
    files.mkdir()
    run([safekeeper, "init", data_dir])
    for i in range(BLOBS):
        (files / f"f{i}.txt").write_text(f"blob {i}\n" * (i + 1))
    run([safekeeper, "--data-dir", data_dir, "put", files])
    listed = run([safekeeper, "--data-dir", data_dir, "ls", "--json"])
    if listed.count('"sha256"') != BLOBS:
        raise RuntimeError(f"expected {BLOBS} blobs in {data_dir}, ls said:\n{listed}")
    return data_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark safekeeper's start-up against the bare interpreter.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[1] if __doc__ else None,
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds (smoke test)")
    parser.add_argument("--rounds", type=int, help="rounds per command (default 21; quick 3)")
    add_output_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = parse_only(args.only, BENCHMARKS)
    rounds = args.rounds or (3 if args.quick else 21)
    if rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    safekeeper = find_executable("safekeeper")
    python = interpreter_of(safekeeper)

    status = 0
    with workdir(args.workdir, keep=args.keep) as work:
        data_dir = prepare_data_dir(work, safekeeper)
        envs = cache_envs(
            work,
            python,
            [
                [python, "-c", "pass"],
                [python, "-c", FLOOR_IMPORTS],
                [safekeeper, "--help"],
                [safekeeper, "--data-dir", str(data_dir), "ls"],
            ],
        )
        settings = Settings(work, safekeeper, python, rounds, envs)
        machine = machine_info(work)
        load_before = os.getloadavg()
        runners: dict[str, Callable[[Settings], tuple[dict[str, Any], list[Row]]]] = {
            "help": bench_help,
            "ls": bench_ls,
        }
        results: dict[str, Any] = {}
        rows: list[Row] = []
        try:
            status = run_selected(runners, only, settings, results, rows)
        finally:
            load = f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
            report(
                "startup",
                machine,
                rows,
                results,
                complete=status == 0,
                repeats=f"{rounds} rounds, {load}",
                settings={"quick": args.quick, "rounds": rounds, "python": python, "blobs": BLOBS},
                json_out=args.json_out,
            )
            remove(data_dir)
    return exit_status(results, status, args.check_targets)


if __name__ == "__main__":
    sys.exit(main())
