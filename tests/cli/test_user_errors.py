"""Every error a user can cause: one ``error:`` line, exit 1 (usage 2), nothing left behind.

In process (CliRunner) where the runner's captured stdout is enough; real processes for
stdout on a full disk and for a busy port. A traceback anywhere fails the test: the
in-process helper re-raises any exception that is not an exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safekeeper.cli import app
from safekeeper.ids import MAX_KEY_LENGTH

runner = CliRunner()
DATA = b"hello, safekeeper"
SHA = hashlib.sha256(DATA).hexdigest()


def cli(data_dir: Path, *args: str, input: bytes | None = None) -> tuple[int, bytes, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout_bytes, result.stderr


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    source = tmp_path / "hello.txt"
    source.write_bytes(DATA)
    code, _, err = cli(data_dir, "put", str(source), "--ref", "docs:hello")
    assert code == 0, err
    return data_dir


@pytest.fixture
def full(tmp_path: Path) -> Path:
    """A private twin of /dev/full (a character device whose writes fail with ENOSPC),
    so a regression that renames over the target clobbers this one, not the machine's."""
    device = tmp_path / "devices" / "full"
    device.parent.mkdir()
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        return Path("/dev/full")  # not root: nobody may rename over /dev/full anyway
    return device


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _inbox_object(data_dir: Path) -> Path:
    (found,) = [p for p in (data_dir / "inbox").rglob("*") if p.is_file() and SHA in str(p)]
    return found


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing/out.txt", "no such directory"),
        ("existing-dir", "is a directory"),
        ("/proc/safekeeper-test-out", "cannot write"),  # a directory nobody may write to
        ("FULL", "No space left on device"),
    ],
)
def test_get_output_errors(
    data_dir: Path, tmp_path: Path, full: Path, target: str, message: str
) -> None:
    (tmp_path / "existing-dir").mkdir()
    path = str(full) if target == "FULL" else target
    path = path if path.startswith("/") else str(tmp_path / path)
    code, out, err = cli(data_dir, "get", "docs:hello", "-o", path)
    assert code == 1 and message in one_error_line(err)
    assert out == b""
    assert not (tmp_path / "missing").exists()
    assert list((tmp_path / "existing-dir").iterdir()) == []
    assert _leftovers(tmp_path) == [] and _leftovers(full.parent) == []
    # as root a rename over the device would replace it with a file
    assert stat.S_ISCHR(os.stat(full).st_mode)


@pytest.mark.parametrize("target", ["FULL", "DIR"])
def test_export_onto_a_device_or_directory(
    data_dir: Path, tmp_path: Path, full: Path, target: str
) -> None:
    (tmp_path / "dir").mkdir()
    path = full if target == "FULL" else tmp_path / "dir"
    code, _, err = cli(data_dir, "export", "docs", "-o", str(path))
    message = "No space left on device" if target == "FULL" else "is a directory"
    assert code == 1 and message in one_error_line(err)
    assert stat.S_ISCHR(os.stat(full).st_mode)
    assert list((tmp_path / "dir").iterdir()) == [] and _leftovers(full.parent) == []


def test_get_to_a_device_writes_in_place(data_dir: Path, tmp_path: Path) -> None:
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a twin of /dev/null
    except PermissionError:
        pytest.skip("needs root to make a device node")
    code, _, err = cli(data_dir, "get", "docs:hello", "-o", str(null))
    assert code == 0, err
    assert stat.S_ISCHR(os.stat(null).st_mode)


def _corrupt(data_dir: Path) -> None:
    obj = _inbox_object(data_dir)
    obj.chmod(0o644)
    obj.write_bytes(b"X" * len(DATA))  # same size, other bytes


def test_get_to_stdout_writes_nothing_when_the_copy_is_corrupt(data_dir: Path) -> None:
    _corrupt(data_dir)
    code, out, err = cli(data_dir, "get", "docs:hello")
    assert code == 1 and "read back as" in one_error_line(err)
    assert out == b""  # checked before the first byte was written


def test_get_to_file_leaves_nothing_when_the_copy_is_corrupt(
    data_dir: Path, tmp_path: Path
) -> None:
    _corrupt(data_dir)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = cli(data_dir, "get", "docs:hello", "-o", str(out_dir / "hello.txt"))
    assert code == 1 and "read back as" in one_error_line(err)
    assert list(out_dir.iterdir()) == []


def test_config_not_utf8(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "safekeeper.toml").write_bytes(b"[policy]\ngrace_period = '\xff\xfe'\n")
    code, _, err = cli(data_dir, "ls")
    assert code == 1 and "not UTF-8" in one_error_line(err)
    assert sorted(p.name for p in data_dir.iterdir()) == ["safekeeper.toml"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["put", "/proc/self/mem"], 1, "/proc/self/mem"),  # opens, then fails to read
        (["put", "FIFO"], 1, "not a regular file"),
        (["put", "MISSING"], 1, "no such file or directory"),
        (["put", "-"], 2, "put - needs --ref"),
        (["put", "-", "--ref", "a:b", "--no-ref"], 2, "not both"),
        (["put", "FILE", "--ref", "ns:" + "k/" * 600 + "k"], 2, f"the limit is {MAX_KEY_LENGTH}"),
        (["put", "FILE", "--ref", "ns:" + "k" * 201], 2, "the limit is 200 between slashes"),
        (["ls", "true"], 1, "no namespace 'true' (flags take no value"),
        (["ls", "--json", "true"], 1, "no namespace 'true'"),
        (["ref", "ls", "nosuch"], 1, "no namespace 'nosuch'"),
        (["put", "FILE", "--ref", "ns:docs/"], 2, "bad reference key 'docs/'"),
        (["put", "FILE", "--bogus"], 2, "No such option: --bogus (see 'safekeeper put --help')"),
        (["put"], 2, "Missing argument 'paths'"),
        (["ls", "--limit", "abc"], 2, "Invalid value for '--limit'"),
        (["nosuch"], 2, "No such command 'nosuch'"),
        (["--bogus", "ls"], 2, "No such option: --bogus (see 'safekeeper --help')"),
    ],
)
def test_put_and_ls_errors(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    data_dir = tmp_path / "data"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "file").write_bytes(b"x")
    swap = {"FIFO": str(fifo), "MISSING": str(tmp_path / "missing"), "FILE": str(tmp_path / "file")}
    exit_code, out, err = cli(data_dir, *[swap.get(a, a) for a in args], input=b"")
    assert exit_code == code, err
    assert message in one_error_line(err)  # usage errors too: no box, no usage block
    assert out == b""
    if (data_dir / "safekeeper.db").exists():
        _, listing, _ = cli(data_dir, "ls", "--json")
        assert json.loads(listing) == []
        inbox = data_dir / "inbox"
        stored = [p for p in inbox.rglob("*") if p.is_file() and p.name != ".safekeeper-store"]
        assert stored == []  # the store's identity marker is not data


def test_put_empty_directory_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = cli(tmp_path / "data", "put", str(tmp_path / "empty"))
    assert code == 0 and out == b""
    assert "nothing to put: no regular files in" in err


def test_awkward_file_names_get_keys_every_command_can_address(tmp_path: Path) -> None:
    tree = tmp_path / "names"
    tree.mkdir()
    names = {
        b"new\nline": "new%0Aline",
        b"co:lon": "co%3Alon",
        b"bad\xff.bin": "bad%FF.bin",
        "Résumé (1).pdf".encode(): "R%C3%A9sum%C3%A9 %281%29.pdf",
        b"50%": "50%25",
    }
    for i, raw in enumerate(names):
        (tmp_path / os.fsdecode(b"names/" + raw)).write_bytes(f"content {i}".encode())
    data_dir = tmp_path / "data"
    os.chdir(tmp_path)
    code, out, err = cli(data_dir, "put", "names")
    assert code == 0, err
    assert "\\n" in out.decode() and "\\xff" in out.decode()  # printed on one line each
    for i, key in enumerate(names.values()):
        code, got, err = cli(data_dir, "get", f"files:names/{key}")
        assert code == 0 and got == f"content {i}".encode(), err


@pytest.mark.slow
def test_stdout_on_a_full_disk(data_dir: Path) -> None:
    for args in (["get", "docs:hello"], ["ls"]):
        with open("/dev/full", "wb") as full:
            result = subprocess.run(
                [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), *args],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
            )
        assert result.returncode == 1
        line = one_error_line(result.stderr)
        assert "cannot write to stdout: No space left on device" in line


@pytest.mark.slow
def test_serve_on_a_busy_port(data_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "serve",
             "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 1
    assert "port is in use" in one_error_line(result.stderr)
    assert "serving" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [["ls"], ["put"], ["serve"], ["replicate"], ["init"]])
def test_help_shows_flags_as_flags(tmp_path: Path, command: list[str]) -> None:
    code, out, _ = cli(tmp_path, *command, "--help")
    assert code == 0 and b"--help" in out
    assert b"<bool>" not in out  # a flag takes no value


def test_init_help_says_what_it_writes(tmp_path: Path) -> None:
    code, out, _ = cli(tmp_path, "init", "--help")
    text = " ".join(out.decode().replace("│", " ").split())
    assert code == 0
    for words in ("safekeeper.toml", "safekeeper.db", "inbox", "archive", "scratch", "never"):
        assert words in text
