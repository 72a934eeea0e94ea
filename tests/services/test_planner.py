"""The planner against its oracles: the pure policy applied copy by copy, and the
previous set-based SQL planner (``planner_sql_reference``).

Hypothesis generates database states — copies in every state at every kind of
location, verified long ago or never, references, holds, staging jobs, in-flight
transfers, blobs inside and past their grace period — and the set of copies the
planner would delete must be exactly the set ``policy.decide`` allows, and the whole
plan (deletions in order, kept counts and bytes, usage, pressure) exactly the SQL
planner's.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.evidence import gather
from safekeeper.db.models import (
    Blob,
    Copy,
    Hold,
    Location,
    Namespace,
    Reference,
    StagingJob,
    StagingJobBlob,
    Task,
)
from safekeeper.policy import decide
from safekeeper.services.deletion.planner import make_plan, policy_from_config
from tests.services.planner_sql_reference import make_sql_plan

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CONFIG = """
[policy]
min_archive_copies = {min_archive}
grace_period = "7d"
verify_max_age = "30d"

[locations.inbox]
kind = "source"
store = "memory://oracle-inbox"
{inbox_watermarks}

[locations.recent]
kind = "source"
store = "memory://oracle-recent"
retention = "2d"

[locations.buffer]
kind = "buffer"
store = "memory://oracle-buffer"
delete_after_copies_at = ["tape-a", "tape-b"]

[locations.scratch]
kind = "processing"
store = "memory://oracle-scratch"

[locations.tape-a]
kind = "archive"
store = "memory://oracle-tape-a"

[locations.tape-b]
kind = "archive"
store = "memory://oracle-tape-b"
"""
LOCATIONS = ["inbox", "recent", "buffer", "scratch", "tape-a", "tape-b"]
STATES = ["present", "present", "present", "pending", "deleting", "missing", "corrupt", "failed"]
AGES_DAYS = [None, 0, 1, 2, 3, 8, 29, 31, 400]

copy_strategy = st.fixed_dictionaries(
    {
        "state": st.sampled_from(STATES),
        "age": st.sampled_from([0, 1, 2, 3, 10]),
        "verified_days_ago": st.sampled_from(AGES_DAYS),
    }
)
blob_strategy = st.fixed_dictionaries(
    {
        "copies": st.dictionaries(st.sampled_from(LOCATIONS), copy_strategy, max_size=5),
        "unreferenced_days_ago": st.sampled_from([None, 0, 6, 7, 8, 100]),
        "hold": st.sampled_from([None, None, None, "blob", "namespace"]),
        "job": st.booleans(),
        "transfer_from": st.sampled_from([None, None, *LOCATIONS]),
    }
)


def _days(n: int | None) -> datetime | None:
    return None if n is None else NOW - timedelta(days=n)


def _load(archive: Archive, blobs: list[dict[str, object]]) -> None:
    with archive.db.write() as session:
        for model in (StagingJobBlob, StagingJob, Task, Hold, Reference, Copy, Namespace, Blob):
            session.execute(delete(model))
        ids = {loc.name: loc.id for loc in session.query(Location)}
        namespace = Namespace(name="ns", created_at=NOW)
        session.add(namespace)
        session.flush()
        job = StagingJob(name="job", location_id=ids["scratch"], created_at=NOW)
        session.add(job)
        session.flush()
        for n, spec in enumerate(blobs):
            unreferenced = _days(spec["unreferenced_days_ago"])  # type: ignore[arg-type]
            blob = Blob(
                sha256=hashlib.sha256(str(n).encode()).hexdigest(),
                size=100 + n,
                created_at=NOW - timedelta(days=20),
                unreferenced_since=unreferenced,
            )
            session.add(blob)
            session.flush()
            if unreferenced is None:
                session.add(
                    Reference(
                        namespace_id=namespace.id,
                        key=f"k{n}",
                        label="l",
                        blob_id=blob.id,
                        created_at=NOW,
                        updated_at=NOW,
                    )
                )
            if spec["hold"] == "blob":
                session.add(Hold(blob_id=blob.id, reason="r", created_by="t", created_at=NOW))
            elif spec["hold"] == "namespace" and unreferenced is None:
                session.add(
                    Hold(namespace_id=namespace.id, reason="r", created_by="t", created_at=NOW)
                )
            if spec["job"]:
                session.add(StagingJobBlob(job_id=job.id, blob_id=blob.id))
            copies = {}
            for location, c in spec["copies"].items():  # type: ignore[attr-defined]
                copy = Copy(
                    blob_id=blob.id,
                    location_id=ids[location],
                    state=c["state"],
                    created_at=NOW - timedelta(days=c["age"]),
                    updated_at=NOW,
                    verified_at=_days(c["verified_days_ago"]),
                    retries=0,
                )
                session.add(copy)
                session.flush()
                copies[location] = copy
            source = spec["transfer_from"]
            if source in copies and len(copies) > 1:
                target = next(c for loc, c in copies.items() if loc != source)
                session.add(
                    Task(
                        kind="transfer",
                        state="queued",
                        site="local",
                        copy_id=target.id,
                        source_copy_id=copies[source].id,
                        attempts=0,
                        max_attempts=3,
                        not_before=NOW,
                        created_at=NOW,
                    )
                )


def _oracle(archive: Archive) -> set[int]:
    policy = policy_from_config(archive.config)
    with archive.db.read() as session:
        copy_ids = [c.id for c in session.query(Copy)]
        evidence = gather(session, copy_ids=copy_ids)
    return {cid for cid, (_, ev) in evidence.items() if decide(ev, policy, NOW).allowed}


#: Disk pressure on the inbox: blob sizes are 100 + n bytes, so a few blobs cross it.
WATERMARKS = "high_watermark = 400\nlow_watermark = 150"


def _open(data_dir: Path, min_archive: int, watermarks: str = "", url: str = "") -> Archive:
    text = CONFIG.format(min_archive=min_archive, inbox_watermarks=watermarks)
    if url:
        text = f'[database]\nurl = "{url}"\n' + text
    (data_dir / "safekeeper.toml").write_text(text)
    return Archive(load_config(data_dir=data_dir, environ={}), clock=lambda: NOW)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Archive]]:
    """One archive per min_archive_copies setting, reused across examples."""
    opened = {m: _open(tmp_path_factory.mktemp(f"oracle-{m}"), m) for m in (0, 1, 2)}
    yield opened
    for archive in opened.values():
        archive.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pressured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Archive]:
    """An archive whose inbox is over its high watermark, on each backend."""
    url = request.getfixturevalue("postgres_server") if request.param == "postgresql" else ""
    if url:
        url = _fresh_database(url)
    archive = _open(tmp_path_factory.mktemp("pressure"), 1, WATERMARKS, url)
    yield archive
    archive.close()


def _fresh_database(server_url: str) -> str:
    """A new database on the test server (the module's tables start empty)."""
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"planner_{uuid.uuid4().hex[:12]}"
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + "/" + name


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    blobs=st.lists(blob_strategy, min_size=1, max_size=12),
    min_archive=st.sampled_from([0, 1, 2]),
)
def test_sql_plan_matches_the_pure_policy(
    archives: dict[int, Archive], blobs: list[dict[str, object]], min_archive: int
) -> None:
    archive = archives[min_archive]
    _load(archive, blobs)
    planned = {d.copy_id for d in make_plan(archive).deletions}
    assert planned == _oracle(archive)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    blobs=st.lists(blob_strategy, min_size=1, max_size=12),
    min_archive=st.sampled_from([0, 1, 2]),
)
def test_plan_equals_the_previous_sql_planner(
    archives: dict[int, Archive], blobs: list[dict[str, object]], min_archive: int
) -> None:
    archive = archives[min_archive]
    _load(archive, blobs)
    for location in (None, "buffer", "tape-a"):
        assert make_plan(archive, location) == make_sql_plan(archive, location)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(blobs=st.lists(blob_strategy, min_size=1, max_size=16))
def test_plan_under_disk_pressure_equals_the_previous_sql_planner(
    pressured: Archive, blobs: list[dict[str, object]]
) -> None:
    """Least recently used first, on SQLite and PostgreSQL: the last-use times the
    planner reads raw from the driver order the candidates as the SQL planner's did."""
    _load(pressured, blobs)
    plan = make_plan(pressured)
    assert plan == make_sql_plan(pressured)


def test_a_mixed_world_plans_every_rule(tmp_path: Path) -> None:
    """One fixed state that reaches every rule, so the comparison above is not vacuous
    even if generation drifts: garbage and archived-elsewhere deletions, and copies kept
    by hold, in-use, retention, archive, archived-elsewhere and last-copy."""
    archive = _open(tmp_path, 0)  # no archive floor: the last-copy rule is reachable
    try:
        plain = {"state": "present", "age": 10, "verified_days_ago": 1}
        archived = {"inbox": plain, "tape-a": plain}
        world: list[dict[str, object]] = [
            {
                "copies": archived,
                "unreferenced_days_ago": None,
                "hold": None,
                "job": False,
                "transfer_from": None,
            },
            {
                "copies": archived,
                "unreferenced_days_ago": 100,
                "hold": None,
                "job": False,
                "transfer_from": None,
            },
            {
                "copies": archived,
                "unreferenced_days_ago": None,
                "hold": "blob",
                "job": False,
                "transfer_from": None,
            },
            {
                "copies": {"inbox": plain, "tape-a": {**plain, "state": "pending"}},
                "unreferenced_days_ago": None,
                "hold": None,
                "job": False,
                "transfer_from": "inbox",
            },
            {
                "copies": {"recent": {**plain, "age": 0}, "tape-a": plain},
                "unreferenced_days_ago": None,
                "hold": None,
                "job": False,
                "transfer_from": None,
            },
            {
                "copies": {"buffer": plain, "tape-a": plain},
                "unreferenced_days_ago": None,
                "hold": None,
                "job": False,
                "transfer_from": None,
            },
            {
                "copies": {"inbox": plain},
                "unreferenced_days_ago": None,
                "hold": None,
                "job": False,
                "transfer_from": None,
            },
        ]
        _load(archive, world)
        plan = make_plan(archive)
        assert plan == make_sql_plan(archive)
        rules = {d.rule for d in plan.deletions} | {
            rule for location in plan.locations for rule in location.kept
        }
        assert rules == {
            "garbage",
            "archived-elsewhere",
            "hold",
            "in-use",
            "retention",
            "archive",
            "last-copy",
        }
    finally:
        archive.close()


def test_an_archive_copy_counts_for_the_floor_only_while_its_verification_is_fresh(
    tmp_path: Path,
) -> None:
    """min_archive_copies = 1: an inbox copy goes with a freshly verified archive copy,
    not with one verified too long ago or never."""
    archive = _open(tmp_path, 1)
    try:
        inbox = {"state": "present", "age": 10, "verified_days_ago": 1}
        world: list[dict[str, object]] = [
            {
                "copies": {"inbox": inbox, "tape-a": {**inbox, "verified_days_ago": days}},
                "unreferenced_days_ago": None,
                "hold": None,
                "job": False,
                "transfer_from": None,
            }
            for days in (29, 31, None)
        ]
        _load(archive, world)
        plan = make_plan(archive)
        assert plan == make_sql_plan(archive)
        inbox_plan = next(p for p in plan.locations if p.location == "inbox")
        assert [d.size for d in inbox_plan.deletions] == [100]  # the first blob only
        assert inbox_plan.kept == {"archived-elsewhere": [2, 101 + 102]}
    finally:
        archive.close()
