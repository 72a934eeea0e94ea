"""Blobs far larger than the process may hold in memory go in and across by streaming."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOB_MIB = 512
RSS_LIMIT_MIB = 200

SCRIPT = """
import sys
from safekeeper import open_archive
from safekeeper.engine.embedded import run_due
from safekeeper.services.copies import replication

def peak_mib():
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across exec.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no VmHWM in /proc/self/status")

with open_archive(sys.argv[1]) as archive:
    outcome = archive.put_file(sys.argv[2])
    after_put = peak_mib()
    replication.replication_pass(archive)
    tally = run_due(archive)
    print(outcome.size, tally["done"], after_put, peak_mib())
"""


@pytest.mark.slow
def test_put_and_transfer_of_a_512_mib_blob_stay_in_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    block = os.urandom(1024 * 1024)
    with big.open("wb") as out:
        for i in range(BLOB_MIB):
            out.write(block[:-8] + i.to_bytes(8, "big"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data"), str(big)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=300,
    )
    size, done, after_put, peak = (int(x) for x in result.stdout.split())
    assert size == BLOB_MIB * 1024 * 1024 and done == 1
    assert after_put < RSS_LIMIT_MIB, f"put peaked at {after_put} MiB"
    assert peak < RSS_LIMIT_MIB, f"transfer peaked at {peak} MiB"
