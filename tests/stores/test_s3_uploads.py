"""Multipart hygiene (issue 15): a failed upload leaves no incomplete upload behind, and
``safekeeper verify`` aborts the stale ones killed writers left, on real S3 servers."""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from safekeeper.cli import app
from safekeeper.config import write_default
from safekeeper.errors import PermanentStoreError, TransientStoreError
from safekeeper.stores import open_store
from safekeeper.stores.s3 import S3Store
from tests.servers import S3Server

MIB = 1024 * 1024

pytestmark = pytest.mark.s3


@pytest.fixture(params=["moto", "seaweedfs"])
def server(request: pytest.FixtureRequest) -> S3Server:
    fixture: S3Server = request.getfixturevalue(f"{request.param}_server")
    return fixture


def _uploads(server: S3Server, bucket: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (
        server.client().list_multipart_uploads(Bucket=bucket).get("Uploads") or []
    )
    return found


class Cancelled(BaseException):
    """Like a worker being stopped: not an Exception, so nothing catches it by accident."""


@pytest.mark.parametrize("error", [RuntimeError, Cancelled])
def test_source_failing_mid_upload_leaves_no_upload(
    server: S3Server, error: type[BaseException]
) -> None:
    bucket = server.make_bucket()
    store = server.store(bucket, "objects", single_put_max=MIB, part_size=5 * MIB)

    def source() -> Iterator[bytes]:
        for _ in range(11):  # two 5 MiB parts sent before it fails
            yield os.urandom(MIB)
        raise error("the source broke")

    # A RuntimeError reaches the caller as the failed write it caused.
    with pytest.raises((error, TransientStoreError), match="the source broke"):
        store.put("never", source())
    assert not store.exists("never")
    assert _uploads(server, bucket) == []


def test_s3_to_s3_source_replaced_mid_copy_leaves_no_upload(moto_server: S3Server) -> None:
    source = moto_server.store(moto_server.make_bucket(), single_put_max=MIB, read_window=2 * MIB)
    target_bucket = moto_server.make_bucket()
    target = moto_server.store(target_bucket, single_put_max=MIB, part_size=5 * MIB)
    source.put("obj", [os.urandom(13 * MIB)])

    def copy_while_replaced() -> Iterator[bytes]:
        for sent, chunk in enumerate(source.open("obj")):
            if sent == 8:  # past the first part: the source changes under the copy
                source.replace("obj", [os.urandom(13 * MIB)])
            yield chunk

    with pytest.raises(TransientStoreError, match="changed underneath"):
        target.put("obj", copy_while_replaced())
    assert not target.exists("obj")
    assert _uploads(moto_server, target_bucket) == []


# -- an abort that fails: the store aborts the upload itself -------------------------


class _RefusingAborts(BaseHTTPRequestHandler):
    """Forwards S3 requests to the real server, but refuses AbortMultipartUpload."""

    upstream = ("127.0.0.1", 0)
    refused: list[str]

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "DELETE" and "uploadId=" in self.path:
            self.refused.append(self.path)
            self._reply(403, {}, b"<Error><Code>AccessDenied</Code></Error>")
            return
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            # Headers as sent, Host included: the signature covers them.
            connection.request(self.command, self.path, body, dict(self.headers.items()))
            response = connection.getresponse()
            data = response.read()
            self._reply(response.status, dict(response.getheaders()), data)
        finally:
            connection.close()

    def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def refusing_proxy(seaweedfs_server: S3Server) -> Iterator[tuple[str, list[str]]]:
    """A loopback proxy in front of SeaweedFS that refuses every abort: the endpoint,
    and the aborts it refused."""
    host, port = seaweedfs_server.endpoint.removeprefix("http://").split(":")
    refused: list[str] = []
    handler = type(
        "Handler", (_RefusingAborts,), {"upstream": (host, int(port)), "refused": refused}
    )
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{proxy.server_address[1]}", refused
    proxy.shutdown()
    proxy.server_close()


def test_upload_whose_abort_fails_is_aborted_by_the_store(
    seaweedfs_server: S3Server, refusing_proxy: tuple[str, list[str]]
) -> None:
    endpoint, refused = refusing_proxy
    server = seaweedfs_server  # moto dates every upload 2010: no use for "since"
    bucket = server.make_bucket()
    # obstore talks through the proxy (its abort is refused); the store's own cleanup
    # goes to the server directly, as a second client would.
    store = open_store(
        f"s3://{bucket}/objects",
        server.options(endpoint=endpoint, single_put_max=MIB, part_size=5 * MIB),
    )
    direct = open_store(f"s3://{bucket}/objects", server.options())
    assert isinstance(store, S3Store) and isinstance(direct, S3Store)
    store.uploads = direct.uploads

    def source() -> Iterator[bytes]:
        yield os.urandom(6 * MIB)
        raise RuntimeError("the source broke")

    with pytest.raises((RuntimeError, PermanentStoreError)):
        store.put("never", source())
    assert refused, "obstore's abort went through: this test proves nothing"
    assert _uploads(server, bucket) == []


# -- verify aborts stale leftovers -----------------------------------------------------


runner = CliRunner()


def _archive_dir(tmp_path: Path, server: S3Server, bucket: str) -> Path:
    data_dir = tmp_path / "data"
    write_default(data_dir)
    config = data_dir / "safekeeper.toml"
    config.write_text(
        config.read_text()
        + f"""
[locations.cloud]
kind = "archive"
store = "s3://{bucket}/objects"
endpoint = "{server.endpoint}"
region = "{server.region}"
access_key_id = "{server.access_key_id}"
secret_access_key = "{server.secret_access_key}"
allow_http = true
"""
    )
    return data_dir


def _verify(data_dir: Path, *args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), "verify", "--json", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _leftover(server: S3Server, bucket: str, key: str, size: int) -> str:
    """An incomplete upload with one part, as a killed writer leaves it."""
    client = server.client()
    upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * size)
    return upload_id


def test_verify_aborts_stale_uploads_under_the_prefix_only(
    tmp_path: Path, seaweedfs_server: S3Server
) -> None:
    server = seaweedfs_server  # moto dates every upload 2010: all would be stale
    bucket = server.make_bucket()
    data_dir = _archive_dir(tmp_path, server, bucket)
    _leftover(server, bucket, "objects/" + "a" * 64, 1000)
    outside = _leftover(server, bucket, "elsewhere/" + "b" * 64, 10)

    # Younger than the threshold (the default 24 h, or 1 h): may still be written.
    for args in ([], ["--stale-uploads-after", "1h"]):
        assert _verify(data_dir, *args)["stale_uploads"] == []
        assert len(_uploads(server, bucket)) == 2

    report = _verify(data_dir, "--stale-uploads-after", "0")
    assert [(u["location"], u["key"], u["size"]) for u in report["stale_uploads"]] == [
        ("cloud", "a" * 64, 1000)
    ]
    assert [u["UploadId"] for u in _uploads(server, bucket)] == [outside]

    result = runner.invoke(app, ["--data-dir", str(data_dir), "verify"])
    assert result.exit_code == 0 and "aborted" not in result.stdout


def test_verify_aborts_no_uploads_in_a_bucket_that_is_not_the_recorded_one(
    tmp_path: Path, moto_server: S3Server
) -> None:
    """Aborting uploads is a write: a bucket that lost its marker since verify's last
    (cached) identity check may be another deployment's, whose writers are running."""
    from datetime import timedelta

    from safekeeper.archive import Archive
    from safekeeper.config import load_config
    from safekeeper.services.copies.verify import verify
    from safekeeper.stores.marker import MARKER_NAME

    bucket = moto_server.make_bucket()
    data_dir = _archive_dir(tmp_path, moto_server, bucket)
    archive = Archive(load_config(data_dir=data_dir))
    assert verify(archive, location="cloud").errors == []  # the identity is now cached
    moto_server.client().delete_object(Bucket=bucket, Key=f"objects/{MARKER_NAME}")
    theirs = _leftover(moto_server, bucket, "objects/" + "e" * 64, 10)
    report = verify(archive, location="cloud", stale_uploads_after=timedelta(0))
    assert report.stale_uploads == []
    assert any("identity marker" in error for error in report.errors), report.errors
    assert [u["UploadId"] for u in _uploads(moto_server, bucket)] == [theirs]


def test_verify_prints_the_aborted_uploads(tmp_path: Path, moto_server: S3Server) -> None:
    bucket = moto_server.make_bucket()
    data_dir = _archive_dir(tmp_path, moto_server, bucket)
    for name in ("c", "d"):
        _leftover(moto_server, bucket, "objects/" + name * 64, 7)
    result = runner.invoke(
        app, ["--data-dir", str(data_dir), "verify", "--stale-uploads-after", "0s"]
    )
    assert result.exit_code == 0, result.output
    assert "aborted 2 stale incomplete uploads (14 bytes)" in result.stdout
    assert f"aborted  cloud/{'c' * 64} (7 bytes" in result.stdout
    assert _uploads(moto_server, bucket) == []


def test_abort_since_spares_other_keys_and_older_uploads(seaweedfs_server: S3Server) -> None:
    server = seaweedfs_server
    bucket = server.make_bucket()
    store = server.store(bucket, "objects")
    assert store.uploads is not None
    mine = _leftover(server, bucket, "objects/k", 5)
    _leftover(server, bucket, "objects/k2", 5)  # another key sharing the prefix
    future = datetime.now(UTC) + timedelta(hours=1)
    assert store.uploads.abort_since("k", future) == 0  # started before: not ours
    assert store.uploads.abort_since("k", future - timedelta(days=1)) == 1
    assert [u["Key"] for u in _uploads(server, bucket)] == ["objects/k2"]
    assert mine not in [u["UploadId"] for u in _uploads(server, bucket)]
