"""The dashboard in a real browser: headless Chromium against ``safekeeper serve``.

Covers the issue's list: sign in; upload a package and see it play; the plan explains
a kept and a deleted copy; run gc and see the audit entry; revoke the current session
from a second browser and see the first land on the sign-in page (no error page).
Every page's screenshot goes to ``test-output/screenshots/``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from safekeeper.services.access import accounts
from safekeeper.services.operations.status import config_fingerprint, system_status
from tests.dashboard.conftest import Server, screenshot, sign_in
from tests.packages.zips import build_html_package, build_zip

pytestmark = pytest.mark.slow

MARKER = "Played by the dashboard e2e test"


def _garbage_and_kept(server: Server, tag: str) -> tuple[str, str]:
    """A blob unreferenced past the (1 s) grace period, and a referenced one with no
    archive copy; returns (garbage sha256, kept sha256)."""
    with server.archive() as archive:
        garbage = archive.put_bytes(f"garbage {tag}".encode(), ref=f"scratch:{tag}").sha256
        # Pointing the reference elsewhere leaves the first blob unreferenced.
        kept = archive.put_bytes(f"kept {tag}".encode(), ref=f"scratch:{tag}").sha256
        # The operators' tenant's namespace: they may look at what it references.
        accounts.assign_namespaces(archive, "acme", ["scratch"])
    time.sleep(1.2)
    return garbage, kept


def test_sign_in_and_every_page(new_context: Any, server: Server) -> None:
    page = new_context().new_page()
    response = page.goto("/locations")
    assert response is not None and response.ok
    assert page.url.startswith(f"{server.url}/signin")
    assert "Please sign in" in page.inner_text("main")
    screenshot(page, "signin")

    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    assert "wrong user name or password" in page.inner_text("#signin-problem")

    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "correct horse battery")
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/locations")
    assert "ada" in page.inner_text("header")
    rows = page.locator("#locations tbody tr")
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.location)")) == [
        "archive",
        "cache",
        "inbox",
        "scratch",
    ]
    screenshot(page, "locations")

    garbage, _ = _garbage_and_kept(server, "pages")
    for path, name in [
        ("/failures", "failures"),
        ("/audit", "audit"),
        ("/namespaces", "namespaces"),
        ("/sessions", "sessions"),
        ("/admin/users", "admin-users"),
        ("/admin/tenants", "admin-tenants"),
        (f"/blobs/{garbage}", "blob"),
    ]:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        screenshot(page, name)
    assert "unreferenced since" in page.inner_text("main")

    page.goto("/blobs")
    page.fill("input[name=q]", garbage[:10])
    page.click("form.inline button")
    page.wait_for_url(f"{server.url}/blobs/{garbage}")


def test_member_sees_no_operator_pages(new_context: Any) -> None:
    page = new_context().new_page()
    sign_in(page, "mia")
    assert page.url.endswith("/namespaces")
    assert page.locator("nav a[href='/plan']").count() == 0
    response = page.goto("/plan")
    assert response is not None and response.status == 403
    assert "for operators" in page.inner_text("main")


def test_upload_a_package_and_play_it(new_context: Any, server: Server, tmp_path: Path) -> None:
    page = new_context().new_page()
    sign_in(page, "mia", path="/namespaces/acme.courses")

    bad = tmp_path / "bad.zip"
    build_zip({"index.html": b"<p>hi</p>", "../escape.html": b"x"}, bad)
    page.fill("#upload input[name=key]", "intro")
    page.set_input_files("#upload input[type=file]", str(bad))
    page.click("#upload button[type=submit]")
    error = page.locator("#upload-errors li").first
    error.wait_for()
    assert error.get_attribute("data-member") == "../escape.html"
    screenshot(page, "upload-rejected")

    good = tmp_path / "course.zip"
    build_html_package(good, marker=f"<p id='marker'>{MARKER}</p>".encode())
    page.set_input_files("#upload input[type=file]", str(good))
    page.click("#upload button[type=submit]")
    page.wait_for_url(re.compile(r".*/namespaces/acme\.courses\?done=.*"))
    row = page.locator("tr.package[data-key='intro']")
    assert "html" in row.inner_text()
    screenshot(page, "namespace")

    page.click("tr.package[data-key='intro'] a.play")
    page.wait_for_url(f"{server.url}/play/acme.courses/intro/draft")
    # The player on the package origin frames the launch page.
    frame = page.frame_locator("#player").frame_locator("#sk-content")
    assert MARKER in frame.locator("#marker").inner_text()
    screenshot(page, "play")

    page.goto("/namespaces/acme.courses")
    page.click("button.publish")
    page.wait_for_url(re.compile(r".*done=published.*"))
    page.click("tr.package[data-key='intro'] a[href$='/published']")
    assert (
        MARKER
        in page.frame_locator("#player")
        .frame_locator("#sk-content")
        .locator("#marker")
        .inner_text()
    )


def test_plan_explains_a_kept_and_a_deleted_copy(new_context: Any, server: Server) -> None:
    garbage, kept = _garbage_and_kept(server, "plan")
    page = new_context().new_page()
    sign_in(page, "oscar", path="/plan")
    deletion = page.locator(f"section[data-location='inbox'] tr.deletion[data-blob='{garbage}']")
    assert "garbage" in deletion.inner_text()
    assert "unreferenced for" in deletion.inner_text()
    assert page.locator(f"tr.deletion[data-blob='{kept}']").count() == 0
    kept_rules = page.locator("section[data-location='inbox'] tr.kept-rule")
    assert "archived-elsewhere" in kept_rules.evaluate_all("rs => rs.map(r => r.dataset.rule)")
    screenshot(page, "plan")

    page.fill("input[name=explain_blob]", "scratch:plan")
    page.click("#explain + form button")
    explanation = page.locator("#explanation tr[data-location='inbox']")
    assert explanation.get_attribute("data-verdict") == "keep"
    assert "archived-elsewhere" in explanation.inner_text()
    assert "no archive copy yet" in explanation.inner_text()
    page.fill("input[name=explain_blob]", garbage)
    page.click("#explain + form button")
    explanation = page.locator("#explanation tr[data-location='inbox']")
    assert explanation.get_attribute("data-verdict") == "delete"
    assert "garbage" in explanation.inner_text()
    screenshot(page, "plan-explain")


def test_run_gc_from_the_plan_and_see_the_audit_entry(new_context: Any, server: Server) -> None:
    garbage, kept = _garbage_and_kept(server, "gc")
    page = new_context().new_page()
    sign_in(page, "oscar", path="/plan")
    page.click("#run-gc")
    page.wait_for_url(re.compile(r".*/plan/runs/\d+$"))
    status = page.locator("#gc-status[data-state='done']")
    status.wait_for()
    assert "deleted" in status.inner_text()
    screenshot(page, "gc-run")

    page.goto(f"/audit?blob={garbage}")
    entry = page.locator(f"tr.audit-entry[data-blob='{garbage}']")
    assert entry.count() == 1
    assert "garbage" in entry.inner_text() and "dashboard:oscar" in entry.inner_text()
    screenshot(page, "audit-after-gc")
    page.goto(f"/blobs/{kept}")
    assert "present" in page.inner_text("#copies")


def test_status_page_shows_a_running_worker(new_context: Any, server: Server) -> None:
    """A ``safekeeper worker`` started beside the server appears on the admins' status
    page with its heartbeat and configuration."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAFEKEEPER")}
    log = server.data_dir.parent / "status-worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "safekeeper", "--data-dir", str(server.data_dir), "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    prefix = f"{socket.gethostname()}:{worker.pid}:"
    try:
        deadline = time.monotonic() + 30
        with server.archive() as archive:
            while not any(w.name.startswith(prefix) for w in system_status(archive).workers):
                assert worker.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        page = new_context().new_page()
        sign_in(page, "ada")
        page.click("#nav-status")
        page.wait_for_url(f"{server.url}/status")
        row = page.locator(f"tr.worker[data-name^='{prefix}']")
        assert row.count() == 1
        assert row.get_attribute("data-stale") == "no"
        text = row.inner_text()
        assert "worker" in text and "ago" in text and "local" in text
        with server.archive() as archive:
            assert config_fingerprint(archive.config) in text
        assert page.locator("#stores tr[data-location='inbox']").get_attribute("data-ok") == "yes"
        screenshot(page, "status")
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_revoked_session_lands_on_sign_in(new_context: Any, server: Server) -> None:
    first = new_context().new_page()
    sign_in(first, "rita")
    second = new_context().new_page()
    sign_in(second, "rita", path="/sessions")
    assert second.locator("tr.session").count() == 2
    second.click("tr.session[data-current='no'] button")
    second.wait_for_url(re.compile(r".*/sessions\?revoked=.*"))
    assert second.locator("tr.session").count() == 1

    response = first.goto("/namespaces")
    assert response is not None and response.status == 200
    assert first.url.startswith(f"{server.url}/signin?reason=session_revoked")
    assert "signed out elsewhere" in first.inner_text("#signin-message")
    assert first.locator("p.notice.error").count() == 0
    screenshot(first, "signin-revoked")
