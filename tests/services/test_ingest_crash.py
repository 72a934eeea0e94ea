"""SIGKILL a real ``safekeeper put`` at random moments: no ``present`` copy may ever
point at a missing or incomplete object (invariant 6)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import Blob, Copy, CopyState, Location

RUNS = 24


def _make_tree(root: Path, rng: random.Random) -> None:
    root.mkdir()
    (root / "big.bin").write_bytes(rng.randbytes(24 * 1024 * 1024))
    for i in range(400):
        (root / f"small-{i:03d}.bin").write_bytes(rng.randbytes(rng.randint(0, 64 * 1024)))


def _check_invariant(data_dir: Path) -> tuple[int, int]:
    """Every present copy's object exists and hashes to its blob id; every object in the
    store (orphans included) is complete. Returns (present copies, objects)."""
    with Archive(load_config(data_dir=data_dir, environ={})) as archive:
        store = archive.store("inbox")
        with archive.db.read() as session:
            present = session.execute(
                select(Blob.sha256, Blob.size)
                .join(Copy, Copy.blob_id == Blob.id)
                .join(Location, Copy.location_id == Location.id)
                .where(Location.name == "inbox", Copy.state == CopyState.PRESENT)
            ).all()
        for sha256, size in present:
            digest = hashlib.sha256()
            for chunk in store.open(sha256):
                digest.update(chunk)
            assert digest.hexdigest() == sha256, f"present copy {sha256} is incomplete"
            assert store.stat(sha256).size == size
        objects = list(store.list())
        for info in objects:
            digest = hashlib.sha256()
            for chunk in store.open(info.key):
                digest.update(chunk)
            assert digest.hexdigest() == info.key, f"visible object {info.key} is partial"
        return len(present), len(objects)


@pytest.mark.slow
def test_sigkill_during_put_never_leaves_a_bad_present_copy(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    tree = tmp_path / "tree"
    _make_tree(tree, rng)
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "safekeeper", "--data-dir", str(data_dir), "put", str(tree)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    # Calibrate: kills are drawn across the length of one uninterrupted put, so they
    # land in every phase however fast the machine is.
    started = time.monotonic()
    subprocess.run(
        [*command[:4], str(tmp_path / "calibration"), *command[5:]],
        env=env,
        check=True,
        capture_output=True,
    )
    duration = time.monotonic() - started
    killed_midway = 0
    for _run in range(RUNS):
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(rng.uniform(0.05, 0.95) * duration)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_midway += 1
        process.wait()
        if process.returncode not in (0, -signal.SIGKILL):
            pytest.fail(f"put failed on its own: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]
        _check_invariant(data_dir)
        # Start over now and then so kills land in the early phases again.
        if rng.random() < 0.3:
            subprocess.run(["rm", "-rf", str(data_dir)], check=True)
    assert killed_midway >= RUNS // 2, "the kills should mostly land mid-put"
    # A final uninterrupted put completes the job, adopting whatever was left.
    subprocess.run(command, env=env, check=True, capture_output=True)
    present, objects = _check_invariant(data_dir)
    distinct = {hashlib.sha256(p.read_bytes()).hexdigest() for p in tree.iterdir()}
    assert present == objects == len(distinct)
