"""Shared helpers for the benchmark scripts in ``bench/``.

Stdlib only. Every measured command runs as a subprocess, timed with
``time.perf_counter`` around ``subprocess.run``: the safekeeper side pays Python
startup exactly as a user typing the command would.

The machine the benchmarks run on is usually shared and noisy, so scripts repeat
each measurement, interleave baseline and safekeeper runs (alternating which goes
first) and report medians; the raw samples are kept for the JSON output.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
#: Throughput is reported in MB/s with MB = 10**6 bytes.
MB = 1_000_000

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Fallback work area when /tmp is on another filesystem than the repository (git-ignored).
REPO_WORK_AREA = REPO_ROOT / "bench" / "out"

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "kb": 1000,
    "m": MiB,
    "mib": MiB,
    "mb": MB,
    "g": GiB,
    "gib": GiB,
    "gb": 1000 * MB,
}


# -- logging -------------------------------------------------------------------------


_START = time.perf_counter()


def log(message: str) -> None:
    """Progress on stderr, with seconds since the script started."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


# -- running and timing commands -----------------------------------------------------


class CommandFailed(RuntimeError):
    """A benchmarked or setup command exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = "\n".join((stderr or stdout).strip().splitlines()[-40:])
        super().__init__(
            f"command failed with exit status {returncode}: {shlex_join(argv)}\n{tail}"
        )


def shlex_join(argv: Sequence[str | os.PathLike[str]]) -> str:
    return shlex.join(str(a) for a in argv)


@dataclass(frozen=True)
class Timed:
    seconds: float
    stdout: str
    stderr: str
    #: User + system CPU of the command and the children it waited for: on a shared,
    #: loaded machine the steadier measure of what the command costs.
    cpu_seconds: float = 0.0


def run_timed(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Timed:
    """Run ``argv`` and return its wall-clock time; raise CommandFailed on a non-zero exit.

    stdout and stderr go to pipes (not a terminal), the same for every command.
    """
    args = [str(a) for a in argv]
    cpu_before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    seconds = time.perf_counter() - start
    cpu_seconds = _children_cpu() - cpu_before
    if proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, proc.stdout, proc.stderr)
    return Timed(seconds, proc.stdout, proc.stderr, cpu_seconds)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run an untimed setup command; return its stdout."""
    return run_timed(argv, cwd=cwd, env=env).stdout


def find_executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"error: {name!r} not found on PATH")
    return path


# -- statistics ------------------------------------------------------------------------


@dataclass
class Samples:
    """Repeated timings of one command, in seconds."""

    label: str
    seconds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    @property
    def median(self) -> float:
        return median(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "samples_s": [round(s, 6) for s in self.seconds],
            "median_s": round(self.median, 6),
            "min_s": round(min(self.seconds), 6),
            "max_s": round(max(self.seconds), 6),
        }


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no samples")
    return float(statistics.median(values))


def alternate(round_index: int, first: str, second: str) -> tuple[str, str]:
    """Run order for one round: swap every other round so drift hits both sides alike."""
    return (first, second) if round_index % 2 == 0 else (second, first)


# -- files -----------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``1GiB``, ``64MiB``, ``4k``, ``1000000`` -> bytes (k/m/g are binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r} (try 1GiB, 64MiB, 4096)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def write_random_file(path: Path, size: int, chunk: int = 8 * MiB) -> Path:
    """``size`` random bytes (os.urandom: incompressible, never deduplicated)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        remaining = size
        while remaining > 0:
            n = min(chunk, remaining)
            out.write(os.urandom(n))
            remaining -= n
    return path


def write_random_files(directory: Path, count: int, size: int) -> Path:
    """``count`` files of ``size`` distinct random bytes, flat in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(count - 1)))
    for i in range(count):
        (directory / f"f{i:0{width}d}.bin").write_bytes(os.urandom(size))
    return directory


def warm_cache(path: Path) -> int:
    """Read a file, or every file under a directory, so it sits in the page cache.

    Returns the bytes read. Run it before timing on both sides of a comparison so
    neither pays for reading cold data.
    """
    total = 0
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        with file.open("rb", buffering=0) as f:
            while chunk := f.read(8 * MiB):
                total += len(chunk)
    return total


def flush_disk() -> None:
    """Write back all dirty pages (outside timing) so a run does not pay for the last."""
    os.sync()


def remove(path: Path) -> None:
    """Delete a file or a directory tree; missing is fine. Read-only files are fine too."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return

    def _make_writable(func: Any, failed: str, _exc: Any) -> None:
        # git-annex makes its object files and directories read-only.
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o755)
            os.chmod(failed, 0o755)
        func(failed)

    shutil.rmtree(path, onerror=_make_writable)


def count_files(path: Path) -> int:
    """Files under ``path``, leaving out dot-files and dot-directories: a store's
    identity marker (``.safekeeper-store``) and its ``.tmp`` staging area are not
    objects."""
    total = 0
    for _root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        total += sum(1 for name in files if not name.startswith("."))
    return total


# -- the work directory ----------------------------------------------------------------


def _same_filesystem(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


@contextlib.contextmanager
def workdir(parent: Path | None, *, keep: bool) -> Iterator[Path]:
    """A fresh ``safekeeper-bench-XXXX`` directory for all of a run's data.

    Under ``parent`` when given; else under /tmp when /tmp is on the repository's
    filesystem, else under ``bench/out``. Removed at the end unless ``keep``.
    """
    if parent is None:
        tmp = Path(tempfile.gettempdir())
        parent = tmp if _same_filesystem(tmp, REPO_ROOT) else REPO_WORK_AREA
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="safekeeper-bench-", dir=parent))
    log(f"work directory: {path}")
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            remove(path)


# -- the machine ---------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return platform.processor() or None


def _memory_total() -> str | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / (1024 * 1024):.1f} GiB"
    except (OSError, ValueError):
        return None
    return None


def _filesystem(path: Path) -> tuple[str | None, str | None]:
    """(device, filesystem type) holding ``path``, from ``df``."""
    out = subprocess.run(
        ["df", "--output=source,fstype", str(path)], capture_output=True, text=True, check=False
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or len(lines) < 2 or len(lines[1].split()) < 2:
        return None, None
    device, fstype = lines[1].split()[:2]
    return device, fstype


def source_fingerprint(package: Path = REPO_ROOT / "safekeeper") -> str:
    """A short hash of the package's Python sources, to tell whether they changed mid-run
    (benchmarks run while the code is being edited say so instead of mixing versions)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info(path: Path) -> dict[str, Any]:
    """Where and when the numbers were taken; ``path`` is the work directory."""
    device, fstype = _filesystem(path)
    git_commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    try:
        from importlib.metadata import version

        safekeeper_version: str | None = version("safekeeper")
    except Exception:  # noqa: BLE001 - informational only
        safekeeper_version = None
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total": _memory_total(),
        "cpu_model": _cpu_model(),
        "filesystem": fstype,
        "device": device,
        "kernel": platform.release(),
        "python": platform.python_version(),
        # Set in some CI/sandbox images: then an editable install's own modules are
        # compiled on every start (no __pycache__), which inflates startup.
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "safekeeper_version": safekeeper_version,
        "git_commit": git_commit,
        "git_dirty": bool(dirty),
        "source_fingerprint": source_fingerprint(),
    }


# -- output ------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown pipe table, padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), separator, *(line(r) for r in cells[1:])])


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# -- shared by replicate.py and deletion.py --------------------------------------------


def git_env() -> dict[str, str]:
    """This environment plus a git identity: git refuses to commit without one."""
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": "safekeeper bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "safekeeper bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    }


def have_tools(*names: str) -> list[str]:
    """The names among ``names`` that are not on PATH."""
    return [name for name in names if shutil.which(name) is None]


def clone_tree(source: Path, dest: Path, *, hardlink: bool = False) -> Path:
    """``cp -a SOURCE DEST`` (``cp -al`` with ``hardlink``); DEST must not exist yet."""
    run(["cp", "-al" if hardlink else "-a", "--", source, dest])
    return dest


def run_timed_devnull(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> float:
    """Like ``run_timed`` but stdout goes to /dev/null (for commands printing a lot)."""
    args = [str(a) for a in argv]
    start = time.perf_counter()
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        check=False,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, "", proc.stderr)
    return seconds


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_dumps(document: Mapping[str, Any], _prefix: str = "") -> str:
    """A minimal TOML writer for nested tables of strings, numbers, booleans and lists."""
    lines = [
        f"{_toml_key(k)} = {_toml_value(v)}" for k, v in document.items() if not isinstance(v, dict)
    ]
    parts = ["\n".join(lines)] if lines else []
    for key, value in document.items():
        if isinstance(value, dict):
            name = f"{_prefix}.{_toml_key(key)}" if _prefix else _toml_key(key)
            scalars = any(not isinstance(v, dict) for v in value.values())
            body = toml_dumps(value, name)
            parts.append(f"[{name}]\n{body}" if scalars or not value else body)
    return "\n\n".join(p for p in parts if p) + ("\n" if not _prefix else "")


def write_safekeeper_config(data_dir: Path, document: Mapping[str, Any]) -> Path:
    """Write ``data_dir/safekeeper.toml`` from a dict (sections as nested dicts)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "safekeeper.toml"
    path.write_text(toml_dumps(document), encoding="utf-8")
    return path


def clone_data_dir(source: Path, dest: Path, *, hardlink_stores: Sequence[str] = ()) -> Path:
    """Copy a safekeeper data dir for one timed run: everything copied for real, except
    the store directories named in ``hardlink_stores`` (read-only for the run), which
    are hard-linked. The SQLite database files are always real copies."""
    remove(dest)
    dest.mkdir(parents=True)
    for entry in sorted(source.iterdir()):
        clone_tree(entry, dest / entry.name, hardlink=entry.name in hardlink_stores)
    return dest


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def describe_machine(machine: Mapping[str, Any]) -> str:
    """One line for a results header."""
    return (
        f"{machine['date_utc']}, {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_total']} RAM, {machine['filesystem']} on {machine['device']}"
    )


# -- the summary every script prints ---------------------------------------------------

HEADERS = ["benchmark", "measure", "baseline", "safekeeper", "ratio", "target", "result"]


@dataclass
class Row:
    """One line of the summary table."""

    benchmark: str
    measure: str
    baseline: str = ""
    safekeeper: str = ""
    ratio: str = ""
    target: str = ""
    result: str = ""

    def cells(self) -> list[str]:
        return [getattr(self, name) for name in HEADERS]


def parse_only(text: str, benchmarks: Sequence[str]) -> list[str]:
    """``--only a,b`` as a list, or exit with the names that are not benchmarks."""
    only = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(only) - set(benchmarks))
    if unknown:
        raise SystemExit(f"error: unknown benchmark(s) {', '.join(unknown)}; pick {benchmarks}")
    return only


def report(
    benchmark: str,
    machine: Mapping[str, Any],
    rows: Sequence[Row],
    results: Mapping[str, Any],
    *,
    complete: bool,
    repeats: str,
    settings: Mapping[str, Any],
    json_out: Path | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Print the summary table (warning if safekeeper's sources changed during the run)
    and, with ``json_out``, write every sample with the machine and the settings."""
    fingerprint = source_fingerprint()
    changed = fingerprint != machine["source_fingerprint"]
    if changed:
        log(
            f"warning: safekeeper's sources changed during the run "
            f"({machine['source_fingerprint']} -> {fingerprint}); results mix versions"
        )
    print()
    print(f"{benchmark} benchmark: {describe_machine(machine)}; {repeats}, medians")
    print(format_table(HEADERS, [row.cells() for row in rows]))
    if json_out:
        write_json(
            json_out,
            {
                "benchmark": benchmark,
                "machine": machine,
                **(extra or {}),
                "settings": settings,
                "results": results,
                "complete": complete,
                "source_fingerprint_at_end": fingerprint,
                "source_changed_during_run": changed,
            },
        )
        log(f"wrote {json_out}")


def add_output_options(parser: argparse.ArgumentParser, workdir_help: str | None = None) -> None:
    """``--workdir``, ``--keep``, ``--json-out`` and ``--check-targets``: every script's."""
    parser.add_argument(
        "--workdir", type=Path, help=workdir_help or "parent of the temp work directory"
    )
    parser.add_argument("--keep", action="store_true", help="do not delete the temp data")
    parser.add_argument("--json-out", type=Path, help="also write results as JSON here")
    parser.add_argument(
        "--check-targets", action="store_true", help="exit with status 1 if a target is missed"
    )


#: A script's settings, passed through to its benchmarks.
S = TypeVar("S")


def run_selected(
    runners: Mapping[str, Callable[[S], tuple[Any, list[Row]]]],
    only: Collection[str],
    settings: S,
    results: dict[str, Any],
    rows: list[Row],
) -> int:
    """Run the chosen benchmarks in ``runners`` order, filling ``results`` and ``rows``
    as each ends (so the caller's ``finally`` reports what finished); the exit status:
    2 when a command failed, else 0."""
    try:
        for name, runner in runners.items():
            if name in only:
                results[name], new_rows = runner(settings)
                rows.extend(new_rows)
    except RuntimeError as exc:  # CommandFailed, or a server that would not start
        log(f"error: {exc}")
        return 2
    return 0


def exit_status(results: Mapping[str, Any], status: int, check_targets: bool) -> int:
    """``status``, or 1 when ``--check-targets`` is given and a target was missed."""
    missed = [n for n, r in results.items() if isinstance(r, dict) and r.get("passed") is False]
    if status == 0 and missed and check_targets:
        log(f"targets missed: {', '.join(missed)}")
        return 1
    return status


def annex_version() -> str | None:
    return None if have_tools("git-annex") else run(["git", "annex", "version", "--raw"]).strip()
