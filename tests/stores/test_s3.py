"""S3Store specifics: multipart path, windowed reads, URLs, errors, on moto and SeaweedFS."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator

import obstore.exceptions as obe
import pytest

from safekeeper.errors import (
    AlreadyExists,
    BadInput,
    NotFound,
    PermanentStoreError,
    TransientStoreError,
)
from safekeeper.stores import open_store
from safekeeper.stores.s3 import S3Store, part_size_for
from safekeeper.stores.s3_errors import map_error
from tests.servers import S3Server

MIB = 1024 * 1024
STATUS = "Server returned non-2xx status code:"


@pytest.fixture(params=["moto", "seaweedfs"])
def server(request: pytest.FixtureRequest) -> S3Server:
    fixture: S3Server = request.getfixturevalue(f"{request.param}_server")
    return fixture


@pytest.fixture
def bucket(server: S3Server) -> str:
    return server.make_bucket()


def _chunks(data: bytes, size: int = MIB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.s3
def test_large_objects_stream_as_multipart(server: S3Server, bucket: str) -> None:
    store = server.store(bucket, single_put_max=MIB, part_size=5 * MIB, read_window=MIB)
    data = os.urandom(12 * MIB + 17)
    result = store.put("big", _chunks(data))
    assert (result.size, result.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert b"".join(store.open("big")) == data  # 13 ranged reads
    assert store.read_range("big", 5 * MIB - 3, 6) == data[5 * MIB - 3 : 5 * MIB + 3]
    assert store.read_range("big", len(data) + 10, 6) == b""  # past the end: 416
    with pytest.raises(AlreadyExists):
        store.put("big", io.BytesIO(data))
    with store.stage(io.BytesIO(data)) as staged:
        staged.commit("big-staged")
    assert store.stat("big-staged").size == len(data)
    head = server.client().head_object(Bucket=bucket, Key="big")
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MiB parts
    assert server.client().list_multipart_uploads(Bucket=bucket).get("Uploads") in (None, [])


@pytest.mark.s3
def test_failed_multipart_source_is_aborted(server: S3Server, bucket: str) -> None:
    store = server.store(bucket, single_put_max=MIB, part_size=5 * MIB)

    def failing() -> Iterator[bytes]:
        yield os.urandom(11 * MIB)
        raise BadInput("source refused")

    with pytest.raises(BadInput, match="source refused"):
        store.put("never", failing())
    assert not store.exists("never")
    assert server.client().list_multipart_uploads(Bucket=bucket).get("Uploads") in (None, [])


@pytest.mark.s3
def test_prefix_isolates_keys(server: S3Server, bucket: str) -> None:
    client = server.client()
    for key in ("outside", "pre/fix/nested/deep", "pre/fixed", "pre/fix/k1"):
        client.put_object(Bucket=bucket, Key=key, Body=b"x")
    store = server.store(bucket, prefix="pre/fix")
    assert store.url == f"s3://{bucket}/pre/fix"
    assert [info.key for info in store.list()] == ["k1"]
    assert [info.key for info in store.list("k")] == ["k1"]
    store.put("k2", [b"yy"])
    assert client.get_object(Bucket=bucket, Key="pre/fix/k2")["Body"].read() == b"yy"


@pytest.mark.s3
def test_missing_bucket_is_permanent(server: S3Server) -> None:
    store = server.store(f"missing-{uuid.uuid4().hex[:12]}")
    with pytest.raises(PermanentStoreError):
        store.put("k", [b"x"])
    with pytest.raises(PermanentStoreError):
        list(store.list())


@pytest.mark.s3
def test_environment_supplies_defaults(
    server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_access_key)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = open_store(f"s3://{bucket}")
    store.put("from-env", [b"ok"])
    assert b"".join(store.open("from-env")) == b"ok"


@pytest.mark.s3
def test_wrong_secret_is_permanent(seaweedfs_server: S3Server) -> None:
    bucket = seaweedfs_server.make_bucket()
    store = open_store(f"s3://{bucket}", seaweedfs_server.options(secret_access_key="wrong"))
    with pytest.raises(PermanentStoreError):
        store.put("k", [b"x"])


def test_url_never_carries_or_echoes_credentials() -> None:
    store = S3Store.from_url("s3://bucket/some/prefix/", endpoint="http://127.0.0.1:1")
    assert store.url == "s3://bucket/some/prefix"
    with pytest.raises(BadInput) as caught:
        S3Store.from_url("s3://AKIAEXAMPLE:sekrit@bucket/prefix")
    assert "sekrit" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("s3://Bad_Bucket", {}),
        ("s3://bucket/a//b", {}),
        ("s3://bucket/a/../b", {}),
        ("s3://bucket?x=1", {}),
        ("s3://bucket", {"colour": "blue"}),
        ("s3://bucket", {"part_size": 1024}),
    ],
)
def test_bad_s3_urls_and_options(url: str, options: dict[str, object]) -> None:
    with pytest.raises(BadInput):
        open_store(url, options)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (FileNotFoundError("Object at location k not found"), NotFound),
        (FileNotFoundError(f"{STATUS} 404: <Code>NoSuchBucket</Code>"), PermanentStoreError),
        (obe.AlreadyExistsError("exists"), AlreadyExists),
        (obe.PermissionDeniedError("denied"), PermanentStoreError),
        (obe.UnauthenticatedError("who"), PermanentStoreError),
        (obe.GenericError(f"{STATUS} 403 Forbidden"), PermanentStoreError),
        (obe.GenericError(f"{STATUS} 404 Not Found: NoSuchBucket"), PermanentStoreError),
        (obe.GenericError(f"{STATUS} 429 Slow Down"), TransientStoreError),
        (obe.GenericError(f"{STATUS} 503 Slow Down"), TransientStoreError),
        (obe.GenericError("error sending request: connection refused"), TransientStoreError),
        (obe.PreconditionError("etag changed"), TransientStoreError),
    ],
)  # fmt: skip
def test_error_mapping(exc: Exception, expected: type[Exception]) -> None:
    assert type(map_error(exc, "op")) is expected


def test_part_size_fits_s3_part_limit() -> None:
    assert part_size_for(None) == 16 * MIB
    assert part_size_for(10 * MIB) == 16 * MIB
    big = 5 * 1024**4  # S3's largest object
    assert part_size_for(big) * 10_000 >= big
    assert part_size_for(big) % MIB == 0
