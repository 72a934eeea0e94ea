"""The ``workers`` table: each worker or server process reports itself while it runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from safekeeper.db.models import Worker


def report(
    session: Session,
    name: str,
    *,
    role: str,
    sites: Sequence[str],
    fingerprint: str,
    version: str,
    now: datetime,
) -> None:
    """Insert this process's row, or refresh its heartbeat."""
    updated = session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(heartbeat_at=now, config_fingerprint=fingerprint, sites=",".join(sites))
        .execution_options(synchronize_session=False)
    )
    if not updated.rowcount:  # type: ignore[attr-defined]
        session.add(
            Worker(
                name=name,
                role=role,
                sites=",".join(sites),
                config_fingerprint=fingerprint,
                version=version,
                started_at=now,
                heartbeat_at=now,
            )
        )


def forget_older_than(session: Session, before: datetime) -> None:
    """Drop rows of processes silent since ``before`` (gone for good)."""
    session.execute(delete(Worker).where(Worker.heartbeat_at < before))


def all_workers(session: Session) -> list[Worker]:
    return list(session.scalars(select(Worker).order_by(Worker.role, Worker.name)))


def latest_heartbeat_by_site(session: Session, roles: Sequence[str]) -> dict[str, datetime]:
    """The newest heartbeat of a process of one of ``roles``, for each site it serves."""
    latest: dict[str, datetime] = {}
    rows = session.execute(
        select(Worker.sites, Worker.heartbeat_at).where(Worker.role.in_(roles))
    ).all()
    for sites, heartbeat_at in rows:
        for site in filter(None, sites.split(",")):
            if site not in latest or heartbeat_at > latest[site]:
                latest[site] = heartbeat_at
    return latest
