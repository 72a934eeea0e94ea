"""Staging jobs: a job needs some blobs at a processing location until it ends.

Starting a job pins its blobs' copies at the processing location like a hold pins a
blob (``safekeeper.db.claims.take_back``): a gc claim on one that has not reached its
fence is taken back; one past its fence makes the start fail with Conflict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from safekeeper.db.blobs import get_blob
from safekeeper.db.catalog import get_location
from safekeeper.db.claims import take_back
from safekeeper.db.copies import live_copy
from safekeeper.db.models import Copy, CopyState, Location, StagingJob, StagingJobBlob
from safekeeper.engine.dispatch import dispatch
from safekeeper.errors import BadInput, Conflict, NotFound
from safekeeper.ids import check_name
from safekeeper.services.copies.inventory import resolve_blob
from safekeeper.services.copies.replication import schedule_transfers

if TYPE_CHECKING:
    from safekeeper.archive import Archive


@dataclass(frozen=True)
class JobView:
    id: int
    name: str
    location: str
    blobs: int
    created_at: datetime
    ended_at: datetime | None
    task_ids: tuple[int, ...] = ()


def start_job(archive: Archive, name: str, location: str, blobs: Sequence[str]) -> JobView:
    """Declare the job and schedule transfers of its blobs to the processing location."""
    check_name("job name", name)
    if not blobs:
        raise BadInput("a staging job needs at least one blob")
    settings = archive.config.locations.get(location)
    if settings is None:
        raise NotFound(f"no location named {location!r}")
    if settings.kind != "processing":
        raise BadInput(f"location {location!r} is of kind {settings.kind}, not processing")
    hashes = sorted({resolve_blob(archive, text) for text in blobs})
    now = archive.clock()
    try:
        with archive.db.write() as session:
            target = get_location(session, location)
            job = StagingJob(name=name, location_id=target.id, created_at=now)
            session.add(job)
            session.flush()
            for sha256 in hashes:
                blob = get_blob(session, sha256)
                session.add(StagingJobBlob(job_id=job.id, blob_id=blob.id))
                take_back(session, [blob.id], now, location_id=target.id)
                if live_copy(session, blob.id, target.id) is None:
                    session.execute(
                        insert(Copy).values(
                            blob_id=blob.id,
                            location_id=target.id,
                            state=CopyState.PENDING,
                            created_at=now,
                            updated_at=now,
                            retries=0,
                        )
                    )
            session.flush()
            task_ids = schedule_transfers(archive, session)
            view = JobView(job.id, name, location, len(hashes), now, None, tuple(task_ids))
    except IntegrityError as exc:
        raise Conflict(f"a staging job named {name!r} is already active") from exc
    dispatch(archive, view.task_ids)
    return view


def _view(session: Session, job: StagingJob) -> JobView:
    count = session.scalar(
        select(func.count()).select_from(StagingJobBlob).where(StagingJobBlob.job_id == job.id)
    )
    location = session.get_one(Location, job.location_id).name
    return JobView(job.id, job.name, location, int(count or 0), job.created_at, job.ended_at)


def end_job(archive: Archive, name: str) -> JobView:
    """End the job: its copies become deletable once no other active job needs them."""
    with archive.db.write() as session:
        job = session.scalar(
            select(StagingJob).where(StagingJob.name == name, StagingJob.ended_at.is_(None))
        )
        if job is None:
            raise NotFound(f"no active staging job named {name!r}")
        job.ended_at = archive.clock()
        return _view(session, job)


def list_jobs(archive: Archive, include_ended: bool = False) -> list[JobView]:
    query = select(StagingJob).order_by(StagingJob.id)
    if not include_ended:
        query = query.where(StagingJob.ended_at.is_(None))
    with archive.db.read() as session:
        return [_view(session, job) for job in session.scalars(query)]
