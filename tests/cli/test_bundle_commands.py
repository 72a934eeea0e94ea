"""``safekeeper export`` / ``import`` end to end, in process."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from typer.testing import CliRunner

from safekeeper.cli import app
from tests.cli.test_blob_commands import cli
from tests.packages.zips import build_zip

runner = CliRunner()


def fill(data_dir: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "docs").mkdir(parents=True)
    (tree / "docs" / "a.txt").write_bytes(b"first file")
    (tree / "b.bin").write_bytes(bytes(range(256)) * 1000)
    code, _, _ = cli(data_dir, "put", str(tree), "--ref", "site:pages")
    assert code == 0
    code, _, _ = cli(data_dir, "put", str(tree / "b.bin"), "--ref", "site:pages/b.bin:v2")
    assert code == 0


def refs(data_dir: Path, namespace: str) -> list[tuple[str, str, str]]:
    code, out, err = cli(data_dir, "ls", namespace, "--json")
    if code == 1 and f"no namespace {namespace!r}" in err:
        return []  # nothing was ever put into it
    assert code == 0
    return [(r["key"], r["label"], r["blob"]) for r in json.loads(out)]


def test_export_then_import_into_another_data_directory(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    fill(source, tmp_path)
    bundle = tmp_path / "site.tar"
    code, out, _ = cli(source, "export", "site", "-o", str(bundle))
    assert code == 0 and "3 references, 2 blobs" in out
    assert tarfile.is_tarfile(bundle)

    code, out, _ = cli(target, "import", str(bundle), "--into", "copy", "--json")
    assert code == 0
    outcome = json.loads(out)
    assert (outcome["blobs_stored"], outcome["references_created"]) == (2, 3)
    assert refs(target, "copy") == refs(source, "site")

    code, out, _ = cli(target, "import", str(bundle), "--into", "copy")
    assert code == 0
    assert "0 blobs stored, 2 already held" in out and "3 unchanged" in out


def test_export_to_stdout_and_import_from_stdin(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    fill(source, tmp_path)
    result = runner.invoke(app, ["--data-dir", str(source), "export", "site", "-o", "-", "--zstd"])
    assert result.exit_code == 0
    assert result.stdout_bytes[:4] == b"\x28\xb5\x2f\xfd"
    code, out, _ = cli(target, "import", "-", input=result.stdout_bytes)
    assert code == 0 and "2 blobs stored" in out
    assert refs(target, "site") == refs(source, "site")


def test_tampered_bundle_is_an_error_naming_the_blob(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    fill(source, tmp_path)
    bundle = tmp_path / "site.tar"
    assert cli(source, "export", "site", "-o", str(bundle))[0] == 0
    with tarfile.open(bundle) as tar:
        victim = next(m for m in tar.getmembers() if m.size == 256_000)
    data = bytearray(bundle.read_bytes())
    data[victim.offset_data + 1000] ^= 0x80
    bundle.write_bytes(bytes(data))

    code, _, err = cli(target, "import", str(bundle))
    assert code == 1
    assert err.startswith("error: ") and victim.name.removeprefix("blobs/") in err
    assert refs(target, "site") == []
    code, out, _ = cli(target, "ls", "--json")
    assert json.loads(out) == []


def test_errors_and_usage(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, _, err = cli(data_dir, "export", "nowhere", "-o", str(tmp_path / "x.tar"))
    assert code == 1 and "no namespace 'nowhere'" in err
    assert not list(tmp_path.glob("x.tar*"))
    code, _, _ = cli(data_dir, "export", "nowhere")  # -o is required
    assert code == 2
    code, _, err = cli(data_dir, "import", str(tmp_path / "missing.tar"))
    assert code == 1 and "cannot read" in err


def test_package_that_fails_validation_is_an_error_naming_blob_and_member(
    tmp_path: Path,
) -> None:
    evil = build_zip({"index.html": b"<html></html>", "../escape.html": b"outside"})
    sha256 = hashlib.sha256(evil).hexdigest()
    manifest = {
        "format": "safekeeper-bundle",
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "namespace": "site",
        "references": [{"key": "evil", "label": "draft", "blob": sha256, "size": len(evil)}],
        "packages": [
            {
                "blob": sha256,
                "kind": "html",
                "entry": "index.html",
                "title": None,
                "member_count": 2,
                "extracted_size": 20,
            }
        ],
        "blobs": [{"sha256": sha256, "size": len(evil)}],
    }
    bundle = tmp_path / "evil.tar"
    members = [("manifest.json", json.dumps(manifest).encode()), (f"blobs/{sha256}", evil)]
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    target = tmp_path / "target"
    code, _, err = cli(target, "import", str(bundle))
    assert code == 1
    assert err.startswith("error: ") and sha256 in err and "../escape.html" in err
    assert refs(target, "site") == []
