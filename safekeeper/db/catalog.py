"""Sites and locations: the configuration is the source of truth, the tables follow it —
except a location's store and kind, which hold copies and never change silently."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from safekeeper.config import Config
from safekeeper.db.engine import lock_schema
from safekeeper.db.models import Blob, Copy, CopyState, Location, Site
from safekeeper.errors import ConfigError, NotFound
from safekeeper.store_places import same_store_url


@dataclass(frozen=True)
class Drift:
    """A location whose configured store or kind differs from the catalog's."""

    name: str
    field: str  # "store" or "kind"
    recorded: str
    configured: str
    copies: int

    def describe(self) -> str:
        option = "--store" if self.field == "store" else "--kind"
        return (
            f"locations.{self.name}.{self.field}: {self.configured} differs from the "
            f"{self.field} the catalog records for location '{self.name}' ({self.recorded}), "
            f"which holds {self.copies} copies; safekeeper never follows such a change "
            f"silently. If that is intended (the objects moved there, with their "
            f".safekeeper-store marker), run `safekeeper locations move {self.name} "
            f"{option} {self.configured}`; otherwise restore the old setting"
        )


def sync_catalog(
    session: Session, config: Config, *, moving: Collection[str] = ()
) -> dict[str, Location]:
    """Insert or update a row per configured site and location; return locations by name.

    A location whose configured store URL or kind differs from its row is refused with
    a ConfigError naming ``safekeeper locations move`` — unless it holds no copies
    (then the row follows, and its store is set up anew on first use), or it is in
    ``moving`` (the row is left for ``services.copies.identity.move_location``).
    Locations dropped from the configuration keep their rows: copies still point at them.
    Processes starting together on one database take turns (``lock_schema``).
    """
    lock_schema(session.connection())
    site_names = set(config.sites) | {loc.site for loc in config.locations.values()}
    sites = {site.name: site for site in session.scalars(select(Site))}
    for name in sorted(site_names - set(sites)):
        sites[name] = Site(name=name)
        session.add(sites[name])
    session.flush()
    existing = {loc.name: loc for loc in session.scalars(select(Location))}
    drifts: list[Drift] = []
    for name, wanted in config.locations.items():
        row = existing.get(name)
        site_id = sites[wanted.site].id
        store_url = config.store_url(name)
        if row is None:
            row = Location(name=name, kind=wanted.kind, site_id=site_id, store_url=store_url)
            session.add(row)
            existing[name] = row
            continue
        if row.site_id != site_id:
            row.site_id = site_id  # routing only: the copies stay where they are
        same_store = same_store_url(row.store_url, store_url)
        if not same_store and _follows_data_dir(wanted.store, row.store_url):
            row.store_url = store_url  # the marker, checked on first use, proves it
            same_store = True
        if (same_store and row.kind == wanted.kind) or name in moving:
            continue
        copies = live_copy_count(session, row.id)
        if copies == 0:
            if not same_store:
                row.store_uuid = None  # a new store, set up on first use
            row.kind, row.store_url = wanted.kind, store_url
            continue
        if not same_store:
            drifts.append(Drift(name, "store", row.store_url, store_url, copies))
        if row.kind != wanted.kind:
            drifts.append(Drift(name, "kind", row.kind, wanted.kind, copies))
    if drifts:
        origin = str(config.source) if config.source else "the configuration"
        raise ConfigError("\n".join(f"{origin}: {drift.describe()}" for drift in drifts))
    session.flush()
    return {name: existing[name] for name in config.locations}


def catalog_is_current(session: Session, config: Config) -> bool:
    """Would ``sync_catalog`` change nothing? Every configured site has its row and
    every configured location its row with the same site, store and kind.

    Read-only, so a command can open the archive without a write transaction when the
    configuration has not changed (the common case): no wait behind another process's
    write lock, no commit. Anything else — a new site or location, a moved site, a
    store (by ``same_store_url``, as ``sync_catalog`` compares) or kind that differs —
    answers False and the caller runs ``sync_catalog``, which decides (and refuses)."""
    site_names = set(config.sites) | {loc.site for loc in config.locations.values()}
    if not site_names <= set(session.scalars(select(Site.name))):
        return False
    rows = {
        name: (site, kind, store_url)
        for name, site, kind, store_url in session.execute(
            select(Location.name, Site.name, Location.kind, Location.store_url).join(
                Site, Location.site_id == Site.id
            )
        )
    }
    for name, wanted in config.locations.items():
        row = rows.get(name)
        if row is None:
            return False
        site, kind, store_url = row
        if site != wanted.site or kind != wanted.kind:
            return False
        if not same_store_url(store_url, config.store_url(name)):
            return False
    return True


def _follows_data_dir(configured: str, recorded_url: str) -> bool:
    """A relative ``file:`` store (``file:inbox``) moves with its data directory: the
    recorded absolute path still ends with the same relative path."""
    if not configured.startswith("file:") or configured.startswith("file:/"):
        return False
    relative = os.path.normpath(configured[len("file:") :])
    if relative.startswith(".."):
        return False
    recorded = unquote(urlsplit(recorded_url).path)
    return recorded.endswith("/" + relative)


def get_location(session: Session, name: str) -> Location:
    location = session.scalar(select(Location).where(Location.name == name))
    if location is None:
        raise NotFound(f"no location named {name!r}")
    return location


def live_copy_count(session: Session, location_id: int) -> int:
    """Copies at the location that are, are becoming or should be there (not deleted)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Copy)
            .where(Copy.location_id == location_id, Copy.state != CopyState.DELETED)
        )
        or 0
    )


def sample_present(session: Session, location_id: int, limit: int) -> list[tuple[str, int]]:
    """(sha256, blob id) of up to ``limit`` of the newest present copies at a location."""
    rows = session.execute(
        select(Blob.sha256, Blob.id)
        .join(Copy, Copy.blob_id == Blob.id)
        .where(
            Copy.location_id == location_id,
            Copy.state.in_([CopyState.PRESENT, CopyState.DELETING]),
        )
        .order_by(Copy.id.desc())
        .limit(limit)
    )
    return [(sha256, blob_id) for sha256, blob_id in rows]


def owner_of_store(session: Session, store_uuid: str) -> str | None:
    """The location whose store carries marker ``store_uuid``, if any records it."""
    return session.scalar(select(Location.name).where(Location.store_uuid == store_uuid))


def record_store_uuid(session: Session, location_id: int, store_uuid: str) -> bool:
    """Record the marker of a location set up for the first time; False if the row
    already records one (a concurrent set-up won: compare with it)."""
    result = session.execute(
        update(Location)
        .where(Location.id == location_id, Location.store_uuid.is_(None))
        .values(store_uuid=store_uuid)
        .returning(Location.id)
    )
    return result.first() is not None
