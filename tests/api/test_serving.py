"""Serving package members over HTTP: types, ETag/304, Range/206/416, HEAD, cache
headers, JSON 404s, a rebuild from an S3 copy, one extraction for 100 first requests,
and who may play what (401 without credentials; other tenants' packages are 404s).

``client`` is signed in as an admin (``root``, bearer token), who may play every
package, including those stored from the CLI (namespaces without a tenant)."""

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

from safekeeper.api.packages import exact_member as _exact_member
from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import AuditEntry, Blob, CopyState, Package, Tenant
from safekeeper.db.refs import ensure_namespace
from safekeeper.engine.embedded import run_due
from safekeeper.ids import parse_ref
from safekeeper.services.access import accounts, sessions
from safekeeper.services.copies import inventory, replication
from safekeeper.services.copies.verify import verify
from tests.api.accounts import Accounts, accounts_fixture, add_accounts, login  # noqa: F401
from tests.api.conftest import both_origins
from tests.conftest import ArchiveFactory, FakeClock
from tests.packages import zips
from tests.servers import S3Server
from tests.util import free_port


def put_package(archive: Archive, data: bytes, ref: str, tenant: str | None = None) -> str:
    """Store a package under ``ref``; with ``tenant``, its namespace belongs to that
    tenant (otherwise it has none, like one made from the CLI: admins only)."""
    from safekeeper.services.packaging.packages import put_package as put

    spec = parse_ref(ref)
    if tenant is not None:
        with archive.db.write() as session:
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
            ensure_namespace(session, spec.namespace, archive.clock()).tenant_id = tenant_id
    return put(archive, io.BytesIO(data), spec).sha256


@pytest.fixture
def client(app_archive: Archive, accounts: Accounts) -> Iterator[TestClient]:
    """Follows ``/p`` redirects to the package origin, like a browser."""
    app = both_origins(app_archive)
    with TestClient(app, base_url="http://127.0.0.1", headers=accounts.headers("root")) as signed:
        yield signed


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
    # private: whether a caller may read it depends on who they are (no shared caches).
    assert response.headers["cache-control"] == "private, max-age=31536000, immutable"
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
    for header in ("bytes=abc", "items=0-1", "bytes=0-1,5-6", "bytes=5-3", "bytes=\xb2-"):
        response = client.get(url, headers={"Range": header.encode("latin-1")})
        assert (response.status_code, response.content) == (200, data), header
    # Positions past int()'s 4,300 digits: beyond any member, not a 500.
    huge = "9" * 5000
    tail = client.get(url, headers={"Range": f"bytes=4000-{huge}"})
    assert tail.status_code == 206 and tail.content == data[4000:]
    assert client.get(url, headers={"Range": f"bytes=-{huge}"}).content == data
    for header in (f"bytes={huge}-", "bytes=-0"):
        assert client.get(url, headers={"Range": header}).status_code == 416, header
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
        assert response.headers["cache-control"] == "private, max-age=31536000, immutable"
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
        f"/p/blob/{html_blob}/{'a' * 300}": "no_such_member",  # not ENAMETOOLONG → 500
        f"/p/blob/{html_blob}/{'a/' * 2100}x": "no_such_member",
        f"/p/blob/{html_blob}/css%2Fstyle.css%00": "no_such_member",
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
    # Overlong paths are answered without being remembered (a client could fill the memo).
    remembered = _exact_member.cache_info().currsize
    for n in range(3):
        response = client.get(f"/p/blob/{html_blob}/{n}{'x' * 2000}")
        assert response.json()["code"] == "no_such_member"
    assert _exact_member.cache_info().currsize == remembered


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
    admin = add_accounts(archive).headers("root")
    with TestClient(both_origins(archive), base_url="http://127.0.0.1", headers=admin) as client:
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
def served(tmp_path: Path, data_dir: Path) -> Iterator[tuple[str, Archive, str, dict[str, str]]]:
    """A real ``safekeeper serve`` process on a data dir holding one package of tenant
    ``acme``, and the headers of its member ``alice``."""
    archive = Archive(load_config(data_dir=data_dir))
    alice = add_accounts(archive).headers("alice")
    sha = put_package(archive, zips.build_scorm2004(), "courses:concurrent", tenant="acme")
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
        yield base, archive, sha, alice
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
        archive.close()


@pytest.mark.slow
def test_100_concurrent_first_requests_cause_one_extraction(
    served: tuple[str, Archive, str, dict[str, str]],
) -> None:
    base, archive, sha, alice = served
    start = threading.Barrier(100)
    results: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def fetch(url: str) -> None:
        start.wait()
        try:
            # /p answers a redirect to a capability URL on the package origin (port + 1).
            response = httpx.get(url, headers=alice, timeout=60, follow_redirects=True)
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


# -- who may play what --------------------------------------------------------------

ACME_REF_URL = "/p/acme-courses/intro/default/index.html"


@pytest.fixture
def tenancy(archive: Archive) -> Iterator[tuple[TestClient, Accounts, str]]:
    """On SQLite and PostgreSQL: a package of tenant ``acme`` (``acme-courses:intro``),
    the accounts of tests/api/accounts.py, and a client with no credentials."""
    made = add_accounts(archive)
    sha = put_package(
        archive, zips.build_html_package(marker=b"acme"), "acme-courses:intro", tenant="acme"
    )
    with TestClient(both_origins(archive), base_url="http://127.0.0.1") as client:
        yield client, made, sha


def test_package_urls_answer_401_without_valid_credentials(
    tenancy: tuple[TestClient, Accounts, str],
) -> None:
    client, _, sha = tenancy
    urls = [
        ACME_REF_URL,
        f"/p/blob/{sha}/index.html",
        "/p/nowhere/home/default/index.html",
        f"/p/blob/{'0' * 64}/index.html",
    ]
    credentials = {
        "unauthenticated": [
            {},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": "Basic x"},
        ],
        "session_revoked": [{"Cookie": "sk_session=not-a-session"}],
    }
    for code, variants in credentials.items():
        for headers in variants:
            # The same answer the API gives for the same credentials.
            api = client.get("/api/auth/session", headers=headers)
            assert (api.status_code, api.json()["code"]) == (401, code), headers
            for url in urls:
                response = client.get(url, headers=headers)
                assert (response.status_code, response.json()["code"]) == (401, code), url
                assert b"acme" not in response.content


def test_a_member_plays_their_tenants_packages_and_no_other_tenants(
    tenancy: tuple[TestClient, Accounts, str],
) -> None:
    client, made, sha = tenancy
    blob_url = f"/p/blob/{sha}/index.html"
    for url in (ACME_REF_URL, blob_url):
        response = client.get(url, headers=made.headers("alice"))
        assert response.status_code == 200, url
        assert response.content.endswith(b"acme")
    # Asked right after alice (her tenant's answers are remembered for a second), olga
    # of tenant "other" gets exactly what a package that does not exist answers.
    olga = made.headers("olga")
    by_ref = client.get(ACME_REF_URL, headers=olga)
    assert (by_ref.status_code, by_ref.json()) == (404, _no_reference("acme-courses"))
    missing_ref = client.get("/p/no-such-ns/intro/default/index.html", headers=olga)
    assert (missing_ref.status_code, missing_ref.json()) == (404, _no_reference("no-such-ns"))
    by_blob = client.get(blob_url, headers=olga)
    assert (by_blob.status_code, by_blob.json()) == (404, _not_a_package(sha))
    missing_blob = client.get(f"/p/blob/{'0' * 64}/index.html", headers=olga)
    assert (missing_blob.status_code, missing_blob.json()) == (404, _not_a_package("0" * 64))
    assert by_ref.headers.keys() == missing_ref.headers.keys()
    assert by_ref.headers["content-type"] == missing_ref.headers["content-type"]
    # An operator of the other tenant is scoped like a member.
    assert client.get(blob_url, headers=made.headers("otto")).status_code == 404
    # Conditional and ranged requests reveal nothing either.
    etag = client.get(blob_url, headers=made.headers("alice")).headers["etag"]
    for headers in ({"If-None-Match": etag}, {"Range": "bytes=0-0"}):
        assert client.get(blob_url, headers=olga | headers).status_code == 404


def test_a_nul_in_a_reference_url_is_a_404_on_both_databases(
    tenancy: tuple[TestClient, Accounts, str],
) -> None:
    client, made, _ = tenancy
    for user in ("root", "alice"):
        for url in (
            "/p/acme%00/intro/default/index.html",
            "/p/acme-courses/in%00tro/default/index.html",
        ):
            response = client.get(url, headers=made.headers(user))
            assert (response.status_code, response.json()["code"]) == (404, "not_found"), url


def _no_reference(namespace: str) -> dict[str, str]:
    message = f"no reference in {namespace!r} matches 'intro/default/index.html' as KEY/LABEL/PATH"
    return {"code": "not_found", "message": message}


def _not_a_package(sha256: str) -> dict[str, str]:
    return {"code": "not_a_package", "message": f"blob {sha256} is not a stored package"}


def test_a_blob_two_tenants_reference_plays_for_both(
    tenancy: tuple[TestClient, Accounts, str], archive: Archive
) -> None:
    client, made, sha = tenancy
    same = put_package(
        archive, zips.build_html_package(marker=b"acme"), "other-courses:copy", tenant="other"
    )
    assert same == sha  # stored once, referenced from both tenants
    for user in ("alice", "olga"):
        response = client.get(f"/p/blob/{sha}/index.html", headers=made.headers(user))
        assert response.status_code == 200 and response.content.endswith(b"acme"), user
    assert client.get(ACME_REF_URL, headers=made.headers("olga")).status_code == 404
    olga_url = "/p/other-courses/copy/default/index.html"
    assert client.get(olga_url, headers=made.headers("olga")).status_code == 200
    assert client.get(olga_url, headers=made.headers("alice")).status_code == 404


def test_an_admin_plays_every_tenants_packages_and_cli_ones(
    tenancy: tuple[TestClient, Accounts, str], archive: Archive
) -> None:
    client, made, sha = tenancy
    other = put_package(
        archive, zips.build_html_package(marker=b"other"), "other-courses:x", tenant="other"
    )
    cli = put_package(archive, zips.build_html_package(marker=b"cli"), "cli-courses:x")
    root = made.headers("root")
    for url, marker in {
        ACME_REF_URL: b"acme",
        f"/p/blob/{sha}/index.html": b"acme",
        "/p/other-courses/x/default/index.html": b"other",
        f"/p/blob/{other}/index.html": b"other",
        "/p/cli-courses/x/default/index.html": b"cli",
        f"/p/blob/{cli}/index.html": b"cli",
    }.items():
        response = client.get(url, headers=root)
        assert response.status_code == 200 and response.content.endswith(marker), url
    # A namespace without a tenant is an admin's only.
    alice = made.headers("alice")
    assert client.get("/p/cli-courses/x/default/index.html", headers=alice).status_code == 404
    assert client.get(f"/p/blob/{cli}/index.html", headers=alice).status_code == 404


def test_an_ended_session_is_refused_on_the_very_next_request(
    tenancy: tuple[TestClient, Accounts, str], archive: Archive, clock: FakeClock
) -> None:
    client, _, sha = tenancy
    urls = (ACME_REF_URL, f"/p/blob/{sha}/index.html")

    def codes() -> list[tuple[int, str | None]]:
        answers = [client.get(url) for url in urls]
        return [
            (a.status_code, a.json()["code"] if a.status_code != 200 else None) for a in answers
        ]

    login(client, "alice")  # the cookie the dashboard's player iframe sends
    assert codes() == [(200, None), (200, None)]
    sessions.end_user_sessions(archive, [accounts.user_id_of(archive, "alice")])
    assert codes() == [(401, "session_revoked")] * 2

    login(client, "alice")
    assert codes() == [(200, None), (200, None)]
    accounts.set_disabled(archive, "alice", True)
    assert codes() == [(401, "session_revoked")] * 2
    accounts.set_disabled(archive, "alice", False)

    login(client, "alice")
    assert codes() == [(200, None), (200, None)]
    clock.advance(seconds=archive.config.server.session_idle_timeout.total_seconds() + 1)
    assert codes() == [(401, "session_expired"), (401, "session_revoked")]
