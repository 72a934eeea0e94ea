"""``safekeeper put docs`` keeps what it stores (issue 11, class 10): each file is
referenced as ``files:<path as given>``, so gc past the grace period leaves it; only an
explicit ``--no-ref`` put becomes garbage. ``ls`` and ``stat`` say which is which."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safekeeper.archive import Archive
from safekeeper.cli import app
from safekeeper.config import load_config
from safekeeper.services.copies import inventory
from safekeeper.services.deletion import gc

runner = CliRunner()


def cli(data_dir: Path, *args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _inbox_files(data_dir: Path) -> set[str]:
    root = data_dir / "inbox"
    return {p.name for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts}


def test_put_docs_survives_gc_past_the_grace_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    contents = {"docs/a.txt": b"alpha", "docs/sub/b.txt": b"beta"}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    data_dir = tmp_path / "data"
    code, out, err = cli(data_dir, "put", "docs")
    assert code == 0, err
    assert "→ files:docs/a.txt:default" in out
    code, out, err = cli(data_dir, "put", "-", "--no-ref", input=b"scratch")
    assert code == 0 and "garbage after the grace period (7 d)" in err
    scratch = hashlib.sha256(b"scratch").hexdigest()

    code, out, _ = cli(data_dir, "ls", "--json")
    kept = {b["sha256"]: b for b in json.loads(out)}
    for data in contents.values():
        entry = kept[hashlib.sha256(data).hexdigest()]
        assert (entry["references"], entry["kept"]) == (1, "referenced by 1")
        assert entry["garbage_after"] is None
    assert kept[scratch]["kept"].startswith("garbage after ")
    code, out, _ = cli(data_dir, "stat", "files:docs/sub/b.txt")
    assert code == 0 and "kept: referenced by 1" in out

    later = datetime.now(UTC) + timedelta(days=8)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    with Archive(load_config(data_dir=data_dir, environ=environ), clock=lambda: later) as archive:
        assert "deleted by the next gc" in inventory.stat_blob(archive, scratch).keeping.kept
        report = gc.run_gc(archive)
        assert report.deleted == 1  # the --no-ref blob: the grace period has passed
    on_disk = _inbox_files(data_dir)
    assert {hashlib.sha256(d).hexdigest() for d in contents.values()} <= on_disk
    assert scratch not in on_disk
    for name, data in contents.items():
        code, out, _ = cli(data_dir, "get", f"files:{name}")
        assert code == 0 and out == data.decode()


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("docs", "docs/a.txt"),
        ("./docs/", "docs/a.txt"),
        ("docs/a.txt", "docs/a.txt"),
        (".", "docs/a.txt"),
    ],
)
def test_the_default_reference_is_the_path_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, key: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_bytes(b"alpha")
    data_dir = tmp_path.parent / f"{tmp_path.name}-data"
    code, _, err = cli(data_dir, "put", given)
    assert code == 0, err
    code, out, _ = cli(data_dir, "ls", "files", "--json")
    assert [r["key"] for r in json.loads(out)] == [key]
