"""S3 → S3 streams over the single-PUT limit (issue 15): the target reads the source's
obstore stream while its own multipart upload runs."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from tests.servers import S3Server

MIB = 1024 * 1024


@pytest.mark.s3
@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "worker-thread"])
def test_s3_to_s3_stream_over_single_put_limit(moto_server: S3Server, in_thread: bool) -> None:
    source = moto_server.store(moto_server.make_bucket(), single_put_max=MIB, read_window=2 * MIB)
    target = moto_server.store(moto_server.make_bucket(), single_put_max=MIB, part_size=5 * MIB)
    data = os.urandom(11 * MIB + 5)
    source.put("obj", [data])
    results: list[object] = []

    def copy() -> None:
        try:
            results.append(target.put("obj", source.open("obj")))
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            results.append(exc)

    if in_thread:
        worker = threading.Thread(target=copy)
        worker.start()
        worker.join(60)
    else:
        copy()
    assert len(results) == 1 and not isinstance(results[0], BaseException), results
    assert b"".join(target.open("obj")) == data
    assert (
        hashlib.sha256(b"".join(target.open("obj"))).hexdigest() == hashlib.sha256(data).hexdigest()
    )
