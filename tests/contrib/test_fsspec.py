"""The safekeeper:// filesystem: fsspec's own abstract test suite, plus pandas through it."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.copy import AbstractCopyTests
from fsspec.tests.abstract.get import AbstractGetTests
from fsspec.tests.abstract.open import AbstractOpenTests
from fsspec.tests.abstract.pipe import AbstractPipeTests
from fsspec.tests.abstract.put import AbstractPutTests

from safekeeper.archive import Archive
from safekeeper.config import load_config, write_default
from safekeeper.contrib.filesystem import SafekeeperFileSystem
from safekeeper.services.deletion import gc
from tests.conftest import FakeClock


@pytest.fixture(scope="module")
def shared_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SafekeeperFileSystem]:
    data_dir = tmp_path_factory.mktemp("fsspec") / "data"
    write_default(data_dir)
    filesystem = SafekeeperFileSystem(data_dir, skip_instance_cache=True)
    yield filesystem
    filesystem.archive.close()


class SafekeeperFixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, shared_fs: SafekeeperFileSystem) -> SafekeeperFileSystem:
        return shared_fs

    @pytest.fixture
    def fs_join(self) -> Any:
        return posixpath.join

    @pytest.fixture
    def fs_path(self) -> str:
        return "abstract/tests"

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False


class TestCopy(AbstractCopyTests, SafekeeperFixtures):  # type: ignore[misc]
    pass


class TestGet(AbstractGetTests, SafekeeperFixtures):  # type: ignore[misc]
    pass


class TestPut(AbstractPutTests, SafekeeperFixtures):  # type: ignore[misc]
    pass


class TestOpen(AbstractOpenTests, SafekeeperFixtures):  # type: ignore[misc]
    pass


class TestPipe(AbstractPipeTests, SafekeeperFixtures):  # type: ignore[misc]
    pass


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def data_dir(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A data directory with the default config; its catalog on SQLite, then PostgreSQL."""
    if request.param == "postgresql":
        monkeypatch.setenv("SAFEKEEPER_DATABASE_URL", request.getfixturevalue("postgres_url"))
    directory = tmp_path / "data"
    write_default(directory)
    return directory


def test_registered_with_fsspec(data_dir: Path) -> None:
    with fsspec.open("safekeeper://raw/2026/hello.txt", "wb", data_dir=data_dir) as f:
        f.write(b"hello")
    filesystem = fsspec.filesystem("safekeeper", data_dir=data_dir)
    assert isinstance(filesystem, SafekeeperFileSystem)
    assert filesystem.cat_file("raw/2026/hello.txt") == b"hello"
    assert filesystem.info("raw/2026/hello.txt")["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_pandas_round_trip_and_range_reads(data_dir: Path) -> None:
    pandas = pytest.importorskip("pandas")
    options = {"data_dir": str(data_dir)}
    frame = pandas.DataFrame({"run": range(1000), "value": [i * 0.5 for i in range(1000)]})
    frame.to_csv("safekeeper://results/run-1.csv", index=False, storage_options=options)
    back = pandas.read_csv("safekeeper://results/run-1.csv", storage_options=options)
    assert back.equals(frame)

    filesystem = fsspec.filesystem("safekeeper", data_dir=data_dir)
    whole = filesystem.cat_file("results/run-1.csv")
    assert filesystem.cat_file("results/run-1.csv", start=10, end=50) == whole[10:50]
    assert filesystem.cat_file("results/run-1.csv", start=-7) == whole[-7:]
    with filesystem.open("results/run-1.csv", "rb", block_size=64) as f:
        f.seek(100)
        assert f.read(300) == whole[100:400]
    assert filesystem.glob("results/*.csv") == ["results/run-1.csv"]
    assert filesystem.find("results") == ["results/run-1.csv"]


def test_copy_move_and_remove_are_reference_operations(data_dir: Path) -> None:
    """cp points a second reference at the same blob; rm drops the reference, and gc
    past the grace period then removes every copy from the disk."""
    clock = FakeClock()
    archive = Archive(load_config(data_dir=data_dir), clock=clock)
    filesystem = SafekeeperFileSystem(archive=archive, skip_instance_cache=True)
    filesystem.pipe_file("lab/a.bin", b"payload" * 100)
    filesystem.cp("lab/a.bin", "lab/copy/b.bin")
    filesystem.mv("lab/copy/b.bin", "lab/moved/c.bin")
    assert filesystem.find("lab") == ["lab/a.bin", "lab/moved/c.bin"]
    sha = filesystem.checksum("lab/a.bin")
    assert filesystem.checksum("lab/moved/c.bin") == sha
    inbox_file = data_dir / "inbox" / sha[:2] / sha[2:4] / sha
    assert inbox_file.read_bytes() == b"payload" * 100

    filesystem.rm("lab", recursive=True)
    with pytest.raises(FileNotFoundError):
        filesystem.info("lab/a.bin")
    clock.advance(days=8)  # past the default grace period
    gc.run_gc(archive)
    assert not inbox_file.exists()
    archive.close()


def test_bad_paths_and_modes(data_dir: Path) -> None:
    filesystem = SafekeeperFileSystem(data_dir, skip_instance_cache=True)
    with pytest.raises(FileNotFoundError):
        filesystem.cat_file("nothing/here")
    with pytest.raises(FileNotFoundError):
        filesystem.pipe_file("bad name!/x", b"1")
    filesystem.pipe_file("ns/x", b"1")
    with pytest.raises(FileExistsError):
        filesystem.open("ns/x", "xb")
    with pytest.raises(NotImplementedError):
        filesystem.open("ns/x", "ab")
    assert filesystem.ls("ns", detail=False) == ["ns/x"]
    filesystem.archive.close()
