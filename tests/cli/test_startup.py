"""Start-up: a command imports only what it needs (bench/startup.py measures the time).

The checks run the real entry point in a fresh interpreter and look at ``sys.modules``
afterwards: counting imports is exact where timing on a shared machine is not.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from safekeeper import cli
from safekeeper.config import write_default

#: Packages ``safekeeper --help`` must not import: the database, the web stack, the
#: worker, data validation, Rich (typer's boxed help pulls markdown-it and Pygments).
HEAVY = (
    "sqlalchemy",
    "alembic",
    "fastapi",
    "starlette",
    "uvicorn",
    "celery",
    "pydantic",
    "rich",
    "markdown_it",
    "pygments",
    "obstore",
    "jinja2",
    "argon2",
    "zstandard",
)

_PROBE = """
import json, sys
sys.argv = ["safekeeper", *json.loads(sys.argv[1])]
from safekeeper.cli import main
try:
    main()
except SystemExit as exit:
    code = 0 if exit.code is None else exit.code
else:
    code = 0
sys.stdout.flush()
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + " EXIT " + repr(code) + "\\n")
"""


def imported_by(args: list[str], cwd: Path) -> tuple[set[str], str, int]:
    """Run ``safekeeper ARGS`` in a fresh interpreter: (modules imported, stdout, exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER_")}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    marker = proc.stderr.rindex("MODULES ")
    modules, _, code = proc.stderr[marker + len("MODULES ") :].strip().rpartition(" EXIT ")
    return set(json.loads(modules)), proc.stdout, int(code)


def heavy(modules: set[str], packages: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in packages)


@pytest.mark.parametrize("args", [["--help"], []], ids=["--help", "no-arguments"])
def test_help_imports_no_heavy_package(tmp_path: Path, args: list[str]) -> None:
    modules, out, code = imported_by(args, tmp_path)
    assert heavy(modules) == []
    assert "Commands:" in out and "replicate" in out, out
    assert code == (0 if args else 2)
    # Nor any command's module: the root's help shows summaries, not the commands.
    own = sorted(m for m in modules if m.startswith("safekeeper."))
    assert own == ["safekeeper.cli", "safekeeper.errors"]


def test_ls_imports_no_web_stack_nor_migrations(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_default(data_dir)
    first, _, code = imported_by(["--data-dir", str(data_dir), "ls"], tmp_path)  # migrates
    assert code == 0
    modules, _, code = imported_by(["--data-dir", str(data_dir), "ls"], tmp_path)
    assert code == 0
    assert "alembic" in {m.split(".")[0] for m in first}  # the first run did migrate
    web = ("alembic", "fastapi", "starlette", "uvicorn", "celery", "jinja2", "argon2")
    assert heavy(modules, web) == []
    assert heavy(modules, ("markdown_it", "pygments", "zstandard")) == []
    assert "safekeeper.cli.deletion" not in modules and "safekeeper.api" not in modules
    # Nor SQLAlchemy's PostgreSQL dialect on SQLite (safekeeper.db.models'
    # add_postgresql_predicates, safekeeper.db.engine.dialect_insert).
    assert sorted(m for m in modules if m.startswith("sqlalchemy.dialects.postgresql")) == []


def test_a_command_reads_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """Opening the archive takes no write lock when the catalog already matches the
    configuration: ``ls`` answers while another process writes (a long ``put``), instead
    of waiting for its lock."""
    data_dir = tmp_path / "data"
    write_default(data_dir)
    _, _, code = imported_by(["--data-dir", str(data_dir), "ls"], tmp_path)  # migrates, syncs
    assert code == 0
    writer = sqlite3.connect(data_dir / "safekeeper.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the one write lock, held until the end
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "ls", "--json"],
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER_")},
            capture_output=True,
            text=True,
            timeout=30,  # a write transaction would wait up to SQLITE_BUSY_SECONDS (60)
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`ls` waited for another process's write lock")
    finally:
        writer.rollback()
        writer.close()
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def _first_paragraph(command: typer.main.TyperCommand | typer.core.TyperGroup) -> str:
    return inspect.cleandoc(command.help or "").split("\n\n")[0]


def test_summaries_match_the_commands() -> None:
    """``--help`` shows ``cli.COMMANDS``' summaries without importing the commands;
    they must say what each command's own help says (update COMMANDS when a command's
    docstring or ``help=`` changes)."""
    group = typer.main.get_command(cli.app)
    assert isinstance(group, cli._Group)
    ctx = typer.Context(group)
    stale = {}
    for name, entry in cli.COMMANDS.items():
        command = cli.load_command(name, group)
        assert command.name == name
        if _first_paragraph(command) != entry.summary:
            stale[name] = _first_paragraph(command)
        assert group.get_command(ctx, name) is not None
    assert stale == {}, f"update safekeeper/cli/__init__.py COMMANDS summaries: {stale}"
    module_names = {entry.module for entry in cli.COMMANDS.values()}
    assert all(importlib.import_module(m) for m in module_names)


def test_every_command_is_reachable_and_listed_once() -> None:
    """Each registered command answers ``--help`` through the lazy root (loaded on use,
    with the root's settings), and the root's help lists each exactly once."""
    runner = CliRunner()
    listing = runner.invoke(cli.app, ["--help"]).stdout
    for name in cli.COMMANDS:
        result = runner.invoke(cli.app, [name, "--help"])
        assert result.exit_code == 0, (name, result.stdout, result.stderr)
        assert f"safekeeper {name}" in result.stdout
        assert sum(line.split()[:1] == [name] for line in listing.splitlines()) == 1, name


def test_unknown_command_suggests_among_all_commands() -> None:
    result = CliRunner().invoke(cli.app, ["lss"])
    assert result.exit_code == 2
    assert "No such command 'lss'" in result.stderr and "'ls'" in result.stderr
