"""Gather the policy's evidence: for a set of copies, a few set-based queries per batch
(``gather``); for the whole plan, one ordered scan of every live copy (``scan_copies``)
and the facts the scan does not carry (``plan_facts``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, literal, null, or_, select
from sqlalchemy.orm import Session

from safekeeper.db.models import (
    Blob,
    Copy,
    CopyState,
    Hold,
    Location,
    Reference,
    StagingJob,
    StagingJobBlob,
    Task,
    TaskState,
)
from safekeeper.policy import Evidence, OtherCopy


@dataclass(frozen=True)
class CopyFacts:
    """A copy row with what the services need besides the policy's evidence."""

    copy_id: int
    blob_id: int
    sha256: str
    size: int
    location: str
    kind: str
    state: str
    created_at: datetime
    last_access: datetime | None
    verified_at: datetime | None
    #: What the store reported when the copy's bytes were last hashed right.
    fingerprint: str | None = None


def copies_of_blobs(session: Session, blob_ids: Collection[int]) -> list[CopyFacts]:
    rows = session.execute(
        select(
            Copy.id.label("copy_id"),
            Copy.blob_id,
            Blob.sha256,
            Blob.size,
            Location.name.label("location"),
            Location.kind,
            Copy.state,
            Copy.created_at,
            Copy.last_access,
            Copy.verified_at,
            Copy.fingerprint,
        )
        .join(Blob, Copy.blob_id == Blob.id)
        .join(Location, Copy.location_id == Location.id)
        .where(Copy.blob_id.in_(blob_ids), Copy.state != "deleted")
        .order_by(Copy.id)
    )
    return [CopyFacts(*row) for row in rows]


def held_blobs(session: Session, blob_ids: Collection[int]) -> set[int]:
    """Blobs with an active hold of their own or on a namespace that references them."""
    direct = session.scalars(
        select(Hold.blob_id).where(Hold.blob_id.in_(blob_ids), Hold.released_at.is_(None))
    )
    via_namespace = session.scalars(
        select(Reference.blob_id)
        .join(Hold, Hold.namespace_id == Reference.namespace_id)
        .where(Reference.blob_id.in_(blob_ids), Hold.released_at.is_(None))
    )
    return {b for b in direct if b is not None} | set(via_namespace)


def transfer_sources(session: Session, copy_ids: Collection[int]) -> set[int]:
    return set(
        session.scalars(
            select(Task.source_copy_id).where(
                Task.source_copy_id.in_(copy_ids),
                Task.kind == "transfer",
                Task.state.in_([TaskState.QUEUED, TaskState.RUNNING]),
            )
        )
    )


def job_needs(session: Session, blob_ids: Collection[int]) -> set[tuple[int, str]]:
    """(blob id, location name) pairs an active staging job needs."""
    rows = session.execute(
        select(StagingJobBlob.blob_id, Location.name)
        .join(StagingJob, StagingJob.id == StagingJobBlob.job_id)
        .join(Location, Location.id == StagingJob.location_id)
        .where(StagingJobBlob.blob_id.in_(blob_ids), StagingJob.ended_at.is_(None))
    )
    return {(blob_id, name) for blob_id, name in rows}


def gather(
    session: Session, copy_ids: Collection[int] | None = None, blob_ids: Collection[int] = ()
) -> dict[int, tuple[CopyFacts, Evidence]]:
    """Evidence for the given copies (or every live copy of the given blobs)."""
    return gather_with_copies(session, copy_ids, blob_ids)[0]


def gather_with_copies(
    session: Session,
    copy_ids: Collection[int] | None = None,
    blob_ids: Collection[int] = (),
    *,
    as_present: bool = False,
) -> tuple[dict[int, tuple[CopyFacts, Evidence]], dict[int, list[CopyFacts]]]:
    """``gather``, plus every live copy of the blobs concerned by blob id (gc's
    re-confirmation needs the other copies' ids and fingerprints, read in the same
    transaction as the evidence they are checked for). With ``as_present``, the
    evidence judges each given copy as present whatever its row says (gc's re-check of
    the copies it claimed); the other copies keep their rows' states."""
    if copy_ids is not None:
        blob_ids = set(session.scalars(select(Copy.blob_id).where(Copy.id.in_(copy_ids))))
    facts = copies_of_blobs(session, blob_ids)
    wanted = set(copy_ids) if copy_ids is not None else {f.copy_id for f in facts}
    by_blob: dict[int, list[CopyFacts]] = defaultdict(list)
    for fact in facts:
        by_blob[fact.blob_id].append(fact)
    unreferenced = dict(
        session.execute(select(Blob.id, Blob.unreferenced_since).where(Blob.id.in_(blob_ids))).all()
    )
    held = held_blobs(session, blob_ids)
    sources = transfer_sources(session, wanted)
    needs = job_needs(session, blob_ids)
    result: dict[int, tuple[CopyFacts, Evidence]] = {}
    for fact in facts:
        if fact.copy_id not in wanted:
            continue
        others = tuple(
            OtherCopy(o.location, o.kind, o.state, o.verified_at)
            for o in by_blob[fact.blob_id]
            if o.copy_id != fact.copy_id
        )
        result[fact.copy_id] = (
            fact,
            Evidence(
                location=fact.location,
                state=CopyState.PRESENT.value if as_present else fact.state,
                created_at=fact.created_at,
                unreferenced_since=unreferenced[fact.blob_id],
                held=fact.blob_id in held,
                transfer_source=fact.copy_id in sources,
                needed_by_job=fact.kind == "processing" and (fact.blob_id, fact.location) in needs,
                others=others,
            ),
        )
    return result, by_blob


# -- the whole plan ----------------------------------------------------------------------

#: Copy rows fetched per round trip while streaming the scan.
SCAN_BATCH = 10_000

#: Flag bits of a scanned copy: present (else deleting); verified recently enough;
#: younger than its location's retention; its blob is garbage.
PRESENT, VERIFIED, YOUNG, GARBAGE = 1, 2, 4, 8

#: A scanned copy: blob id, copy id, location id, flags (``PRESENT`` …), blob size,
#: sha256, last used (raw from the driver, see ``last_used_converter``; only at the
#: ``last_used_at`` locations, else None).
ScannedCopy = tuple[int, int, int, int, int, str, Any]


@dataclass(frozen=True)
class ScanCutoffs:
    """The times ``scan_copies`` compares in SQL, so no row's times reach Python."""

    #: A copy is verified if ``verified_at`` is at or after this (None: if set at all).
    verified_since: datetime | None
    #: Location id → a copy there created after this is young (within retention).
    created_after: dict[int, datetime]
    #: A blob unreferenced at or before this is garbage.
    unreferenced_before: datetime
    #: Location ids whose copies' last use (access, else creation) is read.
    last_used_at: list[int]


@dataclass(frozen=True)
class PlanFacts:
    """What keeps copies beyond their own rows: holds, transfers, staging jobs."""

    #: Blobs with an active hold of their own or on a namespace referencing them.
    held: set[int]
    #: Copies that are the source of a queued or running transfer.
    transfer_sources: set[int]
    #: (blob id, location id) pairs an active staging job needs.
    job_needs: set[tuple[int, int]]


def plan_facts(session: Session) -> PlanFacts:
    direct = select(Hold.blob_id).where(Hold.released_at.is_(None), Hold.blob_id.is_not(None))
    via_namespace = (
        select(Reference.blob_id)
        .join(Hold, Hold.namespace_id == Reference.namespace_id)
        .where(Hold.released_at.is_(None))
    )
    held = {b for b in session.scalars(direct) if b is not None}
    held.update(session.scalars(via_namespace))
    in_flight = select(Task.source_copy_id).where(
        Task.kind == "transfer",
        Task.state.in_([TaskState.QUEUED, TaskState.RUNNING]),
        Task.source_copy_id.is_not(None),
    )
    sources = {c for c in session.scalars(in_flight) if c is not None}
    needs = {
        (blob_id, location_id)
        for blob_id, location_id in session.execute(
            select(StagingJobBlob.blob_id, StagingJob.location_id)
            .join(StagingJob, StagingJob.id == StagingJobBlob.job_id)
            .where(StagingJob.ended_at.is_(None))
        )
    }
    return PlanFacts(held, sources, needs)


def _flag(condition: ColumnElement[bool], bit: int) -> ColumnElement[int]:
    return case((condition, bit), else_=0)


def copy_scan_statement(cutoffs: ScanCutoffs) -> Any:
    """Every present or deleting copy with its blob, ordered by blob (``ScannedCopy``)."""
    verified: list[ColumnElement[bool]] = [Copy.verified_at.is_not(None)]
    if cutoffs.verified_since is not None:
        verified.append(Copy.verified_at >= cutoffs.verified_since)
    young = [
        and_(Copy.location_id == location_id, Copy.created_at > after)
        for location_id, after in cutoffs.created_after.items()
    ]
    garbage = and_(
        Blob.unreferenced_since.is_not(None),
        Blob.unreferenced_since <= cutoffs.unreferenced_before,
    )
    flags = (
        _flag(Copy.state == CopyState.PRESENT, PRESENT)
        + _flag(and_(*verified), VERIFIED)
        + (_flag(or_(*young), YOUNG) if young else literal(0))
        + _flag(garbage, GARBAGE)
    )
    # Only disk pressure's least-recently-used order needs a time; parsing one per row
    # of a million costs.
    last_used = (
        case(
            (
                Copy.location_id.in_(cutoffs.last_used_at),
                func.coalesce(Copy.last_access, Copy.created_at),
            ),
            else_=null(),
        )
        if cutoffs.last_used_at
        else null()
    )
    return (
        select(Copy.blob_id, Copy.id, Copy.location_id, flags, Blob.size, Blob.sha256, last_used)
        .join(Blob, Copy.blob_id == Blob.id)
        .where(Copy.state.in_([CopyState.PRESENT, CopyState.DELETING]))
        .order_by(Copy.blob_id)
    )


def scan_copies(session: Session, cutoffs: ScanCutoffs) -> Iterator[ScannedCopy]:
    """``copy_scan_statement``'s rows as the driver's plain tuples, streamed.

    A million rows through SQLAlchemy's result objects cost more than the scan itself,
    so the statement is compiled with its few constant values inline and run on the
    session's own DBAPI connection: same transaction, same snapshot. Every column is an
    integer or text except last used (``last_used_converter``).
    """
    connection = session.connection()
    sql = str(
        copy_scan_statement(cutoffs).compile(
            dialect=connection.dialect, compile_kwargs={"literal_binds": True}
        )
    )
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql)
        while batch := cursor.fetchmany(SCAN_BATCH):
            yield from batch
    finally:
        cursor.close()


def last_used_converter(session: Session) -> Callable[[Any], datetime | None]:
    """Turns a raw last-used value from ``scan_copies`` into what SQLAlchemy would return."""
    column_type = Copy.__table__.c.last_access.type
    process = column_type.result_processor(session.connection().dialect, None)
    return process if process is not None else (lambda value: value)
