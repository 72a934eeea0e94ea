"""``ref`` and ``pkg`` commands end to end: output, --json, exit codes (0, 1, 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_blob_commands import cli
from tests.packages import zips


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_pkg_put_show_ls(tmp_path: Path, data_dir: Path) -> None:
    package = tmp_path / "course.zip"
    zips.build_scorm12(package)
    code, out, _ = cli(data_dir, "pkg", "put", "course:intro", str(package))
    assert code == 0 and "scorm12 sco/index.html" in out and "course:intro:draft" in out
    blob = out.split()[1]
    code, out, _ = cli(data_dir, "pkg", "show", blob, "--json")
    shown = json.loads(out)
    assert code == 0 and (shown["kind"], shown["entry"]) == ("scorm12", "sco/index.html")
    assert shown["references"] == ["course:intro:draft"]
    code, out, _ = cli(data_dir, "pkg", "ls", "course", "--json")
    assert code == 0 and [p["ref"] for p in json.loads(out)] == ["course:intro:draft"]
    code, out, _ = cli(data_dir, "pkg", "put", "course:intro:v2", str(package), "--json")
    assert code == 0 and json.loads(out)["stored"] is False


def test_pkg_put_rejection_names_code_and_member(tmp_path: Path, data_dir: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(zips.build_symlink())
    code, out, err = cli(data_dir, "pkg", "put", "course:intro", str(bad))
    assert code == 1 and out == ""
    assert "error:" in err and "symlink_member" in err and "link" in err
    code, out, _ = cli(data_dir, "ls", "--json")
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize(
    "args",
    [
        ["pkg", "put", "no-key", "x.zip"],
        ["pkg", "put", "a:b:c:d", "x.zip"],
        ["ref", "set", "bad ns:key", "0" * 64],
        ["ref", "rm", "ns"],
        ["ref", "publish", "course:intro:draft"],
    ],
)
def test_bad_reference_syntax_is_a_usage_error(data_dir: Path, args: list[str]) -> None:
    code, _, err = cli(data_dir, *args)
    assert code == 2 and "Invalid value" in err


def test_ref_set_ls_rm_publish(tmp_path: Path, data_dir: Path) -> None:
    one, two = tmp_path / "one.zip", tmp_path / "two.zip"
    one.write_bytes(zips.build_html_package(marker=b"1"))
    two.write_bytes(zips.build_html_package(marker=b"2"))
    code, _, err = cli(data_dir, "ref", "publish", "course:intro")
    assert code == 1 and "no draft" in err
    _, out, _ = cli(data_dir, "pkg", "put", "course:intro", str(one), "--json")
    first = json.loads(out)["sha256"]
    code, out, _ = cli(data_dir, "ref", "publish", "course:intro")
    assert code == 0 and f"published course:intro → {first}" in out
    _, out, _ = cli(data_dir, "pkg", "put", "course:intro", str(two), "--json")
    second = json.loads(out)["sha256"]

    code, out, _ = cli(data_dir, "ref", "ls", "course", "--json")
    assert code == 0
    assert {(r["label"], r["blob"]) for r in json.loads(out)} == {
        ("draft", second),
        ("published", first),
    }
    code, out, _ = cli(data_dir, "ref", "set", "course:backup:v1", first[:12], "--json")
    assert code == 0 and json.loads(out) == {
        "ref": {"namespace": "course", "key": "backup", "label": "v1"},
        "sha256": first,
        "previous": None,
    }
    code, out, _ = cli(data_dir, "ref", "set", "course:backup:v1", "course:intro:draft")
    assert code == 0 and f"(was {first})" in out
    code, out, _ = cli(data_dir, "ref", "rm", "course:backup:v1")
    assert code == 0 and second in out
    code, _, err = cli(data_dir, "ref", "rm", "course:backup:v1")
    assert code == 1 and "no reference course:backup:v1" in err
    code, _, err = cli(data_dir, "ref", "set", "course:x", "f" * 64)
    assert code == 1 and "no blob" in err
    code, out, _ = cli(data_dir, "audit", "--json")
    assert [e["action"] for e in json.loads(out)] == [
        "ref-removed",
        "ref-set",
        "ref-set",
        "publish",
    ]
