"""SCORM content in headless Chromium, written like authoring-tool output: it finds the
LMS's API by walking ``parent`` (then ``opener``) up to 500 levels, alerts when there is
none, sets status, score, location and suspend data, commits and finishes. Played from
the dashboard, it runs with no alert, the server stores what it set, and a second
launch resumes from it; the runtime answers the data model's error codes; a
multi-SCO package lists and launches each item; an application embeds a launch URL.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from safekeeper.db.models import PackageAttempt, User
from safekeeper.services.access import tokens
from tests.api.test_serving import put_package
from tests.dashboard.conftest import PASSWORD, Server, screenshot, sign_in
from tests.packages.zips import SCORM12_MANIFEST, SCORM2004_MANIFEST, build_zip

pytestmark = pytest.mark.slow

# The discovery code real packages ship (the ADL sample's shape).
FIND_12 = """
var findAPITries = 0;
function findAPI(win) {
  while ((win.API == null) && (win.parent != null) && (win.parent != win)) {
    findAPITries++;
    if (findAPITries > 500) { alert("Error finding API -- too deeply nested."); return null; }
    win = win.parent;
  }
  return win.API;
}
function getAPI() {
  var theAPI = findAPI(window);
  if ((theAPI == null) && (window.opener != null) && (typeof(window.opener) != "undefined")) {
    theAPI = findAPI(window.opener);
  }
  if (theAPI == null) { alert("Unable to find an API adapter"); }
  return theAPI;
}
"""

FIND_2004 = FIND_12.replace("win.API", "win.API_1484_11")

SCO_12 = """<!doctype html><html><head><title>Golf 1.2</title><script>%(find)s</script></head>
<body><h1>Playing golf</h1><pre id="result"></pre><script>
var api = getAPI();
var out = {};
out.init = api.LMSInitialize("");
out.entry = api.LMSGetValue("cmi.core.entry");
out.resumed = api.LMSGetValue("cmi.suspend_data");
out.location = api.LMSGetValue("cmi.core.lesson_location");
out.status = api.LMSGetValue("cmi.core.lesson_status");
out.name = api.LMSGetValue("cmi.core.student_name");
function code(f) { f(); return api.LMSGetLastError(); }
out.errors = {
  unknown: code(function () { api.LMSGetValue("cmi.core.nonsense"); }),
  readOnly: code(function () { api.LMSSetValue("cmi.core.student_id", "x"); }),
  writeOnly: code(function () { api.LMSGetValue("cmi.core.exit"); }),
  keyword: code(function () { api.LMSSetValue("cmi.core._children", "x"); }),
  badType: code(function () { api.LMSSetValue("cmi.core.lesson_status", "bogus"); }),
  noChildren: code(function () { api.LMSGetValue("cmi.core.lesson_location._children"); }),
  children: code(function () { api.LMSGetValue("cmi.core._children"); }),
  gap: code(function () { api.LMSSetValue("cmi.interactions.5.id", "q5"); })
};
out.errorString = api.LMSGetErrorString("403");
api.LMSSetValue("cmi.core.lesson_status", "passed");
api.LMSSetValue("cmi.core.score.raw", "85");
api.LMSSetValue("cmi.core.score.min", "0");
api.LMSSetValue("cmi.core.score.max", "100");
api.LMSSetValue("cmi.core.lesson_location", "page-3");
api.LMSSetValue("cmi.suspend_data", "page=3;answers=" + "abc<\\/script>");
api.LMSSetValue("cmi.interactions.0.id", "q1");
api.LMSSetValue("cmi.interactions.0.result", "correct");
out.count = api.LMSGetValue("cmi.interactions._count");
api.LMSSetValue("cmi.core.session_time", "00:01:30");
api.LMSSetValue("cmi.core.exit", "suspend");
out.commit = api.LMSCommit("");
out.finish = api.LMSFinish("");
out.afterFinish = api.LMSGetValue("cmi.core.lesson_status");
document.getElementById("result").textContent = JSON.stringify(out);
</script></body></html>"""

# 2004: the launch page frames the engine, which walks up two levels to the player.
STORY_2004 = """<!doctype html><html><head><title>Golf 2004</title></head><body>
<iframe id="engine" src="engine.html" style="width:100%%;height:400px"></iframe></body></html>"""

ENGINE_2004 = """<!doctype html><html><head><script>%(find)s</script></head><body>
<pre id="result"></pre><script>
var api = getAPI();
var out = {};
out.init = api.Initialize("");
out.again = [api.Initialize(""), api.GetLastError()];
out.entry = api.GetValue("cmi.entry");
out.resumed = api.GetValue("cmi.suspend_data");
out.resumedError = api.GetLastError();
out.location = api.GetValue("cmi.location");
out.version = api.GetValue("cmi._version");
function code(f) { f(); return api.GetLastError(); }
out.errors = {
  unknown: code(function () { api.GetValue("cmi.nonsense"); }),
  readOnly: code(function () { api.SetValue("cmi.learner_id", "x"); }),
  writeOnly: code(function () { api.GetValue("cmi.exit"); }),
  badType: code(function () { api.SetValue("cmi.completion_status", "bogus"); }),
  outOfRange: code(function () { api.SetValue("cmi.score.scaled", "2"); }),
  dependency: code(function () { api.SetValue("cmi.interactions.0.result", "correct"); }),
  notInitialized: code(function () { api.GetValue("cmi.score.raw"); })
};
api.SetValue("cmi.completion_status", "completed");
api.SetValue("cmi.success_status", "passed");
api.SetValue("cmi.score.scaled", "0.9");
api.SetValue("cmi.score.raw", "90");
api.SetValue("cmi.score.max", "100");
api.SetValue("cmi.location", "chapter-2");
api.SetValue("cmi.suspend_data", "{\\"chapter\\":2}");
api.SetValue("cmi.interactions.0.id", "q1");
api.SetValue("cmi.interactions.0.type", "choice");
api.SetValue("cmi.interactions.0.learner_response", "b");
api.SetValue("cmi.interactions.0.result", "correct");
api.SetValue("cmi.session_time", "PT2M5S");
api.SetValue("cmi.exit", "suspend");
out.commit = api.Commit("");
out.terminate = api.Terminate("");
out.afterTerminate = [api.GetValue("cmi.location"), api.GetLastError()];
document.getElementById("result").textContent = JSON.stringify(out);
</script></body></html>"""


def _scorm12_zip() -> bytes:
    return build_zip(
        {
            "imsmanifest.xml": SCORM12_MANIFEST.format(
                title="Golf 1.2", href="sco/index.html"
            ).encode(),
            "sco/index.html": (SCO_12 % {"find": FIND_12}).encode(),
            "shared/style.css": b"body{}",
            "shared/app.js": b"",
            "shared/logo.png": b"",
            "shared/blob.bin": b"",
        }
    )


def _scorm2004_zip() -> bytes:
    manifest = SCORM2004_MANIFEST.format(title="Golf 2004", href="content/story.html")
    return build_zip(
        {
            "imsmanifest.xml": manifest.encode(),
            "content/story.html": STORY_2004.encode(),
            "content/engine.html": (ENGINE_2004 % {"find": FIND_2004}).encode(),
            "other/index.html": b"not the default organization",
            "shared/style.css": b"body{}",
            "shared/app.js": b"",
            "shared/logo.png": b"",
            "shared/blob.bin": b"",
        }
    )


def _attempt(server: Server, user: str, key: str) -> PackageAttempt | None:
    with server.archive() as archive, archive.db.read() as session:
        found = session.scalar(
            select(PackageAttempt)
            .join(User, User.id == PackageAttempt.user_id)
            .where(User.name == user, PackageAttempt.key == key)
        )
        if found is not None:
            session.expunge(found)
        return found


def _play(page: Any, url: str, *, engine: bool = False) -> dict[str, Any]:
    page.goto(url)
    content = page.frame_locator("#player").frame_locator("#sk-content")
    if engine:
        content = content.frame_locator("#engine")
    content.locator("#result:not(:empty)").wait_for()
    seen: dict[str, Any] = json.loads(content.locator("#result").inner_text())
    return seen


@pytest.fixture(scope="module")
def packages(server: Server) -> None:
    with server.archive() as archive:
        put_package(archive, _scorm12_zip(), "golf:g12:draft", tenant="acme")
        put_package(archive, _scorm2004_zip(), "golf:g2004:draft", tenant="acme")


def test_scorm12_plays_stores_and_resumes(new_context: Any, server: Server, packages: None) -> None:
    page = new_context().new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, "rita")
    first = _play(page, "/play/golf/g12/draft")
    screenshot(page, "scorm12-first")
    assert dialogs == []
    assert first["init"] == "true" and first["commit"] == "true" and first["finish"] == "true"
    assert (first["entry"], first["resumed"], first["location"]) == ("ab-initio", "", "")
    assert first["status"] == "not attempted" and first["name"] == "rita"
    assert first["errors"] == {
        "unknown": "401",
        "readOnly": "403",
        "writeOnly": "404",
        "keyword": "402",
        "badType": "405",
        "noChildren": "202",
        "children": "0",
        "gap": "201",
    }
    assert first["errorString"] == "Element is read only"
    assert first["count"] == "1"
    assert first["afterFinish"] == ""  # nothing after LMSFinish

    stored = _attempt(server, "rita", "g12")
    assert stored is not None
    data = json.loads(stored.data)
    assert data["cmi.suspend_data"] == "page=3;answers=abc</script>"
    assert data["cmi.core.lesson_location"] == "page-3"
    assert data["cmi.interactions.0.result"] == "correct"
    assert (stored.completion_status, stored.success_status) == ("completed", "passed")
    assert (stored.score_raw, stored.score_max) == (85.0, 100.0)
    assert stored.total_time == 90.0 and stored.commits == 2
    assert "cmi.core.student_id" not in data  # read-only elements are the server's

    second = _play(page, "/play/golf/g12/draft")
    assert dialogs == []
    assert second["entry"] == "resume"
    assert second["resumed"] == "page=3;answers=abc</script>"
    assert second["location"] == "page-3" and second["status"] == "passed"
    again = _attempt(server, "rita", "g12")
    assert again is not None and again.total_time == 180.0

    # The results on the play page: rita sees hers; mia (another member) sees none.
    row = page.locator("#results tr[data-user='rita']")
    assert "passed" in row.inner_text() and "85" in row.inner_text()
    other = new_context().new_page()
    sign_in(other, "mia")
    other.goto("/play/golf/g12/draft")
    assert other.locator("#results tr[data-user='rita']").count() == 0


def test_scorm2004_plays_stores_and_resumes(
    new_context: Any, server: Server, packages: None
) -> None:
    page = new_context().new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, "rita")
    first = _play(page, "/play/golf/g2004/draft", engine=True)
    screenshot(page, "scorm2004-first")
    assert dialogs == []
    assert first["init"] == "true" and first["again"] == ["false", "103"]
    assert first["commit"] == "true" and first["terminate"] == "true"
    assert first["entry"] == "ab-initio" and first["version"] == "1.0"
    assert (first["resumed"], first["resumedError"]) == ("", "403")
    assert first["errors"] == {
        "unknown": "401",
        "readOnly": "404",
        "writeOnly": "405",
        "badType": "406",
        "outOfRange": "407",
        "dependency": "408",
        "notInitialized": "403",
    }
    assert first["afterTerminate"] == ["", "123"]
    stored = _attempt(server, "rita", "g2004")
    assert stored is not None
    assert (stored.completion_status, stored.success_status) == ("completed", "passed")
    assert (stored.score_scaled, stored.score_raw) == (0.9, 90.0)
    assert stored.total_time == 125.0
    assert json.loads(stored.data)["cmi.interactions.0.learner_response"] == "b"

    second = _play(page, "/play/golf/g2004/draft", engine=True)
    assert second["entry"] == "resume"
    assert second["resumed"] == '{"chapter":2}' and second["location"] == "chapter-2"
    assert dialogs == []


MULTI = """<?xml version="1.0"?>
<manifest identifier="multi" xmlns="http://www.imsproject.org/xsd/imscp_rootv1p1p2"
  xmlns:adlcp="http://www.adlnet.org/xsd/adlcp_rootv1p2">
  <metadata><schema>ADL SCORM</schema><schemaversion>1.2</schemaversion></metadata>
  <organizations default="o"><organization identifier="o"><title>Two lessons</title>
    <item identifier="part"><title>Part 1</title>
      <item identifier="one" identifierref="r1"><title>Lesson one</title></item>
      <item identifier="two" identifierref="r2"><title>Lesson two</title></item>
    </item></organization></organizations>
  <resources>
    <resource identifier="r1" type="webcontent" adlcp:scormtype="sco" href="one/index.html"/>
    <resource identifier="r2" type="webcontent" adlcp:scormtype="sco" href="two/index.html"/>
  </resources>
</manifest>"""

LESSON = """<!doctype html><html><head><script>%(find)s</script></head><body>
<pre id="result"></pre><script>
var api = getAPI();
api.LMSInitialize("");
api.LMSSetValue("cmi.core.lesson_location", "%(name)s");
document.getElementById("result").textContent = JSON.stringify(
  {lesson: "%(name)s", commit: api.LMSCommit(""), finish: api.LMSFinish("")});
</script></body></html>"""


def test_a_multi_sco_package_lists_and_launches_each_item(new_context: Any, server: Server) -> None:
    with server.archive() as archive:
        members = {"imsmanifest.xml": MULTI.encode()}
        for name in ("one", "two"):
            members[f"{name}/index.html"] = (LESSON % {"find": FIND_12, "name": name}).encode()
        put_package(archive, build_zip(members), "golf:multi:draft", tenant="acme")
    page = new_context().new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, "rita")
    assert _play(page, "/play/golf/multi/draft")["lesson"] == "one"
    player = page.frame_locator("#player")
    links = player.locator("#sk-items a")
    assert links.all_inner_texts() == ["Lesson one", "Lesson two"]
    links.nth(1).click()
    content = player.frame_locator("#sk-content")
    content.locator("#result:has-text('two')").wait_for()
    assert json.loads(content.locator("#result").inner_text()) == {
        "lesson": "two",
        "commit": "true",
        "finish": "true",
    }
    assert dialogs == []
    stored = _attempt(server, "rita", "multi")
    assert stored is not None
    assert json.loads(stored.data)["cmi.core.lesson_location"] == "two"


def test_an_application_embeds_a_launch_url(
    new_context: Any, server: Server, packages: None
) -> None:
    with server.archive() as archive:
        _, admin_token = tokens.create_token(archive, _user_id(server, "ada"), "lms")
        _, member_token = tokens.create_token(archive, _user_id(server, "mia"), "mine")
    api = f"{server.url}/api/namespaces/golf/packages/g12/launch"
    refused = httpx.post(
        api, json={"viewer": "oscar"}, headers={"Authorization": f"Bearer {member_token}"}
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    answer = httpx.post(
        api, json={"viewer": "oscar"}, headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert answer.status_code == 200, answer.text
    launch = answer.json()
    assert launch["viewer"] == "oscar" and launch["url"].startswith(f"{server.package_url}/l/")
    assert launch["expires_at"]
    # The application frames it (here: a page of its own, opened directly).
    page = new_context().new_page()
    page.goto(launch["url"])
    content = page.frame_locator("#sk-content")
    content.locator("#result:not(:empty)").wait_for()
    assert json.loads(content.locator("#result").inner_text())["finish"] == "true"
    stored = _attempt(server, "oscar", "g12")
    assert stored is not None and stored.success_status == "passed"
    # Only what the capability names: the commit URL of another key is refused.
    commit = launch["url"].replace("/l/", "/r/") + "/commit"
    tampered = commit.replace("/r/", "/r/x")
    assert httpx.post(tampered, json={}).status_code == 403
    assert PASSWORD  # the fixture's users sign in with it


def _user_id(server: Server, name: str) -> int:
    with server.archive() as archive, archive.db.read() as session:
        found = session.scalar(select(User.id).where(User.name == name))
    assert found is not None
    return found
