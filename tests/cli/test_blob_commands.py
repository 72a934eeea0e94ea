"""The CLI end to end, in process: output, --json, exit codes (0 ok, 1 error, 2 usage)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safekeeper.cli import app

runner = CliRunner()


def cli(data_dir: Path, *args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "nested").mkdir(parents=True)
    (root / "one.txt").write_bytes(b"one")
    (root / "nested" / "two.txt").write_bytes(b"two")
    return root


def test_init_then_put_then_stat(tmp_path: Path, tree: Path) -> None:
    data_dir = tmp_path / "data"
    code, out, _ = cli(data_dir, "init", str(data_dir))
    assert code == 0 and "safekeeper.toml" in out
    code, out, _ = cli(data_dir, "put", str(tree), "--json")
    assert code == 0
    outcomes = json.loads(out)
    assert sorted(o["sha256"] for o in outcomes) == sorted(
        hashlib.sha256(d).hexdigest() for d in (b"one", b"two")
    )
    code, out, _ = cli(data_dir, "stat", outcomes[0]["sha256"], "--json")
    assert code == 0
    status = json.loads(out)
    assert [(c["location"], c["state"]) for c in status["copies"]] == [("inbox", "present")]
    code, out, _ = cli(data_dir, "stat", outcomes[0]["sha256"][:10])
    assert code == 0 and "inbox" in out and "present" in out


def test_put_with_ref_then_get_by_ref(tmp_path: Path, tree: Path) -> None:
    data_dir = tmp_path / "data"
    code, _, _ = cli(data_dir, "put", str(tree / "one.txt"), "--ref", "docs:readme:v1")
    assert code == 0
    code, out, _ = cli(data_dir, "get", "docs:readme:v1")
    assert code == 0 and out == "one"
    target = tmp_path / "out.txt"
    code, _, _ = cli(data_dir, "get", "docs:readme:v1", "-o", str(target))
    assert code == 0 and target.read_bytes() == b"one"
    code, out, _ = cli(data_dir, "ls", "docs", "--json")
    assert [r["key"] for r in json.loads(out)] == ["readme"]
    # a directory put under a ref makes one reference per file
    code, _, _ = cli(data_dir, "put", str(tree), "--ref", "site:pages")
    code, out, _ = cli(data_dir, "ls", "--refs", "--json")
    keys = sorted(f"{r['namespace']}:{r['key']}" for r in json.loads(out))
    assert keys == ["docs:readme", "site:pages/nested/two.txt", "site:pages/one.txt"]


def test_put_from_stdin(tmp_path: Path) -> None:
    code, out, _ = cli(tmp_path / "d", "put", "-", "--ref", "logs:today", "--json", input=b"a")
    assert code == 0
    assert json.loads(out)[0]["sha256"] == hashlib.sha256(b"a").hexdigest()
    code, out, _ = cli(tmp_path / "d", "put", "-", "--no-ref", "--json", input=b"from a pipe")
    assert code == 0
    assert json.loads(out)[0]["sha256"] == hashlib.sha256(b"from a pipe").hexdigest()


def test_ls_and_locations(tmp_path: Path, tree: Path) -> None:
    data_dir = tmp_path / "data"
    cli(data_dir, "put", str(tree))
    code, out, _ = cli(data_dir, "ls", "--json")
    assert code == 0 and len(json.loads(out)) == 2
    code, out, _ = cli(data_dir, "locations", "--json")
    report = {r["name"]: r for r in json.loads(out)}
    assert report["inbox"]["objects"] == 2 and report["inbox"]["bytes"] == 6
    assert report["archive"]["objects"] == 0 and report["archive"]["kind"] == "archive"
    code, out, _ = cli(data_dir, "locations")
    assert code == 0 and "inbox" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["put", "MISSING"], 1, "no such file or directory"),
        (["put", "TREE", "--ref", "no-colon"], 2, "bad reference"),
        (["put", "TREE", "--ref", "ns:../x"], 2, "bad reference key"),
        (["put", "TREE", "--location", "attic"], 1, "no location named 'attic'"),
        (["get", "0" * 64], 1, "no blob"),
        (["get", "nonsense"], 1, "neither a blob id"),
        (["stat", "ns:nothing"], 1, "no reference ns:nothing:default"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_errors_exit_codes_and_nothing_recorded(
    tmp_path: Path, tree: Path, args: list[str], code: int, message: str
) -> None:
    data_dir = tmp_path / "data"
    args = [str(tree) if a == "TREE" else str(tmp_path / a) if a == "MISSING" else a for a in args]
    exit_code, _, err = cli(data_dir, *args)
    assert exit_code == code
    assert message in err
    _, out, _ = cli(data_dir, "ls", "--json")
    assert json.loads(out) == []


def test_unreadable_file(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root can read anything, so simulate the permission check failing.
    import safekeeper.services.copies.tree as tree_walk

    monkeypatch.setattr(tree_walk.os, "access", lambda path, mode: Path(path).name != "two.txt")
    code, _, err = cli(tmp_path / "data", "put", str(tree))
    assert code == 1 and "two.txt: permission denied" in err
    _, out, _ = cli(tmp_path / "data", "ls", "--json")
    assert json.loads(out) == []


def test_bad_config_names_file_and_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "safekeeper.toml").write_text(
        '[locations.inbox]\nkind = "source"\nstore = "file:inbox"\nretention = "forever"\n'
    )
    code, _, err = cli(data_dir, "ls")
    assert code == 1
    assert str(data_dir / "safekeeper.toml") in err
    assert "locations.inbox.retention" in err and "bad duration" in err
    assert not (data_dir / "safekeeper.db").exists()
