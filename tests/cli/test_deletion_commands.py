"""The deletion and replication commands end to end, in process: plan, gc, audit,
hold/release/holds, jobs, replicate, verify, tasks — output, --json, exit codes
(0 ok, 1 error, 2 usage), and what they did to the archive."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from safekeeper.cli import app
from safekeeper.cli.context import person

runner = CliRunner()

SCRATCH_CONFIG = """
[locations.inbox]
kind = "source"
store = "file:inbox"

[locations.archive]
kind = "archive"
store = "file:archive"

[locations.scratch]
kind = "processing"
store = "file:scratch"
"""

#: One attempt per transfer: a transfer that cannot read its source fails at once.
NO_RETRIES_CONFIG = """
[policy]
max_retries = 1

[locations.inbox]
kind = "source"
store = "file:inbox"

[locations.archive]
kind = "archive"
store = "file:archive"
"""


def cli(data_dir: Path, *args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), *args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def cli_json(data_dir: Path, *args: str) -> Any:
    code, out, err = cli(data_dir, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def put(data_dir: Path, data: bytes, ref: str | None = None) -> str:
    args = ["put", "-", *(["--ref", ref] if ref else ["--no-ref"])]
    code, out, err = cli(data_dir, *args, "--json", input=data)
    assert code == 0, err
    sha256: str = json.loads(out)[0]["sha256"]
    assert sha256 == hashlib.sha256(data).hexdigest()
    return sha256


def copies(data_dir: Path, blob: str) -> dict[str, str]:
    """location → state of the blob's live copies, as ``stat --json`` reports them."""
    status = cli_json(data_dir, "stat", blob)
    return {c["location"]: c["state"] for c in status["copies"]}


def by_location(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {loc["location"]: loc for loc in plan["locations"]}


def table_rows(out: str) -> list[list[str]]:
    """The cells of each row of a Rich table (its first line, when a cell wraps)."""
    rows = []
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 1 and cells[0]:
            rows.append(cells)
    return rows


def object_path(data_dir: Path, location: str, blob: str) -> Path:
    return next((data_dir / location).rglob(blob))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory with the built-in default configuration (inbox, archive)."""
    return tmp_path / "data"


@pytest.fixture
def two_blobs(data_dir: Path) -> tuple[str, str]:
    return put(data_dir, b"first" * 100, "proj:first"), put(data_dir, b"second" * 50, "proj:second")


# -- plan -------------------------------------------------------------------------


def test_plan_keeps_unarchived_copies_and_says_why(
    data_dir: Path, two_blobs: tuple[str, str]
) -> None:
    plan = cli_json(data_dir, "plan")
    assert sorted(plan) == ["at", "locations"]
    locations = by_location(plan)
    assert sorted(locations) == ["archive", "inbox", "scratch"]
    inbox = locations["inbox"]
    assert (inbox["kind"], inbox["used_bytes"], inbox["deletions"]) == ("source", 800, [])
    assert inbox["kept"] == {"archived-elsewhere": [2, 800]}
    assert locations["archive"]["kept"] == {} and locations["archive"]["deletions"] == []

    code, out, _ = cli(data_dir, "plan")
    assert code == 0
    assert "inbox (source, 800 B used): delete 0 copies, free 0 B" in out
    assert "archive (archive, 0 B used): delete 0 copies" in out
    keep_line = next(line for line in out.splitlines() if "archived-elsewhere" in line)
    assert keep_line.split()[:2] == ["keep", "2"] and "800 B" in keep_line


def test_plan_after_replicate_lists_deletions(data_dir: Path, two_blobs: tuple[str, str]) -> None:
    first, second = two_blobs
    assert cli_json(data_dir, "replicate")["scheduled"] == 2
    locations = by_location(cli_json(data_dir, "plan"))
    deletions = locations["inbox"]["deletions"]
    assert sorted(d["blob"] for d in deletions) == sorted(two_blobs)
    assert {(d["location"], d["rule"], d["reason"]) for d in deletions} == {
        ("inbox", "archived-elsewhere", "enough verified copies elsewhere")
    }
    assert {d["blob"]: d["size"] for d in deletions} == {first: 500, second: 300}
    assert locations["inbox"]["kept"] == {}
    assert locations["archive"]["kept"] == {"archive": [2, 800]}

    code, out, _ = cli(data_dir, "plan")
    assert code == 0
    assert "inbox (source, 800 B used): delete 2 copies, free 800 B" in out
    assert "archived-elsewhere: enough verified copies elsewhere" in out

    only_inbox = cli_json(data_dir, "plan", "--location", "inbox")
    assert [loc["location"] for loc in only_inbox["locations"]] == ["inbox"]
    assert len(only_inbox["locations"][0]["deletions"]) == 2
    only_archive = cli_json(data_dir, "plan", "--location", "archive")
    assert [(loc["location"], loc["deletions"]) for loc in only_archive["locations"]] == [
        ("archive", [])
    ]

    code, _, err = cli(data_dir, "plan", "--location", "attic")
    assert code == 1 and "no location named 'attic'" in err


def test_plan_explain_gives_a_verdict_per_copy(data_dir: Path, two_blobs: tuple[str, str]) -> None:
    first, _ = two_blobs
    [inbox] = cli_json(data_dir, "plan", "--explain", first)
    assert (inbox["location"], inbox["state"]) == ("inbox", "present")
    assert inbox["decision"] == {
        "allowed": False,
        "rule": "archived-elsewhere",
        "reason": "no archive copy yet (run `safekeeper replicate`)",
    }

    cli_json(data_dir, "replicate")
    explained = {e["location"]: e for e in cli_json(data_dir, "plan", "--explain", first[:10])}
    assert explained["inbox"]["decision"] == {
        "allowed": True,
        "rule": "archived-elsewhere",
        "reason": "verified archive copies: 1 (at least 1 needed)",
    }
    assert explained["archive"]["decision"] == {
        "allowed": False,
        "rule": "archive",
        "reason": "archive copies are deleted only as garbage",
    }

    code, out, _ = cli(data_dir, "plan", "--explain", "proj:first")
    assert code == 0
    rows = [row[:4] for row in table_rows(out)]
    assert rows == [
        ["archive", "present", "keep", "archive"],
        ["inbox", "present", "delete", "archived-elsewhere"],
    ]

    code, _, err = cli(data_dir, "plan", "--explain", "nonsense")
    assert code == 1 and "neither a blob id" in err
    code, _, err = cli(data_dir, "plan", "--explain", "ffffff")
    assert code == 1 and "no blob starts with ffffff" in err


def test_plan_explain_unknown_full_blob_id_is_an_error(data_dir: Path) -> None:
    code, _, err = cli(data_dir, "plan", "--explain", "0" * 64)
    assert code == 1 and f"no blob {'0' * 64}" in err


# -- gc and audit -----------------------------------------------------------------


def test_gc_deletes_what_the_plan_said(data_dir: Path, two_blobs: tuple[str, str]) -> None:
    first, second = two_blobs
    report = cli_json(data_dir, "gc")  # nothing archived yet: nothing goes
    assert (report["planned"], report["deleted"]) == (0, 0)
    assert copies(data_dir, first) == {"inbox": "present"}

    cli_json(data_dir, "replicate")
    planned = {
        (d["blob"], d["location"])
        for d in by_location(cli_json(data_dir, "plan"))["inbox"]["deletions"]
    }
    report = cli_json(data_dir, "gc")
    assert report == {
        "planned": 2,
        "deleted": 2,
        "bytes_freed": 800,
        "kept_on_recheck": [],
        "failed": [],
        "recovered": 0,
        "claims_lost": 0,
        "trees_dropped": 0,
        "refused": {},
    }
    assert planned == {(first, "inbox"), (second, "inbox")}
    for blob in two_blobs:
        assert copies(data_dir, blob) == {"archive": "present"}
        assert not list((data_dir / "inbox").rglob(blob))
    assert cli_json(data_dir, "plan", "--location", "inbox")["locations"][0]["deletions"] == []
    code, out, _ = cli(data_dir, "get", "proj:first")  # still readable, from the archive
    assert code == 0 and out == "first" * 100

    code, out, _ = cli(data_dir, "gc")
    assert code == 0
    assert "planned 0, deleted 0 (0 B), kept on re-check 0, failed 0" in out


def test_audit_filters(data_dir: Path, two_blobs: tuple[str, str]) -> None:
    first, second = two_blobs
    assert cli_json(data_dir, "audit") == []
    cli_json(data_dir, "replicate")
    cli(data_dir, "gc", "--actor", "tester")

    entries = cli_json(data_dir, "audit")
    assert sorted(e["blob"] for e in entries) == sorted(two_blobs)
    assert {(e["action"], e["location"], e["rule"], e["actor"]) for e in entries} == {
        ("delete", "inbox", "archived-elsewhere", "tester")
    }
    evidence = entries[0]["evidence"]
    assert evidence["other_copies"][0]["location"] == "archive"
    assert evidence["other_copies"][0]["confirmed_in_store"] is True

    only_first = cli_json(data_dir, "audit", "--blob", first[:8])
    assert [(e["blob"], e["location"]) for e in only_first] == [(first, "inbox")]
    assert [e["blob"] for e in cli_json(data_dir, "audit", "--blob", "proj:second")] == [second]
    assert len(cli_json(data_dir, "audit", "--since", "1h")) == 2
    assert len(cli_json(data_dir, "audit", "--since", "2026-01-01T00:00")) == 2
    assert cli_json(data_dir, "audit", "--since", "2999-01-01T00:00") == []
    assert cli_json(data_dir, "audit", "--location", "archive") == []
    assert cli_json(data_dir, "audit", "--rule", "garbage") == []
    assert len(cli_json(data_dir, "audit", "--limit", "1")) == 1

    code, out, _ = cli(data_dir, "audit")
    assert code == 0
    deletions = [row for row in table_rows(out) if row[1] == "delete"]
    assert [(row[3], row[6]) for row in deletions] == [("inbox", "tester")] * 2


@pytest.mark.parametrize(
    "since", ["yesterday", "2026-13-01", "-1h", "99999999999d", "1000000000d", "800000d"]
)
def test_audit_bad_since_is_an_error(data_dir: Path, since: str) -> None:
    code, out, err = cli(data_dir, "audit", f"--since={since}")
    assert code == 1
    assert out == ""
    assert f"--since {since!r}: give an ISO time or an age such as 7d" in err
    assert err.startswith("error: ") and err.strip().count("\n") == 0


# -- holds ------------------------------------------------------------------------


def test_hold_keeps_copies_until_released(data_dir: Path, two_blobs: tuple[str, str]) -> None:
    first, second = two_blobs
    cli_json(data_dir, "replicate")
    code, out, _ = cli(data_dir, "hold", first[:12], "--reason", "litigation", "--actor", "legal")
    assert code == 0 and out.strip() == f"hold 1 on blob {first}"

    inbox = by_location(cli_json(data_dir, "plan"))["inbox"]
    assert [d["blob"] for d in inbox["deletions"]] == [second]
    assert inbox["kept"] == {"hold": [1, 500]}
    code, out, _ = cli(data_dir, "plan")
    assert "keep 1 ( 500 B) hold" in [" ".join(line.split()) for line in out.splitlines()]
    explained = cli_json(data_dir, "plan", "--explain", first)
    assert {(e["location"], e["decision"]["rule"]) for e in explained} == {
        ("archive", "hold"),
        ("inbox", "hold"),
    }

    [view] = cli_json(data_dir, "holds")
    assert (view["id"], view["kind"], view["target"], view["reason"]) == (
        1,
        "blob",
        first,
        "litigation",
    )
    assert (view["created_by"], view["released_at"]) == ("legal", None)

    assert cli_json(data_dir, "gc")["deleted"] == 1  # the other blob's inbox copy
    assert copies(data_dir, first) == {"archive": "present", "inbox": "present"}
    assert copies(data_dir, second) == {"archive": "present"}

    code, out, _ = cli(data_dir, "release", first)
    assert code == 0 and out.strip() == "released 1 hold"
    assert cli_json(data_dir, "holds") == []
    [released] = cli_json(data_dir, "holds", "--all")
    assert released["id"] == 1 and released["released_at"] is not None
    assert [d["blob"] for d in by_location(cli_json(data_dir, "plan"))["inbox"]["deletions"]] == [
        first
    ]
    code, _, err = cli(data_dir, "release", first)
    assert code == 1 and f"no active hold on {first}" in err


def test_namespace_hold(data_dir: Path, two_blobs: tuple[str, str]) -> None:
    cli_json(data_dir, "replicate")
    code, out, _ = cli(data_dir, "hold", "proj", "--reason", "audit season")
    assert code == 0 and out.strip() == "hold 1 on namespace proj"
    [view] = cli_json(data_dir, "holds")
    assert (view["kind"], view["target"], view["reason"]) == ("namespace", "proj", "audit season")
    # the person who placed it (user@host), not the gc's actor name
    assert view["created_by"] == person() and not view["created_by"].startswith("gc:")
    assert by_location(cli_json(data_dir, "plan"))["inbox"]["kept"] == {"hold": [2, 800]}
    assert cli_json(data_dir, "gc")["deleted"] == 0
    code, out, _ = cli(data_dir, "release", "proj")
    assert code == 0 and out.strip() == "released 1 hold"
    assert cli_json(data_dir, "gc")["deleted"] == 2


def test_hold_errors_record_nothing(data_dir: Path, two_blobs: tuple[str, str]) -> None:
    first, _ = two_blobs
    code, _, err = cli(data_dir, "hold", first)
    assert code == 2 and "Missing option '--reason'" in err
    code, _, err = cli(data_dir, "hold", "nowhere", "--reason", "because")
    assert code == 1 and "no namespace 'nowhere'" in err
    code, _, err = cli(data_dir, "hold", "0" * 64, "--reason", "because")
    assert code == 1 and "no blob" in err
    code, _, err = cli(data_dir, "hold", first, "--reason", "   ")
    assert code == 1 and "a hold needs a --reason" in err
    assert cli_json(data_dir, "holds", "--all") == []


# -- staging jobs -----------------------------------------------------------------


@pytest.fixture
def scratch_dir(tmp_path: Path) -> Path:
    """A data directory whose configuration has a processing location, ``scratch``."""
    directory = tmp_path / "scratch-data"
    directory.mkdir()
    (directory / "safekeeper.toml").write_text(SCRATCH_CONFIG)
    return directory


def test_jobs_start_ls_end(scratch_dir: Path) -> None:
    blob = put(scratch_dir, b"input data", "run:input")
    code, out, err = cli(scratch_dir, "jobs", "start", "reduce-42", "--location", "scratch", blob)
    assert code == 0, err
    assert "job reduce-42 started: 1 blob at scratch, 1 transfer" in out
    assert copies(scratch_dir, blob) == {"inbox": "present", "scratch": "present"}

    [job] = cli_json(scratch_dir, "jobs", "ls")
    assert (job["name"], job["location"], job["blobs"], job["ended_at"]) == (
        "reduce-42",
        "scratch",
        1,
        None,
    )
    scratch = {e["location"]: e for e in cli_json(scratch_dir, "plan", "--explain", blob)}
    assert scratch["scratch"]["decision"]["rule"] == "in-use"
    assert scratch["scratch"]["decision"]["reason"] == "needed by an active staging job"
    code, out, _ = cli(scratch_dir, "jobs", "ls")
    assert code == 0 and "reduce-42" in out and "scratch" in out

    # the same name cannot be active twice
    code, _, err = cli(scratch_dir, "jobs", "start", "reduce-42", "--location", "scratch", blob)
    assert code == 1 and "already active" in err

    code, out, _ = cli(scratch_dir, "jobs", "end", "reduce-42")
    assert code == 0 and out.strip() == "job reduce-42 ended"
    assert cli_json(scratch_dir, "jobs", "ls") == []
    [ended] = cli_json(scratch_dir, "jobs", "ls", "--all")
    assert ended["name"] == "reduce-42" and ended["ended_at"] is not None
    scratch = {e["location"]: e for e in cli_json(scratch_dir, "plan", "--explain", blob)}
    assert scratch["scratch"]["decision"]["rule"] != "in-use"

    code, _, err = cli(scratch_dir, "jobs", "end", "reduce-42")
    assert code == 1 and "no active staging job named 'reduce-42'" in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--location", "inbox", "BLOB"],
            1,
            "location 'inbox' is of kind source, not processing",
        ),
        (["--location", "archive", "BLOB"], 1, "is of kind archive, not processing"),
        (["--location", "attic", "BLOB"], 1, "no location named 'attic'"),
        (["--location", "scratch", "0" * 64], 1, "no blob"),
        (["--location", "scratch"], 2, "Missing argument"),
        (["BLOB"], 2, "Missing option '--location'"),
    ],
)
def test_jobs_start_errors_record_nothing(
    scratch_dir: Path, args: list[str], code: int, message: str
) -> None:
    blob = put(scratch_dir, b"input data")
    args = [blob if a == "BLOB" else a for a in args]
    exit_code, _, err = cli(scratch_dir, "jobs", "start", "bad-job", *args)
    assert exit_code == code
    assert message in err
    assert cli_json(scratch_dir, "jobs", "ls", "--all") == []
    assert cli_json(scratch_dir, "tasks") == []
    assert copies(scratch_dir, blob) == {"inbox": "present"}


# -- replicate, verify, tasks -----------------------------------------------------


def test_replicate_then_verify(data_dir: Path, two_blobs: tuple[str, str]) -> None:
    first, _ = two_blobs
    summary = cli_json(data_dir, "replicate")
    assert summary == {
        "wanted": 2,
        "scheduled": 2,
        "earlier": 0,
        "locations": ["archive"],
        "tasks": {"done": 2},
    }
    for blob in two_blobs:
        assert copies(data_dir, blob) == {"archive": "present", "inbox": "present"}
    assert cli_json(data_dir, "replicate") == {
        "wanted": 0,
        "scheduled": 0,
        "earlier": 0,
        "locations": ["archive"],
        "tasks": {},
    }

    report = cli_json(data_dir, "verify")
    assert (report["checked"], report["ok"], report["missing"], report["corrupt"]) == (4, 4, [], [])
    assert (report["repairs_scheduled"], report["unrepairable"], report["orphans"]) == (0, [], [])
    assert cli_json(data_dir, "verify", "--location", "archive")["checked"] == 2

    # The archive copy of one blob rots: verify finds it and repairs it from the inbox.
    path = object_path(data_dir, "archive", first)
    path.chmod(0o644)
    path.write_bytes(b"rotten")
    report = cli_json(data_dir, "verify")
    assert (report["checked"], report["ok"]) == (4, 3)
    assert report["corrupt"] == [f"{first} at archive"]
    assert report["repairs_scheduled"] == 1
    assert copies(data_dir, first) == {"archive": "present", "inbox": "present"}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first

    code, out, _ = cli(data_dir, "verify")
    assert code == 0 and "checked 4: 4 ok, 0 missing, 0 corrupt; 0 repairs scheduled" in out


def test_verify_exit_status_says_when_a_copy_cannot_be_repaired(
    data_dir: Path, two_blobs: tuple[str, str]
) -> None:
    first, second = two_blobs
    cli_json(data_dir, "replicate")
    # Repairable: the archive copy rots while the inbox copy is good. Exit 0.
    path = object_path(data_dir, "archive", first)
    path.chmod(0o644)
    path.write_bytes(b"rotten")
    code, out, _ = cli(data_dir, "verify", "--json")
    assert code == 0 and json.loads(out)["corrupt"] == [f"{first} at archive"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == first  # repaired
    # Unrepairable: both copies of the second blob are gone. Exit 1, every run, until
    # someone acts; --json names the copies.
    for location in ("inbox", "archive"):
        object_path(data_dir, location, second).unlink()
    for _ in range(2):
        code, out, _ = cli(data_dir, "verify", "--json")
        assert code == 1
        report = json.loads(out)
        assert sorted(report["unrepairable"]) == [f"{second} at archive", f"{second} at inbox"]
        assert report["errors"] == []
    code, out, _ = cli(data_dir, "verify")
    assert code == 1
    assert f"no good copy left to repair from: {second} at inbox" in out


def test_tasks_list_fail_and_retry(tmp_path: Path) -> None:
    data_dir = tmp_path / "retry-data"
    data_dir.mkdir()
    (data_dir / "safekeeper.toml").write_text(NO_RETRIES_CONFIG)
    good = put(data_dir, b"good bytes")
    lost = put(data_dir, b"bytes that vanish")
    lost_path = object_path(data_dir, "inbox", lost)
    lost_path.unlink()  # removed behind safekeeper's back

    code, out, _ = cli(data_dir, "replicate")
    assert code == 1
    assert "2 copies wanted, 2 transfers scheduled" in out
    assert "tasks: 1 done, 1 failed" in out
    assert "safekeeper tasks --failed" in out
    assert copies(data_dir, good) == {"archive": "present", "inbox": "present"}
    assert copies(data_dir, lost) == {"archive": "failed", "inbox": "present"}

    listed = cli_json(data_dir, "tasks")
    assert [(t["kind"], t["blob"], t["location"]) for t in listed] == [
        ("transfer", lost, "archive"),
        ("transfer", good, "archive"),
    ]  # newest first
    assert [t["state"] for t in listed] == ["failed", "done"]
    [failed] = cli_json(data_dir, "tasks", "--failed")
    assert failed["id"] == listed[0]["id"] and failed["attempts"] == 1
    assert "inbox: object missing" in failed["last_error"]
    code, out, _ = cli(data_dir, "tasks", "--failed")
    assert code == 0 and "retry with: safekeeper tasks retry --all" in out

    code, _, err = cli(data_dir, "tasks", "retry")
    assert code == 2 and "give task ids or --all" in err
    assert [t["state"] for t in cli_json(data_dir, "tasks")] == ["failed", "done"]

    # Bring the bytes back (verify marks the inbox copy missing, a put rewrites it),
    # then retry the failed transfer.
    code, out, _ = cli(data_dir, "verify", "--location", "inbox", "--json")
    assert code == 1  # a copy it cannot repair
    report = json.loads(out)
    assert report["missing"] == [f"{lost} at inbox"]
    assert report["unrepairable"] == [f"{lost} at inbox"]
    code, _, err = cli(data_dir, "put", "-", "--no-ref", input=b"bytes that vanish")
    assert code == 0, err
    code, out, _ = cli(data_dir, "tasks", "retry", str(failed["id"]))
    assert code == 0
    assert "requeued 1 tasks" in out and "tasks: 1 done" in out
    assert copies(data_dir, lost) == {"archive": "present", "inbox": "present"}
    assert cli_json(data_dir, "tasks", "--failed") == []
    assert [t["state"] for t in cli_json(data_dir, "tasks")] == ["done", "done"]
    code, out, _ = cli(data_dir, "tasks", "retry", "--all")
    assert code == 0 and "requeued 0 tasks" in out
    code, _, err = cli(data_dir, "tasks", "retry", str(failed["id"]), "999")
    assert code == 1 and "no failed or cancelled task with id" in err and "999" in err


def test_replicate_json_exit_code_says_a_transfer_failed(tmp_path: Path) -> None:
    data_dir = tmp_path / "retry-data"
    data_dir.mkdir()
    (data_dir / "safekeeper.toml").write_text(NO_RETRIES_CONFIG)
    lost = put(data_dir, b"bytes that vanish")
    object_path(data_dir, "inbox", lost).unlink()
    code, out, _ = cli(data_dir, "replicate", "--json")
    assert json.loads(out) == {
        "wanted": 1,
        "scheduled": 1,
        "earlier": 0,
        "locations": ["archive"],
        "tasks": {"failed": 1},
    }
    assert code == 1


def test_replicate_wait_counts_each_transfer_once(tmp_path: Path) -> None:
    """A transfer retried twice before it fails is one transfer, counted in its last
    state: the counts add up to the transfers scheduled."""
    data_dir = tmp_path / "retry-data"
    data_dir.mkdir()
    (data_dir / "safekeeper.toml").write_text(
        NO_RETRIES_CONFIG.replace("max_retries = 1", "max_retries = 3")
        + '\n[tasks]\nretry_base = "10ms"\nretry_max = "20ms"\n'
    )
    lost = put(data_dir, b"bytes that vanish")
    object_path(data_dir, "inbox", lost).unlink()
    code, out, _ = cli(data_dir, "replicate", "--wait", "--json")
    assert json.loads(out) == {
        "wanted": 1,
        "scheduled": 1,
        "earlier": 0,
        "locations": ["archive"],
        "tasks": {"failed": 1},
    }
    assert code == 1
    code, out, _ = cli(data_dir, "replicate", "--wait")
    assert out.splitlines()[0] == "0 copies wanted, 0 transfers scheduled"
