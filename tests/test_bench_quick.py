"""Benchmarks that never rot: every ``bench/*.py --quick`` runs to the end and prints its
ratios (bench/deletion.py had been failing at import for weeks before anyone noticed).

Each script runs as a subprocess exactly as a person would run it, against this
checkout's ``safekeeper`` entry point, in a work directory under ``tmp_path``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
#: Modules the scripts import, not scripts themselves (distributed.py is replicate.py's
#: ``dist`` row).
LIBRARIES = ("common.py", "distributed.py")
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in LIBRARIES)
#: packages.py also runs bundles.py by default; that one runs on its own here.
EXTRA_ARGS = {"packages.py": ["--only", "serving"]}
#: The baselines' tools: with all of them present (as scripts/test installs them), no
#: row may be skipped.
TOOLS = ("git-annex", "rclone", "wrk", "nginx", "weed", "tar", "redis-server")


def summary_rows(stdout: str) -> list[dict[str, str]]:
    """The rows of the summary table every script prints last (common.report)."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, f"no summary table in:\n{stdout}"
    headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(headers, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def all_tools_present() -> bool:
    postgres = bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or shutil.which("initdb")
    return bool(postgres) and all(shutil.which(tool) for tool in TOOLS)


def test_every_script_is_covered() -> None:
    assert "deletion.py" in SCRIPTS and "startup.py" in SCRIPTS
    for script in SCRIPTS:
        text = (BENCH / script).read_text(encoding="utf-8")
        assert '"--quick"' in text, f"bench/{script} has no --quick mode"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run_prints_ratios(script: str, tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)  # this checkout's `safekeeper` first
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER_")}
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    json_out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / script),
            "--quick",
            "--workdir",
            str(tmp_path),
            "--json-out",
            str(json_out),
            *EXTRA_ARGS.get(script, []),
        ],
        cwd=BENCH,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    context = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, context
    rows = summary_rows(proc.stdout)
    measured = [row for row in rows if row["ratio"]]
    assert measured, f"no ratio printed\n{context}"
    skipped = [row for row in rows if row["measure"].startswith("skipped")]
    if all_tools_present():
        assert skipped == [], f"rows skipped although every tool is installed\n{context}"
    result = json.loads(json_out.read_text(encoding="utf-8"))
    assert result["complete"] is True and result["settings"]["quick"] is True
    assert not list(tmp_path.glob("safekeeper-bench-*")), "the work directory was left behind"
