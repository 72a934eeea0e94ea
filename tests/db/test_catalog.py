"""``catalog_is_current``: opening an archive skips the catalog's write transaction only
when ``sync_catalog`` would change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.config import Config, load_config, write_default
from safekeeper.db.catalog import catalog_is_current, sync_catalog
from safekeeper.db.engine import Database
from safekeeper.db.models import Location, Site
from safekeeper.errors import ConfigError


def _config(data_dir: Path, **overrides: str) -> Config:
    environ = {f"SAFEKEEPER__{key.upper()}": value for key, value in overrides.items()}
    return load_config(data_dir / "safekeeper.toml", environ=environ)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_default(tmp_path / "data")
    with Archive(_config(tmp_path / "data")):
        pass  # migrated, catalog synced
    return tmp_path / "data"


def _is_current(config: Config) -> bool:
    database = Database(config.database_url)
    try:
        with database.read() as session:
            return catalog_is_current(session, config)
    finally:
        database.close()


def test_an_unchanged_configuration_is_current(data_dir: Path) -> None:
    assert _is_current(_config(data_dir))


def test_the_same_store_spelled_otherwise_is_current(data_dir: Path) -> None:
    # sync_catalog compares stores with same_store_url and leaves such a row alone.
    spelled = f"file://localhost{data_dir / 'archive'}/"
    assert _is_current(_config(data_dir, locations__archive__store=spelled))


@pytest.mark.parametrize(
    "overrides",
    [
        {"locations__archive__kind": "buffer"},
        {"locations__archive__site": "remote", "sites__remote__description": "another"},
        {"sites__remote__description": "a site with no location yet"},
        {"locations__archive__store": "file:archive2"},
        {
            "locations__extra__kind": "archive",
            "locations__extra__site": "local",
            "locations__extra__store": "file:extra",
        },
    ],
    ids=["kind", "site", "new-site", "store", "new-location"],
)
def test_any_change_is_not_current_and_goes_through_the_sync(
    data_dir: Path, overrides: dict[str, str]
) -> None:
    config = _config(data_dir, **overrides)
    assert not _is_current(config)
    # Opening the archive syncs (no copies yet: the rows follow), and then it is current.
    with Archive(config) as archive, archive.db.read() as session:
        locations = {
            name: (kind, site)
            for name, kind, site in session.execute(
                select(Location.name, Location.kind, Site.name).join(
                    Site, Location.site_id == Site.id
                )
            )
        }
        sites = set(session.scalars(select(Site.name)))
    assert _is_current(config)
    for name, wanted in config.locations.items():
        assert locations[name] == (wanted.kind, wanted.site)
    assert set(config.sites) <= sites


def test_a_drift_with_copies_is_still_refused(data_dir: Path, tmp_path: Path) -> None:
    """The read-only check never lets a changed store through: the sync refuses it."""
    source = tmp_path / "f.txt"
    source.write_bytes(b"kept")
    with Archive(_config(data_dir)) as archive:
        archive.put_file(source, ref="docs:f")
    changed = _config(data_dir, locations__inbox__store="file:elsewhere")
    assert not _is_current(changed)
    with pytest.raises(ConfigError, match="locations move"):
        Archive(changed)
    database = Database(changed.database_url)
    with database.write() as session:  # moving: the sync leaves the row for the move
        sync_catalog(session, changed, moving=["inbox"])
    database.close()
    assert not _is_current(changed)
