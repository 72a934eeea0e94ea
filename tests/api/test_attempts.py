"""SCORM attempts without a browser: commits through a capability, what is kept, the
launch API, the results API, and attempts going with their user.
(The runtime in Chromium is tests/dashboard/test_scorm.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from safekeeper.api.app import create_app
from safekeeper.api.package_origin import create_package_app
from safekeeper.archive import Archive
from safekeeper.db.models import PackageAttempt
from safekeeper.packages import scorm
from safekeeper.services.access import accounts
from safekeeper.services.access.erasure import erase_user
from safekeeper.services.packaging import attempts
from tests.api.accounts import Accounts, add_accounts
from tests.api.test_serving import put_package
from tests.conftest import FakeClock
from tests.packages import zips


class Clients:
    def __init__(self, archive: Archive, made: Accounts) -> None:
        self.archive, self.made = archive, made
        self.api = TestClient(create_app(archive), base_url="http://127.0.0.1")
        self.packages = TestClient(
            create_package_app(archive), base_url=archive.config.server.package_base
        )

    def launch(self, caller: str, viewer: str | None = None, key: str = "intro") -> str:
        body = {"viewer": viewer} if viewer else {}
        answer = self.api.post(
            f"/api/namespaces/acme-courses/packages/{key}/launch",
            json=body,
            headers=self.made.headers(caller),
        )
        assert answer.status_code == 200, answer.text
        return urlsplit(answer.json()["url"]).path  # /l/<capability>

    def commit(self, launch_path: str, body: object) -> tuple[int, dict[str, str]]:
        answer = self.packages.post(launch_path.replace("/l/", "/r/") + "/commit", json=body)
        return answer.status_code, answer.json()


@pytest.fixture
def clients(archive: Archive) -> Iterator[Clients]:
    made = add_accounts(archive)
    put_package(archive, zips.build_scorm12(), "acme-courses:intro:draft", tenant="acme")
    put_package(archive, zips.build_scorm12(), "other-courses:intro:draft", tenant="other")
    found = Clients(archive, made)
    with found.api, found.packages:
        yield found


def _count(archive: Archive) -> int:
    with archive.db.read() as session:
        return int(session.scalar(select(func.count()).select_from(PackageAttempt)) or 0)


COMMIT = {
    "version": "scorm12",
    "finish": True,
    "data": {
        "cmi.core.lesson_status": "failed",
        "cmi.core.score.raw": "40",
        "cmi.core.score.max": "80",
        "cmi.core.session_time": "0001:00:00",
        "cmi.suspend_data": "x",
        # Computed by the server: dropped, never stored from a commit.
        "cmi.core.student_id": "someone-else",
        "cmi.core.total_time": "9999:00:00",
        "cmi.core._children": "nonsense",
        "evil.element": "x",
    },
}


def test_a_commit_stores_the_viewers_attempt_and_the_next_launch_starts_from_it(
    clients: Clients, archive: Archive
) -> None:
    launch = clients.launch("alice")
    player = clients.packages.get(launch)
    assert player.status_code == 200
    assert "window.API" not in player.text and "/_sk/runtime.js" in player.text
    assert (
        "frame-ancestors 'self' http://127.0.0.1:8470" in player.headers["content-security-policy"]
    )
    assert "sandbox allow-scripts" in player.headers["content-security-policy"]
    assert clients.commit(launch, COMMIT) == (200, {"ok": True})
    [view] = attempts.results(archive, _principal(clients, "alice"), "acme-courses", "intro")
    assert (view.user, view.completion_status, view.success_status) == (
        "alice",
        "completed",
        "failed",
    )
    assert (view.score_raw, view.score_max, view.total_seconds) == (40.0, 80.0, 3600.0)
    with archive.db.read() as session:
        data = json.loads(session.scalar(select(PackageAttempt.data)) or "{}")
    assert "cmi.core.student_id" not in data and "evil.element" not in data
    assert "cmi.core.total_time" not in data and "cmi.core._children" not in data
    state = attempts.launch_state(archive, view_user_id(clients, "alice"), "acme-courses", "intro")
    assert state.data["cmi.suspend_data"] == "x" and state.total_seconds == 3600.0
    # The player page carries it for the runtime (JSON in a non-executed script element).
    again = clients.packages.get(clients.launch("alice")).text
    assert '"cmi.suspend_data": "x"' in again and '"total_time_12": "0001:00:00.00"' in again


def view_user_id(clients: Clients, name: str) -> int:
    return accounts.user_id_of(clients.archive, name)


def _principal(clients: Clients, name: str):  # type: ignore[no-untyped-def]
    from safekeeper.api.package_origin import _read_viewer

    viewer = _read_viewer(clients.archive, view_user_id(clients, name))
    assert viewer is not None
    return viewer


def test_bad_commits_store_nothing(clients: Clients, archive: Archive) -> None:
    launch = clients.launch("alice")
    cases = [
        ({"version": "scorm3", "data": {}}, 400),
        ({"version": "scorm12", "data": []}, 400),
        ({"version": "scorm12", "data": {"cmi.suspend_data": 5}}, 400),
        ({"version": "scorm12", "data": {"cmi.suspend_data": "x" * 70_000}}, 400),
        ([1, 2], 400),
    ]
    for body, status in cases:
        code, answer = clients.commit(launch, body)
        assert code == status, body
        assert answer["code"] == "bad_input"
    huge = clients.packages.post(
        launch.replace("/l/", "/r/") + "/commit", content=b"{" + b" " * (5 * 1024 * 1024)
    )
    assert (huge.status_code, huge.json()["code"]) == (413, "too_large")
    assert clients.packages.get(launch.replace("/l/", "/r/") + "/commit").status_code == 405
    assert _count(archive) == 0


def test_the_launch_api(clients: Clients) -> None:
    # A member launches for themselves; only admins for others; the viewer must see it.
    assert clients.launch("alice").startswith("/l/")
    url = "/api/namespaces/acme-courses/packages/intro/launch"
    for caller, body, status, code in [
        ("alice", {"viewer": "bob"}, 403, "forbidden"),
        ("root", {"viewer": "olga"}, 404, "not_found"),  # olga cannot see acme's
        ("root", {"viewer": "nobody"}, 404, "not_found"),
        ("olga", {}, 404, "not_found"),
        ("alice", {"label": "published"}, 404, "not_found"),
    ]:
        answer = clients.api.post(url, json=body, headers=clients.made.headers(caller))
        assert (answer.status_code, answer.json()["code"]) == (status, code), (caller, body)
    assert clients.api.post(url, json={}).status_code == 401
    answer = clients.api.post(url, json={"viewer": "bob"}, headers=clients.made.headers("root"))
    assert answer.status_code == 200 and answer.json()["viewer"] == "bob"
    # The capability is bob's: his commit, not root's.
    path = urlsplit(answer.json()["url"]).path
    assert clients.commit(path, COMMIT)[0] == 200
    results = clients.api.get(
        "/api/namespaces/acme-courses/packages/intro/attempts", headers=clients.made.headers("ops")
    ).json()
    assert [r["user"] for r in results] == ["bob"]


def test_results_members_see_their_own(clients: Clients) -> None:
    for user in ("alice", "bob"):
        assert clients.commit(clients.launch(user), COMMIT)[0] == 200
    url = "/api/namespaces/acme-courses/packages/intro/attempts"
    seen = {
        user: [r["user"] for r in clients.api.get(url, headers=clients.made.headers(user)).json()]
        for user in ("alice", "bob", "ops", "root")
    }
    assert seen == {
        "alice": ["alice"],
        "bob": ["bob"],
        "ops": ["alice", "bob"],
        "root": ["alice", "bob"],
    }
    other = clients.api.get(url, headers=clients.made.headers("otto"))
    assert (other.status_code, other.json()["code"]) == (404, "not_found")


def test_a_blob_capability_has_no_player(clients: Clients, archive: Archive) -> None:
    from safekeeper.packages.capabilities import BlobTarget, Capability, encode, load_secret

    sha = put_package(archive, zips.build_html_package(), "acme-courses:page:draft", tenant="acme")
    expires = int(archive.clock().timestamp()) + 60
    capability = encode(
        load_secret(archive.config),
        Capability(view_user_id(clients, "alice"), BlobTarget(sha), expires),
    )
    for response in (
        clients.packages.get(f"/l/{capability}"),
        clients.packages.post(f"/r/{capability}/commit", json=COMMIT),
    ):
        assert (response.status_code, response.json()["code"]) == (400, "bad_input")
    assert _count(archive) == 0


@pytest.mark.parametrize("how", ["soft", "hard", "erase", "disable"])
def test_attempts_go_with_their_user(clients: Clients, archive: Archive, how: str) -> None:
    for user in ("alice", "bob"):
        assert clients.commit(clients.launch(user), COMMIT)[0] == 200
    assert _count(archive) == 2
    if how == "soft":
        accounts.delete_users(archive, ["alice"])
    elif how == "hard":
        accounts.delete_users(archive, ["alice"], hard=True)
    elif how == "erase":
        erase_user(archive, "alice", actor="test")
    else:
        accounts.set_disabled(archive, "alice", True)
    remaining = _count(archive)
    # Disabling keeps the records (the user may come back); deleting does not.
    assert remaining == (2 if how == "disable" else 1)


def test_session_time_and_total_time_formats() -> None:
    assert scorm.session_seconds("scorm12", {"cmi.core.session_time": "0001:02:03.50"}) == 3723.5
    assert scorm.session_seconds("scorm12", {"cmi.core.session_time": "bogus"}) == 0.0
    assert scorm.session_seconds("scorm2004", {"cmi.session_time": "PT1H2M3.5S"}) == 3723.5
    assert scorm.session_seconds("scorm2004", {"cmi.session_time": "P1DT1S"}) == 86401.0
    assert scorm.total_time_12(3723.5) == "0001:02:03.50"
    assert scorm.total_time_2004(3723.5) == "PT1H2M3.5S"
    assert scorm.total_time_2004(0) == "PT0S"
    assert scorm.entry({"cmi.core.exit": "suspend"}) == "resume"
    assert scorm.entry({"cmi.exit": "logout"}) == "ab-initio"
    summary = scorm.summary("scorm12", {"cmi.core.lesson_status": "incomplete"})
    assert (summary.completion_status, summary.success_status) == ("incomplete", None)


def test_commits_are_refused_like_content_once_the_capability_is(
    clients: Clients, archive: Archive, clock: FakeClock
) -> None:
    launch = clients.launch("alice")
    accounts.set_disabled(archive, "alice", True)
    code, answer = clients.commit(launch, COMMIT)
    assert (code, answer["code"]) == (403, "capability_revoked")
    accounts.set_disabled(archive, "alice", False)
    clock.advance(seconds=archive.config.server.capability_ttl.total_seconds() + 1)
    code, answer = clients.commit(launch, COMMIT)
    assert (code, answer["code"]) == (403, "capability_expired")
    player = clients.packages.get(launch)
    assert (player.status_code, player.json()["code"]) == (403, "capability_expired")
    assert _count(archive) == 0
