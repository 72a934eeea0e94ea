"""A hostile package in headless Chromium: a member uploads it, an admin plays it, and
nothing on the dashboard/API origin changes (asserted on the server: no API token, no
role changed, no session read), while the script cannot read the dashboard's DOM.

The package's script tries what the issue's attacker did and more: read cookies, read
``window.parent``/``top``'s document, fetch ``/api/auth/session`` with credentials for
the CSRF token, create an API token (CORS JSON, and a no-CORS "simple" POST), make the
member an admin, post a dashboard form, navigate the top window away; an SVG member
with a script, opened at top level through its old ``/p`` URL, tries the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from safekeeper.db.models import ApiToken, User
from tests.dashboard.conftest import Server, screenshot, sign_in
from tests.packages.zips import build_zip

pytestmark = pytest.mark.slow

ATTACK = """
const DASH = %(dash)s;
const out = {violated: []};
document.addEventListener('securitypolicyviolation',
                          (e) => out.violated.push(e.effectiveDirective));
function blocked(e) { return 'blocked:' + (e && e.name); }
let csrf = 'guess';
async function attack() {
  out.cookie = document.cookie;
  // The parent is the player (the package origin's own page); above it, the dashboard.
  try { out.parentOrigin = window.parent.location.origin; }
  catch (e) { out.parentOrigin = blocked(e); }
  try { out.topDom = window.top.document.body.innerHTML.slice(0, 80); }
  catch (e) { out.topDom = blocked(e); }
  try { out.grandparentDom = window.parent.parent.document.title; }
  catch (e) { out.grandparentDom = blocked(e); }
  try {
    const r = await fetch(DASH + '/api/auth/session', {credentials: 'include'});
    out.session = await r.text();
    csrf = JSON.parse(out.session).csrf_token || csrf;
  } catch (e) { out.session = blocked(e); }
  try {
    const r = await fetch(DASH + '/api/auth/tokens', {
      method: 'POST', credentials: 'include',
      headers: {'content-type': 'application/json', 'x-csrf-token': csrf},
      body: JSON.stringify({name: 'stolen-cors'})});
    out.token = r.status;
  } catch (e) { out.token = blocked(e); }
  try {
    await fetch(DASH + '/api/auth/tokens', {
      method: 'POST', mode: 'no-cors', credentials: 'include',
      headers: {'content-type': 'text/plain'}, body: '{"name": "stolen-simple"}'});
    out.simple = 'sent';
  } catch (e) { out.simple = blocked(e); }
  try {
    await fetch(DASH + '/api/admin/users/mia', {
      method: 'PATCH', credentials: 'include',
      headers: {'content-type': 'application/json', 'x-csrf-token': csrf},
      body: '{"role": "admin"}'});
    out.promote = 'sent';
  } catch (e) { out.promote = blocked(e); }
  try {
    const form = document.createElement('form');
    form.method = 'POST'; form.action = DASH + '/admin/users'; form.target = 'sink';
    for (const [k, v] of [['name', 'mallory'], ['tenant', 'acme'], ['role', 'admin'],
                          ['password', 'correct horse battery']]) {
      const input = document.createElement('input');
      input.name = k; input.value = v; form.appendChild(input);
    }
    document.body.appendChild(form);
    form.submit();
    out.form = 'submitted';
  } catch (e) { out.form = blocked(e); }
  try { window.top.location.href = DASH + '/admin/users?pwned=1'; out.topNav = 'tried'; }
  catch (e) { out.topNav = blocked(e); }
  out.origin = location.origin;
  await new Promise((done) => setTimeout(done, 200));  // violation events are queued
  document.getElementById('result').textContent = JSON.stringify(out);
}
attack();
"""

INDEX = """<!doctype html><html><head><title>Totally a course</title></head><body>
<h1>Lesson 1</h1><iframe name="sink" style="display:none"></iframe>
<pre id="result"></pre>
<script>%(attack)s</script></body></html>"""

SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="200" height="50">
<text id="result" x="0" y="20">pending</text>
<script><![CDATA[
(async () => {
  const DASH = %(dash)s;
  const out = {cookie: document.cookie, origin: location.origin, violated: []};
  document.addEventListener('securitypolicyviolation',
                            (e) => out.violated.push(e.effectiveDirective));
  try {
    const r = await fetch(DASH + '/api/auth/session', {credentials: 'include'});
    out.session = await r.text();
  } catch (e) { out.session = 'blocked:' + e.name; }
  try {
    await fetch(DASH + '/api/auth/tokens', {method: 'POST', mode: 'no-cors',
      credentials: 'include', headers: {'content-type': 'text/plain'},
      body: '{"name": "stolen-svg"}'});
    out.simple = 'sent';
  } catch (e) { out.simple = 'blocked:' + e.name; }
  await new Promise((done) => setTimeout(done, 200));  // violation events are queued
  document.getElementById('result').textContent = JSON.stringify(out);
})();
]]></script></svg>"""


def _hostile_zip(path: Path, dashboard: str) -> None:
    dash = json.dumps(dashboard)
    attack = ATTACK % {"dash": dash}
    build_zip(
        {
            "index.html": (INDEX % {"attack": attack}).encode(),
            "evil.svg": (SVG % {"dash": dash}).encode(),
        },
        path,
    )


def _server_state(server: Server) -> tuple[int, dict[str, str]]:
    with server.archive() as archive, archive.db.read() as session:
        tokens = int(session.scalar(select(func.count()).select_from(ApiToken)) or 0)
        roles = {name: role for name, role in session.execute(select(User.name, User.role))}
    return tokens, roles


def test_a_hostile_package_played_by_an_admin_changes_nothing(
    new_context: Any, server: Server, tmp_path: Path
) -> None:
    package = tmp_path / "hostile.zip"
    _hostile_zip(package, server.url)
    member = new_context().new_page()
    sign_in(member, "mia", path="/namespaces/acme.mias-courses")
    member.fill("#upload input[name=key]", "lesson")
    member.set_input_files("#upload input[type=file]", str(package))
    member.click("#upload button[type=submit]")
    member.wait_for_url("**/namespaces/acme.mias-courses?done=*")
    before = _server_state(server)
    assert before[1]["mia"] == "member"

    admin = new_context().new_page()
    dialogs: list[str] = []
    admin.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(admin, "ada")
    admin.goto("/play/acme.mias-courses/lesson/draft")
    frame = admin.frame_locator("#player").frame_locator("#sk-content")
    result = frame.locator("#result")
    result.wait_for()
    frame.locator("#result:not(:empty)").wait_for()
    seen = json.loads(result.inner_text())
    screenshot(admin, "hostile-package")

    assert seen["origin"] == server.package_url  # it ran, on the package origin
    assert seen["cookie"] == ""
    # The package origin's CSP stopped the calls before CORS had to.
    assert {"connect-src", "form-action"} <= set(seen["violated"])
    assert seen["parentOrigin"] == server.package_url  # the player, not the dashboard
    assert seen["topDom"].startswith("blocked:")
    assert seen["grandparentDom"].startswith("blocked:")
    assert seen["session"].startswith("blocked:")  # no CORS, and CSP connect-src
    assert "csrf" not in json.dumps(seen)
    assert seen["token"] == "blocked:TypeError"
    assert seen["topNav"].startswith("blocked:") or admin.url.endswith(
        "/play/acme.mias-courses/lesson/draft"
    )
    admin.wait_for_timeout(500)
    assert admin.url == f"{server.url}/play/acme.mias-courses/lesson/draft"  # top not navigated
    assert "Lesson 1" not in admin.inner_text("main")  # the dashboard's DOM is its own
    assert dialogs == []

    # The SVG at top level, through its old /p URL (a redirect to the package origin).
    svg = new_context()
    svg_page = svg.new_page()
    sign_in(svg_page, "ada")
    response = svg_page.goto("/p/acme.mias-courses/lesson/draft/evil.svg")
    assert response is not None and response.ok
    assert svg_page.url.startswith(f"{server.package_url}/c/")
    svg_page.locator("#result:not(:has-text('pending'))").wait_for()
    svg_seen = json.loads(svg_page.locator("#result").text_content() or "")
    assert svg_seen["origin"] == server.package_url
    assert svg_seen["cookie"] == "" and svg_seen["session"].startswith("blocked:")
    assert "connect-src" in svg_seen["violated"]
    admin.wait_for_timeout(500)

    # On the server: nothing changed.
    after = _server_state(server)
    assert after == before
    assert "mallory" not in after[1]
