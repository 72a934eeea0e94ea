"""The SQL planner against its oracle: the pure policy applied copy by copy.

Hypothesis generates database states — copies in every state at every kind of
location, verified long ago or never, references, holds, staging jobs, in-flight
transfers, blobs inside and past their grace period — and the set of copies the
planner would delete must be exactly the set ``policy.decide`` allows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
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
from safekeeper.services.planner import make_plan, policy_from_config

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CONFIG = """
[policy]
min_archive_copies = {min_archive}
grace_period = "7d"
verify_max_age = "30d"

[locations.inbox]
kind = "source"
store = "memory://oracle-inbox"

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


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Archive]]:
    """One archive per min_archive_copies setting, reused across examples."""
    opened = {}
    for min_archive in (0, 1, 2):
        data_dir = tmp_path_factory.mktemp(f"oracle-{min_archive}")
        (data_dir / "safekeeper.toml").write_text(CONFIG.format(min_archive=min_archive))
        config = load_config(data_dir=data_dir, environ={})
        opened[min_archive] = Archive(config, clock=lambda: NOW)
    yield opened
    for archive in opened.values():
        archive.close()


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
