"""put_package / publish: validated zips under draft and published references."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from safekeeper.archive import Archive
from safekeeper.db.models import Blob, Package
from safekeeper.engine.embedded import run_due
from safekeeper.errors import NotFound, PackageRejected, PolicyDenied, TooLarge
from safekeeper.ids import RefSpec
from safekeeper.services.copies import inventory, replication
from safekeeper.services.deletion import gc, holds
from safekeeper.services.packaging import packages
from safekeeper.services.packaging.packages import package_ref, publish, put_package
from tests.conftest import ArchiveFactory, FakeClock
from tests.packages import zips

DRAFT = RefSpec("course", "intro", "draft")
PUBLISHED = RefSpec("course", "intro", "published")


def _put(archive: Archive, data: bytes, ref: RefSpec = DRAFT) -> packages.PackageOutcome:
    return put_package(archive, io.BytesIO(data), ref)


def _count(archive: Archive, model: type[Blob] | type[Package]) -> int:
    with archive.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _objects(archive: Archive) -> list[str]:
    return sorted(
        f"{name}:{info.key}"
        for name in archive.config.locations
        for info in archive.store(name).list()
    )


def _ref_blob(archive: Archive, spec: RefSpec) -> str:
    return inventory.resolve_blob(archive, str(spec))


def _temp_files(archive: Archive) -> list[Path]:
    temp_dir = archive.config.data_dir / ".tmp"
    return list(temp_dir.iterdir()) if temp_dir.exists() else []


def test_put_package_stores_blob_package_row_and_reference(archive: Archive) -> None:
    data = zips.build_scorm2004()
    outcome = _put(archive, data)
    assert outcome.stored and (outcome.kind, outcome.entry) == ("scorm2004", "content/launch.html")
    assert b"".join(inventory.open_blob(archive, outcome.sha256)) == data
    assert _ref_blob(archive, DRAFT) == outcome.sha256
    view = packages.package_info(archive, "course:intro")  # label default: draft
    assert (view.sha256, view.kind, view.entry, view.title) == (
        outcome.sha256,
        "scorm2004",
        "content/launch.html",
        "Demo SCORM 2004",
    )
    assert view.member_count == 7 and view.references == ["course:intro:draft"]
    assert _temp_files(archive) == []


def test_the_same_zip_twice_is_one_blob_and_one_package_row(archive: Archive) -> None:
    data = zips.build_html_package()
    first = _put(archive, data)
    second = _put(archive, data, RefSpec("other", "copy", "draft"))
    assert first.sha256 == second.sha256 and first.stored and not second.stored
    assert (_count(archive, Blob), _count(archive, Package)) == (1, 1)
    listed = packages.list_packages(archive)
    assert [(p.ref, p.kind, p.entry) for p in listed] == [
        ("course:intro:draft", "html", "index.html"),
        ("other:copy:draft", "html", "index.html"),
    ]
    assert [p.ref for p in packages.list_packages(archive, "other")] == ["other:copy:draft"]


def test_put_package_reads_a_path(archive: Archive, tmp_path: Path) -> None:
    path = tmp_path / "course.zip"
    zips.build_scorm12(path)
    assert put_package(archive, path, DRAFT).entry == "sco/index.html"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (zips.build_symlink(), "symlink_member"),
        (zips.with_manifest(zips.EXTERNAL_ENTITY), "manifest_unsafe"),
        (b"not a zip at all", "not_a_zip"),
    ],
    ids=["symlink", "xxe", "not-a-zip"],
)
def test_a_rejected_upload_stores_nothing(archive: Archive, data: bytes, code: str) -> None:
    with pytest.raises(PackageRejected) as caught:
        _put(archive, data)
    assert caught.value.code == code
    assert (_count(archive, Blob), _count(archive, Package)) == (0, 0)
    assert _objects(archive) == []
    assert _temp_files(archive) == []
    assert inventory.list_refs(archive) == []


def test_a_failed_reupload_leaves_the_previous_package_intact(archive: Archive) -> None:
    good = _put(archive, zips.build_scorm12())
    objects = _objects(archive)
    with pytest.raises(PackageRejected):
        _put(archive, zips.patch_uncompressed_size(zips.build_html_package(), "index.html", 3))
    assert _ref_blob(archive, DRAFT) == good.sha256
    assert packages.package_info(archive, good.sha256).entry == "sco/index.html"
    assert _objects(archive) == objects
    assert (_count(archive, Blob), _count(archive, Package)) == (1, 1)


def test_package_row_commits_with_the_reference_or_not_at_all(archive: Archive) -> None:
    first = _put(archive, zips.build_html_package(marker=b"1"))
    holds.add_hold(archive, "course", "audit", "legal")
    with pytest.raises(PolicyDenied):
        _put(archive, zips.build_html_package(marker=b"2"))  # replacing a held reference
    assert _count(archive, Package) == 1
    assert _ref_blob(archive, DRAFT) == first.sha256


def test_upload_larger_than_the_limit_is_refused(make_archive: ArchiveFactory) -> None:
    archive = make_archive(SAFEKEEPER__SERVER__MAX_UPLOAD_SIZE="1000")
    with pytest.raises(TooLarge):
        _put(archive, zips.build_html_package())
    assert _count(archive, Blob) == 0 and _temp_files(archive) == []


def test_publish_needs_a_draft(archive: Archive) -> None:
    with pytest.raises(NotFound, match="no draft"):
        publish(archive, "course", "intro")
    outcome = _put(archive, zips.build_scorm12())
    published = publish(archive, "course", "intro")
    assert (published.sha256, published.previous) == (outcome.sha256, None)
    assert _ref_blob(archive, PUBLISHED) == outcome.sha256


def test_package_ref_defaults_to_draft() -> None:
    assert package_ref("course:intro") == DRAFT
    assert package_ref("course:intro:published") == PUBLISHED


def _replicate(archive: Archive) -> None:
    replication.replication_pass(archive)
    run_due(archive)


def test_only_one_draft_and_one_published_survive(archive: Archive, clock: FakeClock) -> None:
    """The garbage rule alone removes replaced drafts once the grace period is over."""
    v1 = _put(archive, zips.build_html_package(marker=b"v1")).sha256
    publish(archive, "course", "intro")
    v2 = _put(archive, zips.build_html_package(marker=b"v2")).sha256
    v3 = _put(archive, zips.build_html_package(marker=b"v3")).sha256  # v2 is unreferenced now
    _replicate(archive)
    gc.run_gc(archive)  # frees inbox copies that are archived; v2 is still in its grace
    assert inventory.stat_blob(archive, v2).copies != []

    clock.advance(seconds=archive.config.policy.grace_period.total_seconds() + 1)
    gc.run_gc(archive)
    assert inventory.stat_blob(archive, v2).copies == []
    assert _ref_blob(archive, PUBLISHED) == v1 and _ref_blob(archive, DRAFT) == v3
    for kept in (v1, v3):
        assert [c.state for c in inventory.stat_blob(archive, kept).copies] == ["present"]
        assert b"".join(inventory.open_blob(archive, kept))

    publish(archive, "course", "intro")  # v1 is replaced and becomes garbage in turn
    clock.advance(seconds=archive.config.policy.grace_period.total_seconds() + 1)
    gc.run_gc(archive)
    assert inventory.stat_blob(archive, v1).copies == []
    live = {
        blob.sha256
        for blob in inventory.list_all_blobs(archive)
        if inventory.stat_blob(archive, blob.sha256).copies
    }
    assert live == {v3}
