"""Dashboard pages in process (Starlette's TestClient): the rules a browser test would
be slow to pin down — redirects on ended sessions, CSRF on forms, roles, tenant
isolation, and the export/import and upload round trips."""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from safekeeper.api.app import create_app
from safekeeper.archive import Archive
from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Reference, Tenant, User
from safekeeper.services.access import accounts
from safekeeper.services.copies.replication import replication_pass
from safekeeper.services.operations.status import config_fingerprint, report_alive
from tests.conftest import ArchiveFactory, FakeClock
from tests.packages.zips import build_html_package, build_zip

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def password_hash() -> str:
    """Hashed once: argon2 is slow on purpose, and every test needs four users."""
    return accounts.hash_password(PASSWORD)


@pytest.fixture
def archive(make_archive: ArchiveFactory, password_hash: str) -> Archive:
    archive = make_archive()
    accounts.add_tenant(archive, "acme")
    accounts.add_tenant(archive, "globex")
    with archive.db.write() as session:
        tenants = {name: id_ for name, id_ in session.execute(select(Tenant.name, Tenant.id))}
        for name, tenant, role in [
            ("ada", "acme", "admin"),
            ("oscar", "acme", "operator"),
            ("mia", "acme", "member"),
            ("gus", "globex", "member"),
            ("otis", "globex", "operator"),
        ]:
            session.add(
                User(
                    tenant_id=tenants[tenant],
                    name=name,
                    role=role,
                    password_hash=password_hash,
                    created_at=archive.clock(),
                )
            )
    return archive


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(create_app(archive), base_url="http://127.0.0.1") as test_client:
        yield test_client


def sign_in(client: TestClient, user: str) -> str:
    """Signs in; returns the page's CSRF token."""
    answer = client.post(
        "/signin", data={"username": user, "password": PASSWORD}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/sessions").text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert match is not None
    return match.group(1)


def test_pages_need_a_session_and_say_why(client: TestClient, clock: FakeClock) -> None:
    answer = client.get("/plan", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/signin?reason=signin_required&next=/plan"

    sign_in(client, "oscar")
    assert client.get("/plan").status_code == 200
    clock.advance(hours=1)  # past the 30 min idle timeout
    answer = client.get("/plan", follow_redirects=False)
    assert answer.headers["location"].startswith("/signin?reason=session_expired")
    page = client.get(answer.headers["location"])
    assert page.status_code == 200 and "Your session expired" in page.text


def test_a_script_gets_401_json_not_a_redirect(client: TestClient) -> None:
    answer = client.get("/plan/runs/1/progress", headers={"Accept": "application/json"})
    assert answer.status_code == 401
    assert answer.json()["code"] == "signin_required"


def test_forms_need_the_csrf_token(client: TestClient) -> None:
    csrf = sign_in(client, "oscar")
    refused = client.post("/plan/run", data={"csrf_token": "0" * 64}, follow_redirects=False)
    assert refused.status_code == 403 and "did not come from this site" in refused.text
    missing = client.post("/signout", follow_redirects=False)
    assert missing.status_code == 403
    assert client.get("/plan").status_code == 200  # still signed in
    out = client.post("/signout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.headers["location"] == "/signin?reason=signed_out"
    assert client.get("/plan", follow_redirects=False).status_code == 303


def test_open_redirects_are_refused(client: TestClient) -> None:
    answer = client.post(
        "/signin",
        data={"username": "mia", "password": PASSWORD, "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/"


def test_members_get_a_friendly_403_and_admins_pages_are_theirs(client: TestClient) -> None:
    sign_in(client, "mia")
    for path in ("/locations", "/plan", "/audit", "/failures", "/admin/users"):
        answer = client.get(path)
        assert answer.status_code == 403, path
        assert "<html" in answer.text and "Not allowed" in answer.text
    assert client.get("/", follow_redirects=False).headers["location"] == "/namespaces"


def test_status_page_is_for_admins_and_shows_workers_queues_and_tasks(
    client: TestClient, archive: Archive, clock: FakeClock
) -> None:
    report_alive(archive, "host:1:worker", "worker", ["local"])
    archive.put_bytes(b"to replicate")
    (task_id, *_) = replication_pass(archive).task_ids
    with archive.db.write() as session:
        assert task_rows.claim(session, task_id, "host:1:worker", clock(), timedelta(minutes=1))
    clock.advance(seconds=5)
    for user in ("oscar", "mia"):
        sign_in(client, user)
        assert "/status" not in client.get("/sessions").text, "linked for admins only"
        answer = client.get("/status")
        assert answer.status_code == 403 and "Not allowed" in answer.text, user
    sign_in(client, "ada")
    assert 'href="/status"' in client.get("/sessions").text
    page = client.get("/status").text
    worker = re.search(r'<tr class="worker" data-name="host:1:worker".*?</tr>', page, re.S)
    assert worker is not None and "5 s ago" in worker.group(0)
    assert config_fingerprint(archive.config) in worker.group(0)
    running = re.search(rf'<tr data-task="{task_id}">.*?</tr>', page, re.S)
    assert running is not None and "transfer" in running.group(0)
    assert "5 s ago" in running.group(0)
    queue = re.search(r'<tr data-site="local">.*?</tr>', page, re.S)
    assert queue is not None and '<td class="num">1</td>' in queue.group(0)


def test_gc_from_the_dashboard_reports_progress(
    client: TestClient, archive: Archive, clock: FakeClock
) -> None:
    garbage = archive.put_bytes(b"old", ref="scratch:a").sha256
    archive.put_bytes(b"new", ref="scratch:a")
    clock.advance(days=8)
    csrf = sign_in(client, "oscar")
    assert garbage in client.get("/plan").text
    answer = client.post("/plan/run", data={"csrf_token": csrf}, follow_redirects=False)
    run_url = answer.headers["location"]
    progress: dict[str, object] = {"running": True}
    for _ in range(100):
        progress = client.get(f"{run_url}/progress").json()
        if not progress["running"]:
            break
        time.sleep(0.05)
    assert progress["deleted"] == 1 and progress["planned"] == 1 and progress["error"] is None
    audit = client.get(f"/audit?blob={garbage[:10]}&rule=garbage").text
    assert "dashboard:oscar" in audit and garbage in audit


def test_namespaces_of_another_tenant_stay_hidden(client: TestClient, archive: Archive) -> None:
    csrf = sign_in(client, "gus")
    stored = client.post(
        "/namespaces/globex.docs/upload?key=k",
        content=build_html_package(),
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert stored.status_code == 200, stored.text
    client.cookies.clear()
    csrf = sign_in(client, "mia")
    page = client.get("/namespaces/globex.docs")
    assert page.status_code == 200 and "No packages here yet" in page.text
    assert "globex.docs" not in client.get("/namespaces").text
    assert client.get("/play/globex.docs/k/draft").status_code == 404
    assert client.get("/namespaces/globex.docs/export").status_code == 404
    refused = client.post(
        "/namespaces/globex.docs/upload?key=k",
        content=build_html_package(marker=b"x"),
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    # Refused like any name outside mia's tenant, existing or not (security finding 9).
    assert refused.status_code == 403 and refused.json()["code"] == "namespace_reserved"


def test_upload_rejections_name_the_member_and_store_nothing(
    client: TestClient, archive: Archive
) -> None:
    csrf = sign_in(client, "mia")
    bad = build_zip({"index.html": b"<p>hi</p>", "../up.html": b"x"})
    answer = client.post(
        "/namespaces/acme.courses/upload?key=intro",
        content=bad,
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.json()["member"] == "../up.html"
    assert "No packages here yet" in client.get("/namespaces/acme.courses").text
    no_csrf = client.post(
        "/namespaces/acme.courses/upload?key=intro",
        content=build_html_package(),
        headers={"Accept": "application/json"},
    )
    assert no_csrf.status_code == 403


def test_export_then_import_into_another_namespace(client: TestClient) -> None:
    csrf = sign_in(client, "mia")
    uploaded = client.post(
        "/namespaces/acme.courses/upload?key=intro",
        content=build_html_package(marker=b"<p>exported</p>"),
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert uploaded.status_code == 200, uploaded.text
    published = client.post(
        "/namespaces/acme.courses/publish?key=intro",
        data={"csrf_token": csrf},
        follow_redirects=False,
    )
    assert published.headers["location"].startswith("/namespaces/acme.courses?done=published")

    bundle = client.get("/namespaces/acme.courses/export")
    assert bundle.status_code == 200
    assert bundle.headers["content-disposition"] == 'attachment; filename="acme.courses.tar"'
    with tarfile.open(fileobj=io.BytesIO(bundle.content)) as tar:
        assert any(uploaded.json()["sha256"] in name for name in tar.getnames())

    imported = client.post(
        "/namespaces/acme.courses-copy/import",
        data={"csrf_token": csrf},
        files={"bundle": ("courses.tar", bundle.content, "application/x-tar")},
        follow_redirects=False,
    )
    assert imported.status_code == 303, imported.text
    assert "imported" in imported.headers["location"]
    page = client.get("/namespaces/acme.courses-copy").text
    assert 'data-key="intro"' in page and "/play/acme.courses-copy/intro/published" in page
    play = client.get("/play/acme.courses-copy/intro/published")
    assert play.status_code == 200
    # The player on the package origin, by a capability for this viewer: never /p here.
    assert 'src="http://127.0.0.1:8471/l/' in play.text
    assert 'src="/p/' not in play.text and "/c/" not in play.text


def test_admin_adds_and_disables_users(client: TestClient) -> None:
    csrf = sign_in(client, "ada")
    short = client.post(
        "/admin/users",
        data={"csrf_token": csrf, "name": "neo", "tenant": "acme", "password": "short"},
    )
    assert short.status_code == 400 and 'id="admin-problem"' in short.text
    added = client.post(
        "/admin/users",
        data={"csrf_token": csrf, "name": "neo", "tenant": "globex", "password": PASSWORD},
    )
    assert added.status_code == 200 and 'data-user="neo"' in added.text
    disabled = client.post("/admin/users/mia/disable", data={"csrf_token": csrf})
    assert disabled.status_code == 200
    assert re.search(r'data-user="mia">.*?disabled', disabled.text, re.S)
    tenant = client.post("/admin/tenants", data={"csrf_token": csrf, "name": "initech"})
    assert 'data-tenant="initech"' in tenant.text


def _multipart(fields: dict[str, str], name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "safekeeper-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="bundle"; filename="{name}"\r\n'
        "Content-Type: application/x-tar\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_import_over_the_limit_without_content_length_is_413(
    client: TestClient, make_archive: ArchiveFactory
) -> None:
    """A chunked body declares no size: the import still refuses past the limit and
    stores nothing."""
    csrf = sign_in(client, "mia")
    uploaded = client.post(
        "/namespaces/acme.courses/upload?key=intro",
        content=build_html_package(marker=b"<p>" + b"x" * 4000 + b"</p>"),
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert uploaded.status_code == 200, uploaded.text
    bundle = client.get("/namespaces/acme.courses/export").content
    assert len(bundle) > 2048

    # The same archive, served with a 2 KiB upload limit.
    small = make_archive(**{"SAFEKEEPER__SERVER__MAX_UPLOAD_SIZE": "2KiB"})
    with TestClient(create_app(small), base_url="http://127.0.0.1") as other:
        small_csrf = sign_in(other, "mia")
        body, content_type = _multipart({"csrf_token": small_csrf}, "courses.tar", bundle)
        answer = other.post(
            "/namespaces/acme.copy/import",
            content=iter([body]),
            headers={"Content-Type": content_type},
            follow_redirects=False,
        )
        assert "content-length" not in {k.lower() for k in answer.request.headers}
        assert answer.status_code == 413, answer.text
    with small.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Reference)) == 1


def test_huge_task_ids_are_not_a_500(client: TestClient) -> None:
    csrf = sign_in(client, "oscar")
    answer = client.post(
        f"/failures/{10**30}/retry", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert answer.status_code < 500
    assert client.get(f"/plan/runs/{10**30}").status_code < 500


def test_operators_see_no_blob_or_reference_of_another_tenant(
    client: TestClient, archive: Archive
) -> None:
    """Every dashboard page taking a blob or a reference answers an operator of another
    tenant exactly as for one that does not exist (the API's rule), while the owning
    tenant's operator sees it."""
    sha = archive.put_bytes(b"acme's secret bytes", ref="acme-docs:k").sha256
    accounts.assign_namespaces(archive, "acme", ["acme-docs"])
    held = archive.put_bytes(b"acme's held bytes", ref="acme-docs:held").sha256
    from safekeeper.services.deletion.holds import add_hold

    add_hold(archive, held, reason="legal", actor="test")

    def looks(user: str) -> dict[str, tuple[int, str]]:
        client.cookies.clear()
        sign_in(client, user)
        pages = {
            "explain ref": "/plan?explain_blob=acme-docs:k:default",
            "explain id": f"/plan?explain_blob={sha}",
            "explain held": f"/plan?explain_blob={held}",
            "audit ref": "/audit?blob=acme-docs:k",
            "audit prefix": f"/audit?blob={sha[:10]}",
            "blob page": f"/blobs/{sha}",
            "held page": f"/blobs/{held}",
            "search id": f"/blobs?q={sha}",
            "search prefix": f"/blobs?q={sha[:8]}",
            "search ref": "/blobs?q=acme-docs:k",
        }
        answers = {}
        for name, path in pages.items():
            answer = client.get(path, follow_redirects=False)
            # What the page echoes of the query (form field, message) discloses nothing.
            echoed = re.split("[=/]", path)[-1]
            answers[name] = (answer.status_code, answer.text.replace(echoed, "ECHO"))
        return answers

    own = looks("oscar")
    assert own["blob page"][0] == 200 and "acme-docs:k:default" in own["blob page"][1]
    assert own["search ref"][0] == 303 and own["search prefix"][0] == 303
    assert sha in own["explain ref"][1] and "legal" in own["held page"][1]
    assert own["audit ref"][0] == 200 and own["audit prefix"][0] == 200

    other = looks("otis")
    for name, (_status, text) in other.items():
        assert sha not in text and held not in text, name
        assert "legal" not in text and 'id="explanation"' not in text, name
    assert other["blob page"][0] == other["held page"][0] == 404
    assert other["search id"][0] == other["search prefix"][0] == other["search ref"][0] == 404
    assert other["audit ref"][0] == other["audit prefix"][0] == 400
    # No existence oracle: a reference that exists answers like one that does not.
    missing = client.get("/plan?explain_blob=acme-docs:nope:default").text
    assert other["explain ref"][1].replace("acme-docs:k:default", "ECHO") == missing.replace(
        "acme-docs:nope:default", "ECHO"
    )


def test_sign_in_from_another_sites_form_is_refused(client: TestClient) -> None:
    """Login CSRF: a cross-site form must not sign the victim in as the attacker."""
    form = {"username": "mia", "password": PASSWORD}
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
    ):
        refused = client.post("/signin", data=form, headers=headers, follow_redirects=False)
        assert refused.status_code == 403, headers
        assert "set-cookie" not in refused.headers
        api = client.post(
            "/api/auth/login", json={"user": "mia", "password": PASSWORD}, headers=headers
        )
        assert api.status_code == 403 and api.json()["code"] == "csrf_failed"
        assert "set-cookie" not in api.headers
    same = client.post(
        "/signin", data=form, headers={"Origin": "http://127.0.0.1"}, follow_redirects=False
    )
    assert same.status_code == 303 and "sk_session" in same.cookies


def _counting_body(prefix: bytes, total: int, sent: list[int]) -> Iterator[bytes]:
    """A multipart-looking body of ``total`` bytes, counting what the server pulled."""
    sent[0] += len(prefix)
    yield prefix
    chunk = b"\0" * (1024 * 1024)
    while sent[0] < total:
        sent[0] += len(chunk)
        yield chunk


def test_import_reads_no_body_before_the_session_and_origin_are_checked(
    client: TestClient,
) -> None:
    """An unauthenticated or cross-site import of 200 MiB is answered after reading
    (almost) nothing; a signed-in one over the limit stops at the limit."""
    head, content_type = _multipart({"csrf_token": "x"}, "b.tar", b"")
    prefix = head.rsplit(b"\r\n--", 1)[0]
    headers = {"Content-Type": content_type}
    for setup in ("anonymous", "cross-site"):
        extra = {}
        if setup == "cross-site":
            sign_in(client, "mia")
            extra = {"Origin": "https://evil.example"}
        sent = [0]
        answer = client.post(
            "/namespaces/x/import",
            content=_counting_body(prefix, 200 * 1024 * 1024, sent),
            headers={**headers, **extra},
            follow_redirects=False,
        )
        assert answer.status_code in (303, 403), setup
        # The test client hands the app the whole body on its first read: the app
        # never read at all.
        assert sent[0] == 0, (setup, sent[0])
    # Reading stops at the limit: tests/api/test_http_server.py, on a real server.


def test_odd_input_is_a_4xx_not_a_500(client: TestClient) -> None:
    csrf = sign_in(client, "oscar")
    for since in ("1000000000d", "99999999999d", "800000d"):
        answer = client.get(f"/audit?since={since}")
        assert answer.status_code == 400, since
    revoked = client.post("/sessions/%C3%A9/revoke", data={"csrf_token": csrf})
    assert revoked.status_code == 404
    forged = client.post("/plan/run", data={"csrf_token": "é" * 64}, follow_redirects=False)
    assert forged.status_code == 403
    header = client.post("/plan/run", headers={"X-CSRF-Token": "é".encode()})
    assert header.status_code == 403
    assert client.get("/plan").status_code == 200


def test_security_events_show_on_the_audit_page_for_admins(client: TestClient) -> None:
    failed = client.post(
        "/signin", data={"username": "gus", "password": "not it at all"}, follow_redirects=False
    )
    assert failed.status_code == 401
    sign_in(client, "ada")
    page = client.get("/audit?rule=security")
    assert page.status_code == 200
    assert "signin-failed" in page.text and "gus" in page.text
    client.cookies.clear()
    sign_in(client, "oscar")
    assert "signin-failed" not in client.get("/audit?rule=security").text


def test_the_sign_in_cookie_lives_as_long_as_the_session(client: TestClient) -> None:
    answer = client.post(
        "/signin", data={"username": "mia", "password": PASSWORD}, follow_redirects=False
    )
    assert "Max-Age=43200" in answer.headers["set-cookie"]  # the 12 h absolute timeout


def test_a_member_cannot_squat_a_namespace_name(client: TestClient, archive: Archive) -> None:
    """Security 9: a new name outside the member's tenant (``globex.<name>``) needs an
    admin; the refusal says which names the member may use."""
    csrf = sign_in(client, "gus")
    headers = {"X-CSRF-Token": csrf, "Accept": "application/json"}
    assert "globex.&lt;name&gt;" in client.get("/namespaces").text
    refused = client.post(
        "/namespaces/course/upload?key=k", content=build_html_package(), headers=headers
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "namespace_reserved"
    assert refused.json()["allowed_prefix"] == "globex."
    assert "globex.course" in refused.json()["message"]
    stored = client.post(
        "/namespaces/globex.mine/upload?key=k", content=build_html_package(), headers=headers
    )
    assert stored.status_code == 200, stored.text
    bundle = client.get("/namespaces/globex.mine/export").content
    imported = client.post(
        "/namespaces/course/import",
        data={"csrf_token": csrf},
        files={"bundle": ("mine.tar", bundle, "application/x-tar")},
        follow_redirects=False,
    )
    assert imported.status_code == 403 and "globex.course" in imported.text
    assert 'data-namespace="course"' not in client.get("/namespaces").text
    accounts.assign_namespaces(archive, "acme", ["course"], create=True)
    again = client.post(
        "/namespaces/course/upload?key=k", content=build_html_package(), headers=headers
    )
    assert again.status_code == 403 and again.json()["code"] == "namespace_reserved"
    client.cookies.clear()
    csrf = sign_in(client, "mia")
    taken = client.post(
        "/namespaces/course/upload?key=k",
        content=build_html_package(),
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert taken.status_code == 200, taken.text
