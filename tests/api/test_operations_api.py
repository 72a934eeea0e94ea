"""Operator routes: locations, replication, tasks, plan, explain, gc and audit."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from safekeeper.archive import Archive
from safekeeper.db.models import Task
from safekeeper.services.copies.replication import replication_pass
from tests.api.accounts import Accounts, accounts_fixture  # noqa: F401
from tests.conftest import FakeClock

DATA = b"operations" * 100

OPERATOR_ROUTES = [
    ("GET", "/api/locations"),
    ("GET", "/api/replication"),
    ("POST", "/api/tasks/1/retry"),
    ("GET", "/api/plan"),
    ("GET", f"/api/plan/explain/{'0' * 64}"),
    ("POST", "/api/gc"),
    ("GET", "/api/gc"),
    ("GET", "/api/gc/1"),
    ("GET", "/api/audit"),
]


def put(client: TestClient, accounts: Accounts, user: str, ref: str | None) -> str:
    params = {"ref": ref} if ref else {}
    response = client.post(
        "/api/blobs", content=DATA, params=params, headers=accounts.headers(user)
    )
    assert response.status_code == 201, response.text
    sha256: str = response.json()["sha256"]
    return sha256


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES)
def test_members_get_403_and_strangers_401(
    client: TestClient, accounts: Accounts, method: str, path: str
) -> None:
    member = client.request(method, path, headers=accounts.headers("alice"))
    assert member.status_code == 403
    assert member.json()["code"] == "forbidden"
    assert client.request(method, path).status_code == 401


def test_locations_report_usage_watermarks_and_backlog(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    put(client, accounts, "alice", "acme.course:a")
    replication_pass(app_archive)
    response = client.get("/api/locations", headers=accounts.headers("ops"))
    assert response.status_code == 200
    by_name = {loc["name"]: loc for loc in response.json()}
    ingest = by_name[app_archive.config.ingest_location]
    assert (ingest["objects"], ingest["bytes"]) == (1, len(DATA))
    archive_location = by_name["archive"]
    assert archive_location["kind"] == "archive"
    assert (archive_location["backlog_copies"], archive_location["backlog_bytes"]) == (1, len(DATA))
    assert {"high_watermark", "low_watermark", "capacity", "site", "store"} <= set(ingest)


def test_replication_counts_and_retrying_a_failed_task(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    put(client, accounts, "alice", "acme.course:a")
    task_ids = replication_pass(app_archive).task_ids
    assert task_ids
    with app_archive.db.write() as session:
        session.execute(
            update(Task).where(Task.id == task_ids[0]).values(state="failed", last_error="boom")
        )
    report = client.get("/api/replication", headers=accounts.headers("ops")).json()
    assert report["failed"] == 1
    assert [(t["id"], t["last_error"]) for t in report["failed_tasks"]] == [(task_ids[0], "boom")]
    retried = client.post(f"/api/tasks/{task_ids[0]}/retry", headers=accounts.headers("ops"))
    assert retried.status_code == 200
    assert retried.json() == {"requeued": [task_ids[0]]}
    again = client.post(f"/api/tasks/{task_ids[0]}/retry", headers=accounts.headers("ops"))
    assert again.status_code == 404


@pytest.mark.parametrize("path", ["/api/tasks/1/cancel", "/api/tasks/cancel?location=archive"])
def test_cancelling_is_for_admins_only(client: TestClient, accounts: Accounts, path: str) -> None:
    for user in ("alice", "ops"):
        refused = client.post(path, headers=accounts.headers(user))
        assert refused.status_code == 403
        assert refused.json()["code"] == "forbidden"
    assert client.post(path).status_code == 401


def test_cancelling_tasks_by_id_and_by_location(
    client: TestClient, accounts: Accounts, app_archive: Archive
) -> None:
    put(client, accounts, "alice", "acme.course:a")
    app_archive.put_bytes(b"another blob")
    first, second = replication_pass(app_archive).task_ids
    auth = accounts.headers("root")
    cancelled = client.post(f"/api/tasks/{first}/cancel", headers=auth)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"cancelled": [first], "stopping": [], "left_running": []}
    again = client.post(f"/api/tasks/{first}/cancel", headers=auth)
    assert (again.status_code, again.json()["code"]) == (409, "conflict")
    unknown = client.post("/api/tasks/999999/cancel", headers=auth)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    nowhere = client.post("/api/tasks/cancel", params={"location": "nowhere"}, headers=auth)
    assert (nowhere.status_code, nowhere.json()["code"]) == (400, "bad_input")
    by_location = client.post("/api/tasks/cancel", params={"location": "archive"}, headers=auth)
    assert by_location.json() == {"cancelled": [second], "stopping": [], "left_running": []}
    with app_archive.db.read() as session:
        task = session.get_one(Task, first)
        assert (task.state, task.last_error) == ("cancelled", "cancelled by api:root")
    report = client.get("/api/replication", headers=accounts.headers("ops")).json()
    assert (report["cancelled"], report["queued"]) == (2, 0)
    # Retrying undoes a cancellation.
    retried = client.post(f"/api/tasks/{first}/retry", headers=accounts.headers("ops"))
    assert retried.json() == {"requeued": [first]}


def test_plan_gc_and_audit(
    client: TestClient, accounts: Accounts, app_archive: Archive, clock: FakeClock
) -> None:
    sha256 = put(client, accounts, "root", None)  # unreferenced: garbage after the grace period
    auth = accounts.headers("ops")
    early = client.get("/api/plan", headers=auth).json()
    assert all(p["deletion_count"] == 0 for p in early["locations"])
    clock.advance(days=30)
    plan = client.get("/api/plan", headers=auth).json()
    inbox = next(p for p in plan["locations"] if p["location"] == "inbox")
    assert inbox["deletion_count"] == 1
    assert inbox["deletions"][0]["blob"] == sha256
    assert inbox["deletions"][0]["rule"] == "garbage"
    explained = client.get(f"/api/plan/explain/{sha256}", headers=accounts.headers("root"))
    assert explained.status_code == 200
    assert [(v["location"], v["allowed"], v["rule"]) for v in explained.json()] == [
        ("inbox", True, "garbage")
    ]
    started = client.post("/api/gc", headers=auth)
    assert started.status_code == 202
    result = finished_run(client, started.json()["id"], auth)
    assert (result["planned"], result["deleted"], result["bytes_freed"]) == (1, 1, len(DATA))
    assert result["batches"] == {"queued": 0, "running": 0, "done": 1, "failed": 0, "cancelled": 0}
    assert result["phase"] == "ended" and result["error"] is None
    assert [run["id"] for run in client.get("/api/gc", headers=auth).json()] == [result["id"]]
    entries = client.get("/api/audit", params={"blob": sha256}, headers=auth).json()
    assert [(e["blob"], e["location"], e["rule"], e["actor"]) for e in entries] == [
        (sha256, "inbox", "garbage", "api:ops")
    ]
    assert client.get("/api/audit", params={"rule": "hold"}, headers=auth).json() == []
    before = client.get("/api/audit", params={"until": "2025-01-01T00:00:00Z"}, headers=auth)
    assert before.json() == []


def test_gc_max_batches_stops_early(
    client: TestClient, accounts: Accounts, clock: FakeClock
) -> None:
    put(client, accounts, "root", None)
    clock.advance(days=30)
    auth = accounts.headers("ops")
    started = client.post("/api/gc", params={"max_batches": 1}, headers=auth).json()
    assert finished_run(client, started["id"], auth)["deleted"] == 1


def test_unknown_gc_run_is_404(client: TestClient, accounts: Accounts) -> None:
    answer = client.get("/api/gc/7", headers=accounts.headers("ops"))
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"


def finished_run(client: TestClient, run_id: int, auth: dict[str, str]) -> dict[str, Any]:
    """Poll ``GET /api/gc/{id}`` until the run has ended."""
    deadline = time.monotonic() + 30
    while True:
        run: dict[str, Any] = client.get(f"/api/gc/{run_id}", headers=auth).json()
        if not run["running"]:
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.05)


def test_explain_is_tenant_scoped_for_operators(client: TestClient, accounts: Accounts) -> None:
    sha256 = put(client, accounts, "alice", "acme.course:a")
    assert (
        client.get(f"/api/plan/explain/{sha256}", headers=accounts.headers("ops")).status_code
        == 200
    )
    other = client.get(f"/api/plan/explain/{sha256}", headers=accounts.headers("otto"))
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", "/api/plan", {"location": "nowhere"}),
        ("POST", "/api/gc", {"location": "nowhere"}),
        ("GET", "/api/plan/explain/xyz", {}),
        ("GET", "/api/audit", {"blob": "xyz"}),
    ],
)
def test_bad_parameters_are_400(
    client: TestClient, accounts: Accounts, method: str, path: str, params: dict[str, str]
) -> None:
    response = client.request(method, path, params=params, headers=accounts.headers("ops"))
    assert response.status_code == 400
    assert response.json()["code"] == "bad_input"


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/audit", {"limit": "0"}),
        ("/api/audit", {"since": "yesterday"}),
        ("/api/tasks/0/retry", {}),
    ],
)
def test_invalid_values_are_422(
    client: TestClient, accounts: Accounts, path: str, params: dict[str, str]
) -> None:
    method = "POST" if path.endswith("retry") else "GET"
    response = client.request(method, path, params=params, headers=accounts.headers("ops"))
    assert response.status_code == 422
    assert response.json()["code"] == "bad_request"


def test_audit_hides_other_tenants_references_from_operators(
    client: TestClient, accounts: Accounts
) -> None:
    """Reference changes name a namespace, a key and a user: an operator of another
    tenant sees none of them (admins and the tenant's own operators do)."""
    sha256 = put(client, accounts, "alice", "acme.course:secret-plan")
    removed = client.delete(
        "/api/namespaces/acme.course/refs/secret-plan", headers=accounts.headers("alice")
    )
    assert removed.status_code == 204

    def mentions(user: str) -> list[str]:
        entries = client.get("/api/audit", headers=accounts.headers(user)).json()
        return [e["action"] for e in entries if "secret-plan" in str(e) or "alice" in str(e)]

    assert mentions("otto") == []
    assert mentions("ops") == ["ref-removed"]
    assert mentions("root") == ["ref-removed"]
    by_blob = client.get("/api/audit", params={"blob": sha256}, headers=accounts.headers("otto"))
    assert by_blob.json() == []
