"""Every store backend against the shared conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from safekeeper.stores import Store, open_store
from safekeeper.stores.memory import MemoryStore
from safekeeper.testing import StoreConformance
from tests.servers import S3Server


class TestMemoryStore(StoreConformance):
    def make_store(self) -> Store:
        return MemoryStore.from_url(f"memory://conformance-{uuid.uuid4().hex}")


class TestFileStoreFanout(StoreConformance):
    layout = "fanout"

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = open_store((tmp_path / "store").as_uri(), {"layout": self.layout})
        yield store
        store.close()


class TestFileStoreFlat(TestFileStoreFanout):
    layout = "flat"


class TestFileStoreInterval(TestFileStoreFanout):
    layout = "interval"

    def make_key(self, i: int) -> str:
        return str(i)

    def bad_keys(self) -> list[str]:
        return [*super().bad_keys(), "abc", "007", "-1", "1e3", "\u0663"]


@pytest.mark.s3
class TestS3Moto(StoreConformance):
    """A fresh bucket per test, keys at the bucket root."""

    @pytest.fixture
    def store(self, moto_server: S3Server) -> Iterator[Store]:
        store = moto_server.store(moto_server.make_bucket())
        yield store
        store.close()


@pytest.mark.s3
class TestS3SeaweedFS(StoreConformance):
    """One bucket for the class (each is a SeaweedFS collection), a prefix per test."""

    @pytest.fixture(scope="class")
    def bucket(self, seaweedfs_server: S3Server) -> str:
        return seaweedfs_server.make_bucket()

    @pytest.fixture
    def store(self, seaweedfs_server: S3Server, bucket: str) -> Iterator[Store]:
        store = seaweedfs_server.store(bucket, prefix=f"run/{uuid.uuid4().hex[:12]}")
        yield store
        store.close()
