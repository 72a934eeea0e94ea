"""Serving package members over HTTP: types, ETag/304, Range/206/416, HEAD, cache
headers, JSON 404s, a rebuild from an S3 copy, and one extraction for 100 first requests."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from safekeeper.api.app import create_app
from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import AuditEntry, Blob, CopyState, Package
from safekeeper.engine.embedded import run_due
from safekeeper.ids import parse_ref
from safekeeper.services import inventory, replication
from safekeeper.services.verify import verify
from tests.conftest import ArchiveFactory
from tests.packages import zips
from tests.servers import S3Server
from tests.util import free_port


def put_package(archive: Archive, data: bytes, ref: str) -> str:
    from safekeeper.services.packages import put_package as put

    return put(archive, io.BytesIO(data), parse_ref(ref)).sha256


def _entry(archive: Archive, sha256: str) -> str:
    with archive.db.read() as session:
        entry = session.scalar(
            select(Package.entry)
            .join(Blob, Blob.id == Package.blob_id)
            .where(Blob.sha256 == sha256)
        )
    assert entry is not None
    return entry


def _extractions(archive: Archive) -> int:
    with archive.db.read() as session:
        query = select(func.count()).where(AuditEntry.action == "cache-extract")
        return int(session.scalar(query) or 0)


TYPES = {
    "shared/style.css": ("text/css; charset=utf-8", zips.STYLE_CSS),
    "shared/app.js": ("text/javascript; charset=utf-8", zips.APP_JS),
    "shared/logo.png": ("image/png", zips.PNG_1X1),
    "shared/blob.bin": ("application/octet-stream", zips.ASSET_4K),
}


def test_scorm12_launch_page_and_assets_by_reference(
    client: TestClient, app_archive: Archive
) -> None:
    # Keys may contain slashes: the split with the shortest key that exists wins.
    sha = put_package(app_archive, zips.build_scorm12(), "courses:2026/intro:v1")
    assert _entry(app_archive, sha) == "sco/index.html"
    base = "/p/courses/2026/intro/v1"
    launch = client.get(f"{base}/sco/index.html")
    assert launch.status_code == 200
    assert launch.content == zips.INDEX_HTML
    assert launch.headers["content-type"] == "text/html; charset=utf-8"
    assert launch.headers["cache-control"] == "no-cache"  # a reference can move
    assert launch.headers["x-content-type-options"] == "nosniff"
    assert launch.headers["accept-ranges"] == "bytes"
    assert launch.headers["etag"].startswith(f'"{sha}-')
    assert launch.headers["last-modified"].endswith(" GMT")
    for path, (kind, data) in TYPES.items():
        response = client.get(f"{base}/{path}")
        assert (response.status_code, response.headers["content-type"]) == (200, kind), path
        assert response.content == data
    manifest = client.get(f"{base}/imsmanifest.xml")
    assert manifest.headers["content-type"] == "application/xml; charset=utf-8"


def test_scorm2004_by_blob_url_is_cacheable_forever(
    client: TestClient, app_archive: Archive
) -> None:
    sha = put_package(app_archive, zips.build_scorm2004(), "courses:advanced")
    entry = _entry(app_archive, sha)
    assert entry == "content/launch.html"
    response = client.get(f"/p/blob/{sha}/{entry}")
    assert response.status_code == 200 and response.content == zips.INDEX_HTML
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    # Same content by reference: same validator, different caching.
    by_ref = client.get(f"/p/courses/advanced/default/{entry}")
    assert by_ref.headers["etag"] == response.headers["etag"]
    assert by_ref.headers["cache-control"] == "no-cache"
    # Different members, different validators.
    other = client.get(f"/p/blob/{sha}/other/index.html")
    assert other.status_code == 200 and other.headers["etag"] != response.headers["etag"]


def test_plain_html_package(client: TestClient, app_archive: Archive) -> None:
    sha = put_package(app_archive, zips.build_html_package(), "site:home")
    assert _entry(app_archive, sha) == "index.html"
    assert client.get("/p/site/home/default/index.html").content == zips.INDEX_HTML
    css = client.get(f"/p/blob/{sha}/css/style.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert client.get(f"/p/blob/{sha}/img/logo.png").headers["content-type"] == "image/png"


@pytest.fixture
def html_blob(app_archive: Archive) -> str:
    return put_package(app_archive, zips.build_html_package(), "site:home")


def test_ranges(client: TestClient, html_blob: str) -> None:
    url = f"/p/blob/{html_blob}/data/blob.bin"
    data = zips.ASSET_4K
    cases = {
        "bytes=0-99": (0, 99),
        "bytes=4000-": (4000, 4095),
        "bytes=-100": (3996, 4095),
        "bytes=100-99999": (100, 4095),
    }
    for header, (first, last) in cases.items():
        response = client.get(url, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.headers["content-range"] == f"bytes {first}-{last}/4096"
        assert response.content == data[first : last + 1]
        assert response.headers["content-length"] == str(last - first + 1)
    unsatisfiable = client.get(url, headers={"Range": "bytes=4096-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == "bytes */4096"
    # A malformed range or several ranges: the whole member (RFC 9110 allows ignoring).
    for header in ("bytes=abc", "items=0-1", "bytes=0-1,5-6"):
        response = client.get(url, headers={"Range": header})
        assert (response.status_code, response.content) == (200, data), header
    etag = client.get(url).headers["etag"]
    matching = client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert matching.status_code == 206 and matching.content == data[:10]
    stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"something-else"'})
    assert stale.status_code == 200 and stale.content == data


def test_conditional_requests(client: TestClient, html_blob: str) -> None:
    url = f"/p/blob/{html_blob}/index.html"
    first = client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"nope", W/{etag}'},
        {"If-None-Match": "*"},
        {"If-Modified-Since": modified},
        {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
    ):
        response = client.get(url, headers=headers)
        assert response.status_code == 304, headers
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    for headers in (
        {"If-None-Match": '"nope"'},
        # If-None-Match wins over a matching If-Modified-Since.
        {"If-None-Match": '"nope"', "If-Modified-Since": modified},
        {"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
        {"If-Modified-Since": "not a date"},
    ):
        response = client.get(url, headers=headers)
        assert (response.status_code, response.content) == (200, zips.INDEX_HTML), headers


def test_head(client: TestClient, html_blob: str) -> None:
    response = client.head(f"/p/blob/{html_blob}/data/blob.bin")
    assert response.status_code == 200
    assert response.headers["content-length"] == "4096"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b""
    ranged = client.head(f"/p/blob/{html_blob}/data/blob.bin", headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.headers["content-length"] == "10"


def test_json_404s(client: TestClient, app_archive: Archive, html_blob: str) -> None:
    plain = app_archive.put_bytes(b"not a zip", ref="files:readme").sha256
    cases = {
        f"/p/blob/{html_blob}/missing.html": "no_such_member",
        f"/p/blob/{html_blob}/css": "no_such_member",  # a directory, not a member
        f"/p/blob/{html_blob}/css//style.css": "no_such_member",  # not the exact path
        f"/p/blob/{html_blob}/css/%2e/style.css": "no_such_member",
        f"/p/blob/{html_blob}/%2e%2e/%2e%2e/etc/passwd": "no_such_member",
        f"/p/blob/{plain}/index.html": "not_a_package",
        f"/p/blob/{'0' * 64}/index.html": "not_a_package",
        "/p/site/nothing/default/index.html": "not_found",
        "/p/nowhere/home/default/index.html": "not_found",
        "/p/site/home/index.html": "not_found",  # label "index.html", no path
        "/p/files/readme/default/index.html": "not_a_package",
    }
    for url, code in cases.items():
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["code"] == code, url
        assert response.json()["message"]


def test_a_moved_reference_serves_the_new_package(client: TestClient, app_archive: Archive) -> None:
    put_package(app_archive, zips.build_html_package(marker=b"one"), "site:home")
    assert client.get("/p/site/home/default/index.html").content.endswith(b"one")
    put_package(app_archive, zips.build_html_package(marker=b"two"), "site:home")
    time.sleep(1.1)  # reference resolutions are remembered for a second
    assert client.get("/p/site/home/default/index.html").content.endswith(b"two")


@pytest.mark.s3
def test_lost_cache_and_inbox_copy_are_rebuilt_from_the_s3_archive_copy(
    make_archive: ArchiveFactory, moto_server: S3Server
) -> None:
    bucket = moto_server.make_bucket()
    archive = make_archive(
        SAFEKEEPER__LOCATIONS__ARCHIVE__STORE=f"s3://{bucket}/packages",
        SAFEKEEPER__LOCATIONS__ARCHIVE__ENDPOINT=moto_server.endpoint,
        SAFEKEEPER__LOCATIONS__ARCHIVE__REGION=moto_server.region,
        SAFEKEEPER__LOCATIONS__ARCHIVE__ACCESS_KEY_ID=moto_server.access_key_id,
        SAFEKEEPER__LOCATIONS__ARCHIVE__SECRET_ACCESS_KEY=moto_server.secret_access_key,
        SAFEKEEPER__LOCATIONS__ARCHIVE__ALLOW_HTTP="true",
    )
    sha = put_package(archive, zips.build_scorm12(), "courses:intro")
    replication.replication_pass(archive)
    assert run_due(archive)["done"] == 1
    url = "/p/courses/intro/default/shared/blob.bin"
    with TestClient(create_app(archive), base_url="http://127.0.0.1") as client:
        assert client.get(url).content == zips.ASSET_4K
        cache_tree = next(
            Path(archive.config.store_url("cache").removeprefix("file://")).glob(f"*/{sha}")
        )
        shutil.rmtree(cache_tree)
        archive.store("inbox").delete([sha])
        assert verify(archive, location="inbox").missing == [f"{sha} at inbox"]
        states = {c.location: c.state for c in inventory.stat_blob(archive, sha).copies}
        assert states["archive"] == CopyState.PRESENT and states["inbox"] != CopyState.PRESENT
        response = client.get(url)
        assert response.status_code == 200
        assert hashlib.sha256(response.content).digest() == hashlib.sha256(zips.ASSET_4K).digest()
        assert client.get("/p/courses/intro/default/sco/index.html").content == zips.INDEX_HTML
    assert _extractions(archive) == 2


@pytest.fixture
def served(tmp_path: Path, data_dir: Path) -> Iterator[tuple[str, Archive, str]]:
    """A real ``safekeeper serve`` process on a data dir holding one package."""
    archive = Archive(load_config(data_dir=data_dir))
    sha = put_package(archive, zips.build_scorm2004(), "courses:concurrent")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "safekeeper",
            "--data-dir",
            str(data_dir),
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(
                    f"safekeeper serve did not start:\n{(tmp_path / 'serve.log').read_text()}"
                )
            time.sleep(0.1)
        yield base, archive, sha
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
        archive.close()


@pytest.mark.slow
def test_100_concurrent_first_requests_cause_one_extraction(
    served: tuple[str, Archive, str],
) -> None:
    base, archive, sha = served
    start = threading.Barrier(100)
    results: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def fetch(url: str) -> None:
        start.wait()
        try:
            response = httpx.get(url, timeout=60)
            results.append((response.status_code, response.content))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    urls = [
        f"{base}/p/blob/{sha}/content/launch.html",
        f"{base}/p/courses/concurrent/default/shared/blob.bin",
    ]
    threads = [threading.Thread(target=fetch, args=(urls[i % 2],)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted({status for status, _ in results}) == [200]
    assert {body for _, body in results} == {zips.INDEX_HTML, zips.ASSET_4K}
    assert len(results) == 100
    # Counted across the server process: one cache-extract audit row.
    assert _extractions(archive) == 1


def test_only_get_and_head(client: TestClient, html_blob: str) -> None:
    response = client.post(f"/p/blob/{html_blob}/index.html")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_a_namespace_called_blob_is_served_by_reference(
    client: TestClient, app_archive: Archive
) -> None:
    put_package(app_archive, zips.build_html_package(), "blob:site")
    assert client.get("/p/blob/site/default/index.html").content == zips.INDEX_HTML
