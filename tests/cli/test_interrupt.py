"""Ctrl-C during ``safekeeper put``: a real process, a real SIGINT at several points.

After each: exit 130 and "interrupted: N of M stored; run it again to finish"; the
store's ``.tmp`` is empty (staged files discarded at once, not left for the 6-hour
cleanup); every ``present`` row's object exists; exactly N files are referenced (whole
batches, nothing half-way). Running it again finishes and counts the N as already held.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import Blob, Copy, CopyState, Location, Reference
from safekeeper.errors import NotFound
from safekeeper.services.copies.ingest import BATCH_SIZE

pytestmark = pytest.mark.slow

# Eight batches, and "a quarter in" signals after two batches' worth of objects: the
# poll (a walk of the store) lags the put by hundreds of files under load, and six
# batches of margin keep the signal from arriving after a finished run (it did, in
# CI, with three batches once the put got faster).
FILES = 8 * BATCH_SIZE + 128


def _tree(root: Path) -> Path:
    tree = root / "tree"
    for i in range(FILES):
        directory = tree / f"d{i % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i}.txt").write_bytes(f"file {i} ".encode() * (1 + i % 50))
    return tree


def _put(data_dir: Path, tree: Path) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    return subprocess.Popen(
        [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "put", "tree"],
        cwd=tree.parent, env=environ, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_for(condition: object, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not condition():  # type: ignore[operator]
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"put ended before the interrupt point: {process.communicate()[1]}")
        time.sleep(0.005)


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def _check_store(data_dir: Path) -> int:
    """The physical truth after the run: returns the number of files referenced."""
    assert _files(data_dir / "inbox" / ".tmp") == []
    with Archive(load_config(data_dir=data_dir, environ={})) as archive:
        store = archive.store("inbox")
        with archive.db.read() as session:
            rows = session.execute(
                select(Blob.sha256, Blob.id)
                .join(Copy, Copy.blob_id == Blob.id)
                .join(Location, Copy.location_id == Location.id)
                .where(Location.name == "inbox", Copy.state == CopyState.PRESENT)
            ).all()
            referenced = len(session.scalars(select(Reference.id)).all())
        for sha256, blob_id in rows:
            try:
                store.stat(archive.key_for("inbox", sha256, blob_id))
            except NotFound:
                pytest.fail(f"present row for {sha256} has no object")
    return referenced


@pytest.mark.parametrize("point", ["staging", "first batch recorded", "a quarter in"])
def test_interrupted_put_keeps_whole_batches_and_finishes_on_rerun(
    tmp_path: Path, point: str
) -> None:
    tree = _tree(tmp_path)
    data_dir = tmp_path / "data"
    tmp_dir, objects = data_dir / "inbox" / ".tmp", data_dir / "inbox"
    process = _put(data_dir, tree)
    if point == "staging":
        _wait_for(lambda: len(_files(tmp_dir)) > 0, process)
    elif point == "first batch recorded":
        _wait_for(lambda: len(_files(objects)) - len(_files(tmp_dir)) >= 1, process)
    else:
        _wait_for(lambda: len(_files(objects)) - len(_files(tmp_dir)) >= FILES // 4, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    match = re.fullmatch(
        rf"interrupted: ([\d,]+) of {FILES:,} stored; run it again to finish\n", err
    )
    assert match, err
    stored = int(match.group(1).replace(",", ""))
    assert stored % BATCH_SIZE == 0  # whole batches only
    assert _check_store(data_dir) == stored

    rerun = subprocess.run(
        [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "put", "tree"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    summary = rerun.stdout.strip().splitlines()[-1]
    assert summary.endswith(f": {FILES - stored} stored, {stored} already held"), summary
    assert _check_store(data_dir) == FILES
