"""Bundles: export a namespace, import it elsewhere — all of it, or nothing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from sqlalchemy import func, select

from safekeeper.archive import Archive
from safekeeper.config import load_config, write_default
from safekeeper.db.models import Blob, Copy, CopyState, Package
from safekeeper.errors import BadInput, Conflict, NotFound, PackageRejected, PolicyDenied
from safekeeper.ids import parse_ref
from safekeeper.services.copies.inventory import list_refs
from safekeeper.services.deletion.holds import add_hold
from safekeeper.services.packaging.bundle_format import ZSTD_MAGIC
from safekeeper.services.packaging.bundles import export_namespace, import_bundle
from safekeeper.services.packaging.packages import put_package
from safekeeper.stores.base import CHUNK_SIZE
from safekeeper.stores.filesystem import FileStore
from safekeeper.stores.marker import MARKER_NAME
from tests.conftest import FakeClock
from tests.packages.zips import INDEX_HTML, build_html_package, build_scorm12, build_zip

OtherFactory = Callable[..., Archive]
PACKAGE_FIELDS = ("kind", "entry", "title", "member_count", "extracted_size")


@pytest.fixture
def make_other(tmp_path: Path, clock: FakeClock) -> Iterator[OtherFactory]:
    """Fresh SQLite data directories: other deployments to import into."""
    opened: list[Archive] = []

    def factory(name: str = "other", environ: dict[str, str] | None = None) -> Archive:
        directory = tmp_path / name
        write_default(directory)
        archive = Archive(load_config(data_dir=directory, environ=environ or {}), clock=clock)
        opened.append(archive)
        return archive

    yield factory
    for archive in opened:
        archive.close()


@pytest.fixture
def other(make_other: OtherFactory) -> Archive:
    return make_other()


def fill_course(archive: Archive) -> dict[str, bytes]:
    """Namespace ``course``: a SCORM package under two labels, an HTML package, plain
    blobs (one under two keys). Returns the blobs' bytes by sha256."""
    scorm = build_scorm12(title="Bundled course")
    html = build_html_package(marker=b"<!-- bundled -->")
    put_package(archive, io.BytesIO(scorm), parse_ref("course:lesson-1:draft"))
    put_package(archive, io.BytesIO(scorm), parse_ref("course:lesson-1:published"))
    put_package(archive, io.BytesIO(html), parse_ref("course:intro:draft"))
    archive.put_bytes(b"alpha", ref="course:assets/a.txt")
    archive.put_bytes(b"alpha", ref="course:assets/copy-of-a.txt:v2")
    archive.put_bytes(b"", ref="course:assets/empty")
    archive.put_bytes(b"elsewhere", ref="other-namespace:x")
    return {hashlib.sha256(d).hexdigest(): d for d in (scorm, html, b"alpha", b"")}


def refs_of(archive: Archive, namespace: str) -> list[tuple[str, str, str]]:
    return [(r.key, r.label, r.blob) for r in list_refs(archive, namespace)]


def packages_of(archive: Archive) -> dict[str, tuple[object, ...]]:
    with archive.db.read() as session:
        rows = session.execute(select(Blob.sha256, Package).join(Package))
        return {sha: tuple(getattr(p, f) for f in PACKAGE_FIELDS) for sha, p in rows}


def blob_count(archive: Archive) -> int:
    with archive.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Blob)) or 0)


def stored_files(archive: Archive) -> list[Path]:
    """Every file under the data directory's stores and its spool area, temp areas
    included."""
    return sorted(
        p
        for name in [*archive.config.locations, ".tmp"]
        if (root := archive.config.data_dir / name).exists()
        for p in root.rglob("*")
        if p.is_file() and p.name != MARKER_NAME  # a store's identity, not its content
    )


def test_export_import_into_another_data_directory(
    archive: Archive, other: Archive, tmp_path: Path
) -> None:
    content = fill_course(archive)
    bundle = tmp_path / "course.tar"
    seen: list[tuple[int, int]] = []
    exported = export_namespace(archive, "course", bundle, lambda d, t: seen.append((d, t)))
    assert (exported.references, exported.blobs, exported.packages) == (6, 4, 2)
    assert seen[-1] == (sum(len(d) for d in content.values()),) * 2
    assert not bundle.with_name("course.tar.partial").exists()

    with tarfile.open(bundle) as tar:  # a plain tar any tool reads
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert names[0] == "manifest.json"
    assert sorted(names[1:]) == sorted(f"blobs/{sha}" for sha in content)  # each blob once
    assert (manifest["format"], manifest["version"], manifest["namespace"]) == (
        "safekeeper-bundle",
        1,
        "course",
    )

    outcome = import_bundle(other, bundle)
    assert (outcome.blobs_stored, outcome.blobs_skipped, outcome.references_created) == (4, 0, 6)
    assert outcome.packages_created == 2
    for sha, data in content.items():
        assert other.read_blob(sha) == data
    assert refs_of(other, "course") == refs_of(archive, "course")
    assert packages_of(other) == packages_of(archive)
    assert refs_of(other, "other-namespace") == []


def test_imported_package_plays_without_configuration(
    archive: Archive, other: Archive, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from tests.api.accounts import add_accounts
    from tests.api.conftest import both_origins

    fill_course(archive)
    export_namespace(archive, "course", tmp_path / "b.tar")
    import_bundle(other, tmp_path / "b.tar")
    # Imported outside any tenant (as from the CLI): an admin of the new deployment
    # plays it at once; /p needs someone signed in.
    admin = add_accounts(other).headers("root")
    url = "/p/course/lesson-1/published/sco/index.html"
    with TestClient(both_origins(other), base_url="http://127.0.0.1") as client:
        assert client.get(url).status_code == 401
        launch = client.get(url, headers=admin)
        assert launch.status_code == 200 and launch.content == INDEX_HTML


def test_compressed_bundle_is_detected_by_content_not_name(
    archive: Archive, other: Archive, tmp_path: Path
) -> None:
    content = fill_course(archive)
    bundle = tmp_path / "course.tar.zst"
    export_namespace(archive, "course", bundle)
    assert bundle.read_bytes()[:4] == ZSTD_MAGIC
    renamed = bundle.rename(tmp_path / "misleading.tar")
    outcome = import_bundle(other, renamed, into="copy")
    assert outcome.blobs_stored == len(content)
    assert [(k, lbl) for k, lbl, _ in refs_of(other, "copy")] == [
        (k, lbl) for k, lbl, _ in refs_of(archive, "course")
    ]


def test_export_and_import_through_streams(archive: Archive, other: Archive) -> None:
    fill_course(archive)
    sink = io.BytesIO()
    export_namespace(archive, "course", sink, compress=True)
    outcome = import_bundle(other, io.BytesIO(sink.getvalue()))
    assert outcome.references == 6 and refs_of(other, "course") == refs_of(archive, "course")


@pytest.fixture
def course_bundle(make_other: OtherFactory, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A bundle exported from a separate data directory, and its blobs."""
    source = make_other("source")
    content = fill_course(source)
    bundle = tmp_path / "course.tar"
    export_namespace(source, "course", bundle)
    return bundle, content


def assert_nothing_imported(archive: Archive, blobs_before: int, files_before: list[Path]) -> None:
    assert refs_of(archive, "course") == []
    assert blob_count(archive) == blobs_before
    assert packages_of(archive) == {}
    assert stored_files(archive) == files_before  # no objects, no temp files


def test_tampered_blob_imports_nothing_and_names_the_blob(
    archive: Archive, course_bundle: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    bundle, _ = course_bundle
    with tarfile.open(bundle) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("blobs/") and m.size]
    victim = members[-1]  # the earlier blobs stage fine first: they must be discarded
    data = bytearray(bundle.read_bytes())
    data[victim.offset_data + victim.size // 2] ^= 0x01
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(bytes(data))
    before = blob_count(archive), stored_files(archive)

    with pytest.raises(BadInput, match=victim.name.removeprefix("blobs/")):
        import_bundle(archive, tampered)
    assert_nothing_imported(archive, *before)


@pytest.mark.parametrize("where", ["manifest", "blob", "after-blob", "end-marker"])
def test_truncated_bundle_imports_nothing(
    archive: Archive, course_bundle: tuple[Path, dict[str, bytes]], tmp_path: Path, where: str
) -> None:
    bundle, _ = course_bundle
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
    blobs = [m for m in members if m.name.startswith("blobs/") and m.size]
    last = members[-1]
    cut = {
        "manifest": members[0].offset_data + 10,
        "blob": blobs[-1].offset_data + blobs[-1].size // 2,
        "after-blob": blobs[-1].offset,  # a whole member missing
        "end-marker": last.offset_data + last.size + (-last.size % 512) + 100,
    }[where]
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(bundle.read_bytes()[:cut])
    before = blob_count(archive), stored_files(archive)

    with pytest.raises(BadInput, match=r"truncated|ends before") as error:
        import_bundle(archive, truncated)
    if where in ("blob", "after-blob"):
        assert blobs[-1].name.removeprefix("blobs/") in str(error.value)
    assert_nothing_imported(archive, *before)


def test_truncated_compressed_bundle_imports_nothing(
    archive: Archive, make_other: OtherFactory, tmp_path: Path
) -> None:
    source = make_other("source")
    fill_course(source)
    bundle = tmp_path / "course.tar.zst"
    export_namespace(source, "course", bundle)
    data = bundle.read_bytes()
    before = blob_count(archive), stored_files(archive)
    for cut in (len(data) // 2, len(data) - 40):
        (tmp_path / "cut.zst").write_bytes(data[:cut])
        with pytest.raises(BadInput, match=r"truncated|ends before|damaged"):
            import_bundle(archive, tmp_path / "cut.zst")
        assert_nothing_imported(archive, *before)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "flip.zst").write_bytes(bytes(flipped))
    with pytest.raises(BadInput):
        import_bundle(archive, tmp_path / "flip.zst")
    assert_nothing_imported(archive, *before)


def test_importing_twice_is_idempotent(
    archive: Archive, course_bundle: tuple[Path, dict[str, bytes]]
) -> None:
    bundle, content = course_bundle
    first = import_bundle(archive, bundle)
    files = stored_files(archive)
    second = import_bundle(archive, bundle)
    assert (first.blobs_stored, second.blobs_stored, second.blobs_skipped) == (4, 0, 4)
    assert (second.references_created, second.references_replaced) == (0, 0)
    assert second.references_unchanged == 6 and second.packages_created == 0
    assert stored_files(archive) == files
    assert blob_count(archive) == len(content)


def test_import_repairs_a_held_copy_that_rotted_since_it_was_hashed(
    archive: Archive, course_bundle: tuple[Path, dict[str, bytes]]
) -> None:
    """The catalog says the inbox holds the blob, but its object rotted in place (size
    and mtime kept): the import holds the good bytes and must not throw them away for
    the bad copy it is about to reference."""
    bundle, content = course_bundle
    import_bundle(archive, bundle)
    sha = next(iter(content))
    store = archive.store("inbox")
    assert isinstance(store, FileStore)
    path = store.root / store.layout.path_for_key(sha)
    before = path.stat()
    path.chmod(0o644)
    path.write_bytes(bytes(b ^ 0xFF for b in content[sha]))
    path.chmod(0o444)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    again = import_bundle(archive, bundle)
    assert (again.blobs_stored, again.blobs_skipped) == (1, len(content) - 1)
    assert path.read_bytes() == content[sha]
    for blob, data in content.items():
        assert archive.read_blob(blob) == data


def test_import_replaces_conflicting_references_like_ref_set(
    archive: Archive, course_bundle: tuple[Path, dict[str, bytes]], clock: FakeClock
) -> None:
    bundle, _ = course_bundle
    old = archive.put_bytes(b"local version", ref="course:assets/a.txt")
    archive.put_bytes(b"kept", ref="course:local-only")
    outcome = import_bundle(archive, bundle)
    assert (outcome.references_created, outcome.references_replaced) == (5, 1)
    refs = {(k, lbl): b for k, lbl, b in refs_of(archive, "course")}
    assert refs[("assets/a.txt", "default")] == hashlib.sha256(b"alpha").hexdigest()
    assert ("local-only", "default") in refs  # an import adds and replaces, never removes
    with archive.db.read() as session:
        replaced = session.scalar(select(Blob).where(Blob.sha256 == old.sha256))
        assert replaced is not None and replaced.unreferenced_since == clock.now


def test_hold_forbids_replacing_references(
    archive: Archive, course_bundle: tuple[Path, dict[str, bytes]]
) -> None:
    bundle, _ = course_bundle
    archive.put_bytes(b"local version", ref="course:assets/a.txt")
    add_hold(archive, "course", "litigation", "test")
    before = blob_count(archive), stored_files(archive)
    with pytest.raises(PolicyDenied, match=r"assets/a.txt"):
        import_bundle(archive, bundle)
    assert refs_of(archive, "course") == [
        ("assets/a.txt", "default", hashlib.sha256(b"local version").hexdigest())
    ]
    assert (blob_count(archive), stored_files(archive)) == before


def test_hold_allows_adding_references(
    archive: Archive, course_bundle: tuple[Path, dict[str, bytes]]
) -> None:
    bundle, _ = course_bundle
    archive.put_bytes(b"alpha", ref="course:assets/a.txt")  # the same blob: unchanged
    add_hold(archive, "course", "litigation", "test")
    outcome = import_bundle(archive, bundle)
    assert (outcome.references_created, outcome.references_unchanged) == (5, 1)


def test_bad_bundles_are_refused(archive: Archive, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(BadInput, match="not a bundle"):
        import_bundle(archive, junk)
    junk.write_bytes(b"")
    with pytest.raises(BadInput, match="not a bundle"):
        import_bundle(archive, junk)
    with pytest.raises(BadInput, match="cannot read"):
        import_bundle(archive, tmp_path / "missing.tar")

    def bundle_with(manifest: dict[str, object]) -> Path:
        path = tmp_path / "crafted.tar"
        body = json.dumps(manifest).encode()
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("manifest.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        return path

    base = {"format": "safekeeper-bundle", "version": 1, "created_at": "2026-01-01T00:00:00Z"}
    with pytest.raises(BadInput, match="version 2 is not supported"):
        import_bundle(archive, bundle_with({**base, "version": 2}))
    with pytest.raises(BadInput, match="not a safekeeper bundle"):
        import_bundle(archive, bundle_with({**base, "format": "zip"}))
    manifest = {**base, "namespace": "n", "references": [], "packages": []}
    with pytest.raises(BadInput, match=r"blobs.0.sha256"):
        import_bundle(archive, bundle_with({**manifest, "blobs": [{"sha256": "xyz", "size": 1}]}))
    missing = {"sha256": "a" * 64, "size": 3}
    with pytest.raises(BadInput, match=r"ends before blob a{64}"):
        import_bundle(archive, bundle_with({**manifest, "blobs": [missing]}))
    with pytest.raises(BadInput, match="bad namespace"):
        import_bundle(archive, junk, into="no spaces allowed")
    assert blob_count(archive) == 0


def test_export_refuses_unknown_namespace_and_leaves_no_partial_bundle(
    archive: Archive, tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="no namespace"):
        export_namespace(archive, "nothing-here", tmp_path / "x.tar")
    outcome = archive.put_bytes(b"doomed bytes", ref="ns:k")
    key = archive.key_for("inbox", outcome.sha256, 1)
    path = next(archive.config.data_dir.joinpath("inbox").rglob(key))
    path.chmod(0o644)
    path.write_bytes(b"doomed bytez")  # same size, other bytes: a corrupt copy
    with pytest.raises(Conflict, match=outcome.sha256):
        export_namespace(archive, "ns", tmp_path / "x.tar")
    assert list(tmp_path.glob("x.tar*")) == []


def test_export_checks_every_chunk_of_a_big_blob(archive: Archive, tmp_path: Path) -> None:
    """Hashing overlaps the writes chunk by chunk: a damaged byte deep inside a copy
    of several chunks still stops the export, and no bundle is left."""
    data = bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 7)
    outcome = archive.put_bytes(data, ref="ns:big")
    key = archive.key_for("inbox", outcome.sha256, 1)
    path = next(archive.config.data_dir.joinpath("inbox").rglob(key))
    path.chmod(0o644)
    damaged = bytearray(data)
    damaged[2 * CHUNK_SIZE + 5] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(Conflict, match=outcome.sha256):
        export_namespace(archive, "ns", tmp_path / "x.tar")
    assert list(tmp_path.glob("x.tar*")) == []


# -- package blobs are validated, not trusted ----------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(path: Path, manifest: dict[str, object], blobs: list[bytes]) -> Path:
    """A bundle written with ``tarfile``, saying whatever ``manifest`` says."""
    members = [("manifest.json", json.dumps(manifest).encode())]
    members += [(f"blobs/{sha(data)}", data) for data in blobs]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def rewrite_manifest(
    bundle: Path, out: Path, edit: Callable[[dict[str, object]], None]
) -> dict[str, object]:
    """Copy ``bundle`` to ``out`` with its manifest changed by ``edit``; return it."""
    with tarfile.open(bundle) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        blobs = [
            tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.name.startswith("blobs/")
        ]
    edit(manifest)
    write_bundle(out, manifest, blobs)
    return manifest


def test_package_blob_with_a_traversal_member_imports_nothing(
    archive: Archive, tmp_path: Path
) -> None:
    evil = build_zip({"index.html": INDEX_HTML, "../escape.html": b"outside the tree"})
    plain = b"an innocent blob, staged before the package"
    manifest = {
        "format": "safekeeper-bundle",
        "version": 1,
        "created_at": "2026-01-01T00:00:00Z",
        "namespace": "course",
        "references": [
            {"key": "a.txt", "label": "default", "blob": sha(plain), "size": len(plain)},
            {"key": "evil", "label": "draft", "blob": sha(evil), "size": len(evil)},
        ],
        "packages": [
            {
                "blob": sha(evil),
                "kind": "html",
                "entry": "index.html",
                "title": None,
                "member_count": 2,
                "extracted_size": len(INDEX_HTML) + 16,
            }
        ],
        "blobs": [{"sha256": sha(d), "size": len(d)} for d in (plain, evil)],
    }
    bundle = write_bundle(tmp_path / "evil.tar", manifest, [plain, evil])
    before = blob_count(archive), stored_files(archive)

    with pytest.raises(PackageRejected) as error:
        import_bundle(archive, bundle)
    assert (error.value.code, error.value.member) == ("unsafe_path", "../escape.html")
    assert sha(evil) in str(error.value) and "nothing imported" in str(error.value)
    assert_nothing_imported(archive, *before)


@pytest.mark.parametrize(
    ("field", "lie"),
    [
        ("entry", "shared/app.js"),
        ("kind", "scorm2004"),
        ("title", "Not what the package says"),
        ("member_count", 1),
        ("extracted_size", 10),
    ],
)
def test_manifest_that_misdescribes_a_package_imports_nothing(
    archive: Archive,
    course_bundle: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    field: str,
    lie: object,
) -> None:
    bundle, _ = course_bundle
    scorm = sha(build_scorm12(title="Bundled course"))

    def misdescribe(manifest: dict[str, object]) -> None:
        packages = manifest["packages"]
        assert isinstance(packages, list)
        claim = next(p for p in packages if p["blob"] == scorm)
        assert claim[field] != lie
        claim[field] = lie

    lying = tmp_path / "lying.tar"
    rewrite_manifest(bundle, lying, misdescribe)
    before = blob_count(archive), stored_files(archive)

    with pytest.raises(PackageRejected, match=rf"{scorm}.*{field}") as error:
        import_bundle(archive, lying)
    assert error.value.code == "manifest_mismatch"
    assert error.value.member == (lie if field == "entry" else None)
    assert_nothing_imported(archive, *before)


def test_package_claims_are_checked_for_blobs_already_held(
    archive: Archive, course_bundle: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    """Bytes the archive holds as plain blobs become packages only if they validate."""
    bundle, content = course_bundle
    for data in content.values():
        archive.put_bytes(data)
    lying = tmp_path / "lying.tar"

    def lie_about_every_entry(manifest: dict[str, object]) -> None:
        for claim in manifest["packages"]:  # type: ignore[attr-defined]
            claim["entry"] = "shared/style.css"

    rewrite_manifest(bundle, lying, lie_about_every_entry)
    with pytest.raises(PackageRejected, match="entry"):
        import_bundle(archive, lying)
    assert packages_of(archive) == {} and refs_of(archive, "course") == []

    outcome = import_bundle(archive, bundle)
    assert (outcome.blobs_skipped, outcome.packages_created) == (4, 2)
    entries = {fields[1] for fields in packages_of(archive).values()}
    assert entries == {"sco/index.html", "index.html"}


def test_the_importing_side_budgets_apply(
    make_other: OtherFactory, course_bundle: tuple[Path, dict[str, bytes]]
) -> None:
    bundle, _ = course_bundle
    strict = make_other("strict", {"SAFEKEEPER__PACKAGES__MAX_MEMBERS": "3"})
    before = blob_count(strict), stored_files(strict)
    with pytest.raises(PackageRejected, match="more than the 3 allowed") as error:
        import_bundle(strict, bundle)
    assert error.value.code == "too_many_members"
    assert_nothing_imported(strict, *before)


def test_a_huge_tar_header_is_refused_without_reading_it_into_memory(
    archive: Archive, tmp_path: Path
) -> None:
    # A pax header claiming 256 MiB, then 256 MiB of zeros: a few hundred KiB once
    # zstd-compressed. tarfile reads a pax header whole, so the reader must refuse it.
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 256 * 1024 * 1024
    zeros = bytes(16 * 1024 * 1024)
    path = tmp_path / "bomb.tar.zst"
    with path.open("wb") as out, zstandard.ZstdCompressor().stream_writer(out) as writer:
        writer.write(header.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(16):
            writer.write(zeros)
    del zeros
    tracemalloc.start()
    try:
        with pytest.raises(BadInput, match="tar header"):
            import_bundle(archive, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024
    assert blob_count(archive) == 0


def test_export_of_a_blob_without_a_present_copy_writes_nothing(archive: Archive) -> None:
    archive.put_bytes(b"first", ref="ns:a")
    lost = archive.put_bytes(b"lost", ref="ns:b").sha256
    with archive.db.write() as session:
        blob_id = session.scalar(select(Blob.id).where(Blob.sha256 == lost))
        for copy in session.scalars(select(Copy).where(Copy.blob_id == blob_id)):
            copy.state = CopyState.MISSING
    out = io.BytesIO()
    with pytest.raises(NotFound, match=f"no readable copy of blob {lost}"):
        export_namespace(archive, "ns", out)
    assert out.getvalue() == b""  # refused before a byte of a stream was written


def _zstd_tar(path: Path, members: list[tuple[str, int, Callable[[], Iterator[bytes]]]]) -> None:
    """A zstd-compressed tar written member by member (bodies from generators)."""
    with path.open("wb") as out, zstandard.ZstdCompressor().stream_writer(out) as writer:
        for name, size, body in members:
            info = tarfile.TarInfo(name)
            info.size = size
            writer.write(info.tobuf(tarfile.PAX_FORMAT))
            written = 0
            for piece in body():
                writer.write(piece)
                written += len(piece)
            writer.write(b"\0" * (-written % tarfile.BLOCKSIZE))
        writer.write(b"\0" * 2 * tarfile.BLOCKSIZE)


def test_a_manifest_of_empty_objects_is_refused_before_parsing(
    archive: Archive, tmp_path: Path
) -> None:
    """32 MiB of ``[{},{},…]`` (a few KiB compressed) took the server to 1 GB: now it is
    refused while its bytes are still one buffer."""
    size = 32 * 1024 * 1024
    body = b"[" + b"{}," * ((size - 3) // 3) + b"{}]"
    path = tmp_path / "manifest-bomb.tar.zst"
    _zstd_tar(path, [("manifest.json", len(body), lambda: iter([body]))])
    assert path.stat().st_size < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(BadInput, match="too many values"):
            import_bundle(archive, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * size  # the manifest's bytes and one stripped copy, no objects
    assert blob_count(archive) == 0


def test_zeros_after_the_end_of_archive_are_not_unpacked(
    archive: Archive, other: Archive, tmp_path: Path
) -> None:
    """200 MiB of zeros after the end-of-archive marker (6.7 KB compressed) cost 1.9 s
    of CPU; now reading stops after the tar's last record."""
    fill_course(archive)
    plain = tmp_path / "course.tar"
    export_namespace(archive, "course", plain)
    path = tmp_path / "trailing.tar.zst"
    zeros = bytes(16 * 1024 * 1024)
    with path.open("wb") as out, zstandard.ZstdCompressor().stream_writer(out) as writer:
        writer.write(plain.read_bytes())
        for _ in range(200 // 16):
            writer.write(zeros)
    before = blob_count(other), stored_files(other)
    import time

    started = time.process_time()
    with pytest.raises(BadInput, match="after its end-of-archive marker"):
        import_bundle(other, path)
    assert time.process_time() - started < 1.0
    assert_nothing_imported(other, *before)


def test_a_blob_that_unpacks_far_beyond_its_compressed_size_is_refused(
    other: Archive, tmp_path: Path
) -> None:
    """A manifest may declare a 1 GiB blob of zeros: a few KiB of zstd. Unpacking stops
    once it passes the allowed ratio (after the first 64 MiB), and nothing is kept."""
    size = 1024 * 1024 * 1024
    zeros = bytes(16 * 1024 * 1024)
    sha = hashlib.sha256()
    for _ in range(size // len(zeros)):
        sha.update(zeros)
    digest = sha.hexdigest()
    manifest = json.dumps(
        {
            "format": "safekeeper-bundle",
            "version": 1,
            "created_at": "2026-01-01T00:00:00Z",
            "namespace": "zeros",
            "references": [{"key": "z", "label": "default", "blob": digest, "size": size}],
            "packages": [],
            "blobs": [{"sha256": digest, "size": size}],
        }
    ).encode()
    path = tmp_path / "ratio.tar.zst"
    _zstd_tar(
        path,
        [
            ("manifest.json", len(manifest), lambda: iter([manifest])),
            (f"blobs/{digest}", size, lambda: (zeros for _ in range(size // len(zeros)))),
        ],
    )
    assert path.stat().st_size < 1024 * 1024
    before = blob_count(other), stored_files(other)
    with pytest.raises(BadInput, match="decompression bomb"):
        import_bundle(other, path)
    assert_nothing_imported(other, *before)
