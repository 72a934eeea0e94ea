"""Gather the policy's evidence for a set of copies, a few set-based queries per batch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from safekeeper.db.models import (
    Blob,
    Copy,
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
    session: Session, copy_ids: Collection[int] | None = None, blob_ids: Collection[int] = ()
) -> tuple[dict[int, tuple[CopyFacts, Evidence]], dict[int, list[CopyFacts]]]:
    """``gather``, plus every live copy of the blobs concerned by blob id (gc's
    re-confirmation needs the other copies' ids and fingerprints, read in the same
    transaction as the evidence they are checked for)."""
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
                state=fact.state,
                created_at=fact.created_at,
                unreferenced_since=unreferenced[fact.blob_id],
                held=fact.blob_id in held,
                transfer_source=fact.copy_id in sources,
                needed_by_job=fact.kind == "processing" and (fact.blob_id, fact.location) in needs,
                others=others,
            ),
        )
    return result, by_blob
