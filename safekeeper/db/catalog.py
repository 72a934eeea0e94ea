"""Sites and locations: the configuration is the source of truth, the tables follow it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from safekeeper.config import Config
from safekeeper.db.engine import lock_schema
from safekeeper.db.models import Location, Site
from safekeeper.errors import NotFound


def sync_catalog(session: Session, config: Config) -> dict[str, Location]:
    """Insert or update a row per configured site and location; return locations by name.

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
    for name, wanted in config.locations.items():
        row = existing.get(name)
        site_id = sites[wanted.site].id
        store_url = config.store_url(name)
        if row is None:
            row = Location(name=name, kind=wanted.kind, site_id=site_id, store_url=store_url)
            session.add(row)
            existing[name] = row
        elif (row.kind, row.site_id, row.store_url) != (wanted.kind, site_id, store_url):
            row.kind, row.site_id, row.store_url = wanted.kind, site_id, store_url
    session.flush()
    return {name: existing[name] for name in config.locations}


def get_location(session: Session, name: str) -> Location:
    location = session.scalar(select(Location).where(Location.name == name))
    if location is None:
        raise NotFound(f"no location named {name!r}")
    return location
