"""The package cache: extraction exactly once, rebuilds, eviction, and refusing bad zips."""

from __future__ import annotations

import io
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
import tomli_w
from sqlalchemy import func, select
from typer.testing import CliRunner

from safekeeper.archive import Archive
from safekeeper.cli import app
from safekeeper.config import load_config
from safekeeper.db.models import AuditEntry, Copy, ExtractedTree, Location
from safekeeper.errors import ConfigError, PackageRejected
from safekeeper.packages.cache import PackageCache, package_cache
from safekeeper.packages.eviction import evict
from tests.conftest import ArchiveFactory, FakeClock
from tests.packages import zips

HTML_MEMBERS = {
    "index.html": zips.INDEX_HTML,
    "css/style.css": zips.STYLE_CSS,
    "js/app.js": zips.APP_JS,
    "img/logo.png": zips.PNG_1X1,
    "data/blob.bin": zips.ASSET_4K,
}


def _extractions(archive: Archive, sha256: str | None = None) -> int:
    query = select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "cache-extract")
    if sha256 is not None:
        query = query.where(AuditEntry.blob_sha256 == sha256)
    with archive.db.read() as session:
        return int(session.scalar(query) or 0)


def _trees(archive: Archive) -> dict[int, ExtractedTree]:
    with archive.db.read() as session:
        return {row.blob_id: row for row in session.scalars(select(ExtractedTree))}


def _files(tree: Path) -> dict[str, bytes]:
    return {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*") if p.is_file()}


def test_first_use_extracts_every_member_and_records_the_tree(archive: Archive) -> None:
    sha = archive.put_bytes(zips.build_html_package(), ref="courses:intro").sha256
    cache = PackageCache(archive)
    tree = cache.tree_for(sha)
    assert tree == cache.layout.root / sha[:2] / sha
    assert _files(tree) == HTML_MEMBERS
    assert cache.tree_for(sha) == tree  # second call: already there
    assert cache.extractions == 1 and _extractions(archive, sha) == 1
    (row,) = _trees(archive).values()
    assert row.size == sum(len(data) for data in HTML_MEMBERS.values())
    with archive.db.read() as session:
        cache_id = session.scalar(select(Location.id).where(Location.name == "cache"))
        # Derived data, never a copy: no copies row at the cache location.
        assert session.scalar(select(func.count()).where(Copy.location_id == cache_id)) == 0
    # Nothing left behind but the tree and its lock file.
    assert not any((cache.layout.root / ".tmp").iterdir())


def test_concurrent_first_uses_extract_once(archive: Archive) -> None:
    sha = archive.put_bytes(zips.build_scorm12()).sha256
    # Two caches stand for two processes: separate thread locks, the same file locks.
    caches = [PackageCache(archive), PackageCache(archive)]
    start = threading.Barrier(16)
    trees: list[Path] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        start.wait()
        try:
            trees.append(caches[index % 2].tree_for(sha))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(trees)) == 1 and len(trees) == 16
    assert sum(cache.extractions for cache in caches) == 1
    assert _extractions(archive, sha) == 1
    assert (trees[0] / "imsmanifest.xml").is_file()


def test_a_deleted_tree_is_rebuilt_and_an_unrecorded_one_adopted(archive: Archive) -> None:
    sha = archive.put_bytes(zips.build_scorm2004()).sha256
    cache = package_cache(archive)
    assert package_cache(archive) is cache
    tree = cache.tree_for(sha)
    shutil.rmtree(tree)
    cache.forget(sha)
    assert (cache.tree_for(sha) / "content" / "launch.html").read_bytes() == zips.INDEX_HTML
    assert cache.extractions == 2 and _extractions(archive, sha) == 2
    # A tree on disk without its row (an extraction that died after publishing): adopted.
    with archive.db.write() as session:
        session.execute(ExtractedTree.__table__.delete())
    cache.forget(sha)
    cache.tree_for(sha)
    assert cache.extractions == 2
    assert next(iter(_trees(archive).values())).size == sum(len(d) for d in _files(tree).values())


def test_last_access_is_written_at_most_once_a_minute(archive: Archive, clock: FakeClock) -> None:
    sha = archive.put_bytes(zips.build_html_package()).sha256
    cache = PackageCache(archive)
    cache.tree_for(sha)
    created = clock.now
    clock.advance(seconds=59)
    assert cache.ready(sha) and not cache.touch_due(sha)
    clock.advance(seconds=2)
    assert cache.touch_due(sha)
    cache.touch(sha)
    assert not cache.touch_due(sha)
    (row,) = _trees(archive).values()
    assert row.created_at == created and row.last_access == clock.now


def _package_size() -> int:
    return sum(len(d) for d in HTML_MEMBERS.values())


def test_eviction_takes_least_recently_used_trees_down_to_the_low_watermark(
    make_archive: ArchiveFactory, clock: FakeClock
) -> None:
    size = _package_size() + 1  # each package's index.html gets a one-byte marker
    archive = make_archive(
        SAFEKEEPER__LOCATIONS__CACHE__HIGH_WATERMARK=str(int(size * 2.5)),
        SAFEKEEPER__LOCATIONS__CACHE__LOW_WATERMARK=str(int(size * 2.2)),
    )
    a, b, c, d = (
        archive.put_bytes(zips.build_html_package(marker=m)).sha256
        for m in (b"a", b"b", b"c", b"d")
    )
    cache = PackageCache(archive)
    cache.tree_for(a)
    clock.advance(hours=1)
    cache.tree_for(b)
    clock.advance(hours=1)
    cache.touch(a)  # a is now more recently used than b
    clock.advance(hours=1)
    cache.tree_for(c)  # 3 trees > 2.5: the least recently used, b, goes
    assert not cache.layout.tree(b).exists()
    assert all(cache.layout.tree(s).is_dir() for s in (a, c))
    assert len(_trees(archive)) == 2
    with archive.db.read() as session:
        evictions = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "cache-evict")
        ).all()
    assert [(e.blob_sha256, e.rule) for e in evictions] == [(b, "disk-pressure")]
    # Under the high watermark nothing goes, whatever the age.
    clock.advance(days=30)
    assert evict(archive, clock()) == []
    # The tree just extracted for a request is never its own victim.
    clock.advance(hours=1)
    cache.tree_for(d)
    assert cache.layout.tree(d).is_dir()
    assert {s for s in (a, c) if cache.layout.tree(s).exists()} == {c}
    # An evicted tree comes back on the next use.
    cache.forget(b)
    assert _files(cache.tree_for(b))["css/style.css"] == zips.STYLE_CSS


def test_gc_evicts_the_cache_above_its_watermark(
    make_archive: ArchiveFactory, data_dir: Path
) -> None:
    archive = make_archive()
    blobs = [
        archive.put_bytes(zips.build_html_package(marker=bytes([65 + i]))).sha256 for i in range(3)
    ]
    cache = PackageCache(archive)
    for sha in blobs:
        cache.tree_for(sha)  # no watermarks in this configuration: nothing evicted
    assert len(_trees(archive)) == 3
    config = load_config(data_dir=data_dir)
    document = tomli_w.dumps(
        {
            "locations": {
                name: {
                    "kind": loc.kind,
                    "store": loc.store,
                    **(
                        {"high_watermark": _package_size() * 2, "low_watermark": 1}
                        if loc.kind == "cache"
                        else {}
                    ),
                }
                for name, loc in config.locations.items()
            }
        }
    )
    (data_dir / "safekeeper.toml").write_text(document)
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "gc"])
    assert result.exit_code == 0, result.output
    assert "evicted 3 extracted package trees" in result.stderr
    assert _trees(archive) == {}
    assert not any(cache.layout.tree(sha).exists() for sha in blobs)


@pytest.mark.parametrize(
    ("package", "code"),
    [
        (zips.build_zip({"index.html": b"ok", "../escape.txt": b"evil"}), None),
        (zips.build_zip({"index.html": b"ok", "/etc/evil": b"evil"}), None),
        (zips.build_symlink(), "symlink"),
        (zips.patch_uncompressed_size(zips.build_html_package(), "data/blob.bin", 10), None),
        (zips.build_zip({"a": b"file", "a/b": b"under a file"}), None),
        (b"not a zip at all", "bad_zip"),
    ],
    ids=["dot-dot", "absolute", "symlink", "lying-size", "file-and-dir", "not-zip"],
)
def test_unsafe_zips_stored_directly_are_refused_at_extraction(
    archive: Archive, package: bytes, code: str | None
) -> None:
    sha = archive.put_bytes(package).sha256
    cache = PackageCache(archive)
    with pytest.raises(PackageRejected) as refused:
        cache.tree_for(sha)
    if code is not None:
        assert refused.value.code == code
    assert not cache.layout.tree(sha).exists()
    assert _trees(archive) == {} and cache.extractions == 0
    root = cache.layout.root
    assert not (root.parent / "escape.txt").exists()
    assert [p.name for p in root.iterdir()] != [] and not any((root / ".tmp").iterdir())


def test_extraction_stops_at_the_size_budget(make_archive: ArchiveFactory) -> None:
    archive = make_archive(SAFEKEEPER__PACKAGES__MAX_EXTRACTED_SIZE="6000")
    big = zips.build_zip({"index.html": b"x" * 4000, "more.bin": b"y" * 4000})
    sha = archive.put_bytes(big).sha256
    with pytest.raises(PackageRejected):
        PackageCache(archive).tree_for(sha)
    assert _trees(archive) == {}


def test_no_cache_location_is_a_clear_configuration_error(tmp_path: Path) -> None:
    document = {
        "locations": {
            "inbox": {"kind": "source", "store": "file:inbox"},
            "archive": {"kind": "archive", "store": "file:archive"},
        }
    }
    (tmp_path / "safekeeper.toml").write_text(tomli_w.dumps(document))
    with Archive(load_config(data_dir=tmp_path)) as archive:
        with pytest.raises(ConfigError, match="no cache location"):
            PackageCache(archive)
        assert evict(archive, archive.clock()) == []


def test_member_bytes_match_the_zip(archive: Archive) -> None:
    data = zips.build_scorm2004(prefix="course/")
    sha = archive.put_bytes(data).sha256
    tree = PackageCache(archive).tree_for(sha)
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        expected = {i.filename: package.read(i) for i in package.infolist() if not i.is_dir()}
    assert _files(tree) == expected
