"""Replication: find every blob whose policy is unmet and schedule transfers.

A pass is two set-based steps, each one SQL statement per rule, never a loop per blob:

1. *Want*: repairs first — a ``missing`` or ``corrupt`` copy with a good copy
   elsewhere becomes ``pending``; then insert a ``pending`` copy row wherever a copy
   should be and is not —
   at each ``replicate_to`` target of a location holding a present copy, and at
   archive locations (in name order) while a blob has fewer than
   ``min_archive_copies`` live archive copies. The unique index on live copies makes
   concurrent passes harmless: a second insert of the same row does nothing.
2. *Schedule*: give every ``pending`` copy without a live task a transfer task,
   sourced from a present copy of the blob, preferring one at the target's site.
   This also picks up repairs (verify turns ``missing``/``corrupt`` into ``pending``)
   and pending rows whose task was lost in a crash between the two steps.

A transfer runs on the site of its source when the source is a local disk (only
that host can read it), else on the target's site.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, exists, func, insert, literal, select, text, update
from sqlalchemy.orm import Session, aliased

from safekeeper.db import tasks as task_rows
from safekeeper.db.models import Blob, Copy, CopyState, Location, Site, Task, TaskState

if TYPE_CHECKING:
    from safekeeper.archive import Archive

LIVE_TASK_STATES = (TaskState.QUEUED, TaskState.RUNNING)
LIVE_COPY_STATES = (CopyState.PENDING, CopyState.PRESENT)


@dataclass(frozen=True)
class PassResult:
    wanted: int
    scheduled: int
    task_ids: list[int]


@dataclass(frozen=True)
class Outstanding:
    """The work a pass leaves at the locations it writes to: its own transfers and
    whatever else is queued or running there (earlier passes, repairs, gc batches)."""

    locations: list[str]
    task_ids: list[int]
    earlier: int


def outstanding(archive: Archive, result: PassResult) -> Outstanding:
    """Every queued or running task at the locations ``result``'s pass writes to: each
    ``replicate_to`` target, the archive locations while ``min_archive_copies`` asks
    for copies there, and the targets of the transfers it scheduled (a repair can be
    anywhere)."""
    config = archive.config
    names = {target for loc in config.locations.values() for target in loc.replicate_to}
    if config.policy.min_archive_copies > 0:
        names |= {name for name, loc in config.locations.items() if loc.kind == "archive"}
    with archive.db.read() as session:
        names |= set(
            session.scalars(
                select(Location.name)
                .join(Copy, Copy.location_id == Location.id)
                .join(Task, Task.copy_id == Copy.id)
                .where(Task.id.in_(result.task_ids))
            )
        )
        live = task_rows.live_at(session, sorted(names))
    # The pass's own tasks count even if a fast worker already ended some of them.
    ours = set(result.task_ids)
    earlier = [t for t in live if t not in ours]
    return Outstanding(sorted(names), sorted(ours | set(earlier)), len(earlier))


def _want_at(session: Session, target: Location, candidates: object, now: object) -> int:
    """Insert pending copies at ``target`` for the blob ids selected by ``candidates``."""
    statement = insert(Copy).from_select(
        ["blob_id", "location_id", "state", "created_at", "updated_at", "retries"],
        select(
            Blob.id,
            literal(target.id),
            literal(CopyState.PENDING.value),
            literal(now),
            literal(now),
            literal(0),
        ).where(
            Blob.id.in_(candidates),  # type: ignore[arg-type]
            ~exists().where(
                Copy.blob_id == Blob.id,
                Copy.location_id == target.id,
                Copy.state != CopyState.DELETED,
            ),
        ),
    )
    return len(session.execute(statement.returning(Copy.id)).all())


def want_copies(archive: Archive, session: Session) -> int:
    config = archive.config
    locations = {loc.name: loc for loc in session.scalars(select(Location))}
    now = archive.clock()
    wanted = 0
    for name, settings in config.locations.items():
        for target_name in settings.replicate_to:
            present_here = select(Copy.blob_id).where(
                Copy.location_id == locations[name].id, Copy.state == CopyState.PRESENT
            )
            wanted += _want_at(session, locations[target_name], present_here, now)
    minimum = config.policy.min_archive_copies
    archives = sorted(n for n, s in config.locations.items() if s.kind == "archive")
    for target_name in archives:
        archive_ids = [locations[n].id for n in archives]
        live_archive_copies = (
            select(func.count())
            .where(
                Copy.blob_id == Blob.id,
                Copy.location_id.in_(archive_ids),
                Copy.state.in_(LIVE_COPY_STATES),
            )
            .scalar_subquery()
        )
        has_a_present_copy = exists().where(
            Copy.blob_id == Blob.id, Copy.state == CopyState.PRESENT
        )
        short = select(Blob.id).where(live_archive_copies < minimum, has_a_present_copy)
        wanted += _want_at(session, locations[target_name], short, now)
    return wanted


def schedule_transfers(archive: Archive, session: Session) -> list[int]:
    """Create a transfer task for every pending copy that has no live task."""
    serialize(session)
    target_loc = aliased(Location)
    needing = (
        select(Copy.id.label("copy_id"), Copy.blob_id, target_loc.site_id)
        .join(target_loc, Copy.location_id == target_loc.id)
        .where(
            Copy.state == CopyState.PENDING,
            ~exists().where(Task.copy_id == Copy.id, Task.state.in_(LIVE_TASK_STATES)),
        )
        .subquery()
    )
    source = aliased(Copy)
    candidates = session.execute(
        select(
            needing.c.copy_id, needing.c.site_id, source.id, Location.site_id, Location.store_url
        )
        .join(source, source.blob_id == needing.c.blob_id)
        .join(Location, source.location_id == Location.id)
        .where(source.state == CopyState.PRESENT)
        .order_by(needing.c.copy_id, source.id)
    ).all()
    # Per pending copy: the first present source at the target's site, else the first.
    chosen: dict[int, tuple[int, int, str, int]] = {}
    for copy_id, target_site, source_id, source_site, source_url in candidates:
        best = chosen.get(copy_id)
        if best is None or (best[1] != target_site and source_site == target_site):
            chosen[copy_id] = (source_id, source_site, source_url, target_site)
    site_names = dict(session.execute(select(Site.id, Site.name)).all())
    now = archive.clock()
    max_attempts = archive.config.policy.max_retries
    rows = [
        {
            "kind": "transfer",
            "state": TaskState.QUEUED,
            "site": site_names[source_site if local_source(source_url) else target_site],
            "copy_id": copy_id,
            "source_copy_id": source_id,
            "attempts": 0,
            "max_attempts": max_attempts,
            "not_before": now,
            "created_at": now,
        }
        for copy_id, (source_id, source_site, source_url, target_site) in sorted(chosen.items())
    ]
    if not rows:
        return []
    # Core, not the ORM's bulk insert: no unit-of-work bookkeeping for thousands of rows.
    tasks = cast(Table, Task.__table__)
    return list(session.scalars(insert(tasks).returning(tasks.c.id), rows))


def local_source(store_url: str) -> bool:
    """Only the host of a local disk can read it: such transfers run at its site."""
    return store_url.startswith(("file:", "memory:"))


def serialize(session: Session) -> None:
    """Replication passes (and repairs) plan from a snapshot and insert what is
    missing; two at once would both insert. SQLite's BEGIN IMMEDIATE already runs
    write transactions one at a time; on PostgreSQL take a transaction-level lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7453011)"))


def want_repairs(session: Session, location_ids: Sequence[int] | None = None) -> int:
    """``missing``/``corrupt`` copies with a present copy elsewhere become ``pending``
    (the transfer then rewrites them)."""
    good = aliased(Copy)
    statement = (
        update(Copy)
        .where(
            Copy.state.in_([CopyState.MISSING, CopyState.CORRUPT]),
            exists().where(good.blob_id == Copy.blob_id, good.state == CopyState.PRESENT),
        )
        .values(state=CopyState.PENDING, last_error=None)
        .execution_options(synchronize_session=False)
    )
    if location_ids is not None:
        statement = statement.where(Copy.location_id.in_(location_ids))
    return len(session.execute(statement.returning(Copy.id)).all())


def replication_pass(archive: Archive) -> PassResult:
    """Run both steps in one transaction; return what was wanted and scheduled."""
    with archive.db.write() as session:
        serialize(session)
        wanted = want_repairs(session) + want_copies(archive, session)
        task_ids = schedule_transfers(archive, session)
    return PassResult(wanted=wanted, scheduled=len(task_ids), task_ids=task_ids)
