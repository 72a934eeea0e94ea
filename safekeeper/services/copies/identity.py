"""Store identity (invariant 10): a store is what it was.

Every store carries an identity marker (``stores.marker``) written once, when its
location is first set up; the catalog records the marker's uuid for the location
(``locations.store_uuid``, unique: one store, one location). Before a store is used —
written, deleted from, or counted as evidence — ``Archive.store`` checks that the
marker is there and is the recorded one (``confirm``), and checks again at most
``IDENTITY_TTL`` later and right before destructive batches (``recheck``).

The decision is ``judge``, a pure function over what the catalog records and what the
store shows; this module does the I/O around it. See docs/design.md, "Store identity".
"""

from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from safekeeper.db import audit
from safekeeper.db.catalog import (
    get_location,
    owner_of_store,
    record_store_uuid,
    sample_present,
)
from safekeeper.errors import AlreadyExists, BadInput, PermanentStoreError, StoreIdentityError
from safekeeper.store_places import same_store_url
from safekeeper.stores import Store, open_store
from safekeeper.stores.marker import MARKER_NAME, StoreMarker

if TYPE_CHECKING:
    from safekeeper.archive import Archive

#: Seconds a confirmed identity is trusted before ``Archive.store`` reads the marker
#: again (a disk can be unmounted under a long-running server). Writers (ingest, the
#: transfer's target) and gc batches ask for a fresh check instead.
IDENTITY_TTL = 1.0
#: Present copies looked for in a store that has no marker and no recorded one
#: (a catalog from before markers): at least one must be there.
PRESENCE_SAMPLE = 16


class Action(enum.StrEnum):
    USE = "use"  # the recorded marker is there
    ADOPT = "adopt"  # first set-up; the store already has an unowned marker: record it
    INITIALIZE = "initialize"  # first set-up of a store without marker: write one
    REFUSE = "refuse"


@dataclass(frozen=True)
class Facts:
    """What the catalog records and what the store shows, for one location."""

    location: str
    url: str
    recorded: str | None  # the uuid in the catalog, None before the first set-up
    found: str | None  # the uuid of the store's marker, None if it has none
    #: The location that records ``found``, if any (it may be ``location`` itself).
    owner: str | None = None
    #: First set-up without a marker: present copies the catalog records there, and
    #: how many of those a sample found in the store.
    sampled: int = 0
    sample_found: int = 0


@dataclass(frozen=True)
class Judgement:
    action: Action
    reason: str = ""


def judge(facts: Facts) -> Judgement:
    """May the location use this store — and must its identity be set up first?"""
    where = f"store of location '{facts.location}' ({facts.url})"
    if facts.recorded is not None:
        if facts.found is None:
            return Judgement(
                Action.REFUSE,
                f"{where} has no identity marker ({MARKER_NAME}): is the disk mounted, and "
                f"is the path right? The catalog records store {facts.recorded} there",
            )
        if facts.found != facts.recorded:
            whose = f" of location '{facts.owner}'" if facts.owner else ""
            return Judgement(
                Action.REFUSE,
                f"{where} carries the identity marker {facts.found}{whose}, not "
                f"{facts.recorded}: another store is mounted or configured there; check the "
                "mount and the configured path",
            )
        return Judgement(Action.USE)
    if facts.found is not None:
        if facts.owner is not None and facts.owner != facts.location:
            return Judgement(
                Action.REFUSE,
                f"{where} is the store of location '{facts.owner}' (same identity marker "
                f"{facts.found}): two locations cannot share one store; give each its own",
            )
        return Judgement(Action.ADOPT)
    if facts.sampled and not facts.sample_found:
        return Judgement(
            Action.REFUSE,
            f"{where} has no identity marker and none of the {facts.sampled} copies the "
            "catalog records there: is the disk mounted, and is the path right?",
        )
    return Judgement(Action.INITIALIZE)


# -- I/O around the judgement -------------------------------------------------------


def _read(store: Store, location: str) -> str | None:
    raw = store.read_marker()
    if raw is None:
        return None
    try:
        return StoreMarker.parse(raw, store.url).uuid
    except PermanentStoreError as exc:
        raise StoreIdentityError(f"store of location '{location}': {exc}") from exc


def _facts(archive: Archive, location: str, store: Store, found: str | None) -> Facts:
    with archive.db.read() as session:
        row = get_location(session, location)
        owner = owner_of_store(session, found) if found is not None else None
        sample = (
            sample_present(session, row.id, PRESENCE_SAMPLE)
            if row.store_uuid is None and found is None
            else []
        )
        recorded = row.store_uuid
    hits = 0
    for sha256, blob_id in sample:
        if store.exists(archive.key_for(location, sha256, blob_id)):
            hits += 1
            break
    return Facts(location, store.url, recorded, found, owner, len(sample), hits)


def confirm(archive: Archive, location: str, store: Store) -> str:
    """Check the store of ``location`` against the catalog, setting its identity up
    the first time; return the marker's uuid or raise StoreIdentityError."""
    found = _read(store, location)
    for _ in range(3):  # a concurrent set-up of the same store can make us look again
        judgement = judge(_facts(archive, location, store, found))
        if judgement.action == Action.REFUSE:
            if found is None and (found := _read(store, location)) is not None:
                # A concurrent first use wrote the marker after our read, then recorded
                # it (marker first, record second): the catalog read after our read saw
                # the record. Judge what is there now; a disk that is away stays None.
                continue
            raise StoreIdentityError(judgement.reason)
        if judgement.action == Action.USE and found is not None:
            return found
        if judgement.action == Action.INITIALIZE:
            # AlreadyExists: another process set it up just now; read what it wrote.
            with contextlib.suppress(AlreadyExists):
                store.initialize(StoreMarker.new(location).encode())
            found = _read(store, location)
            if found is None:
                raise StoreIdentityError(
                    f"store of location '{location}' ({store.url}): the identity marker "
                    "just written cannot be read back"
                )
            continue
        if found is not None and _record(archive, location, found):
            return found
    raise StoreIdentityError(f"store of location '{location}' ({store.url}): identity unsettled")


def _record(archive: Archive, location: str, found: str) -> bool:
    """Record ``found`` for a location set up for the first time; False: look again."""
    try:
        with archive.db.write() as session:
            return record_store_uuid(session, get_location(session, location).id, found)
    except IntegrityError:
        return False  # another location recorded it at the same moment: judge again


def recheck(location: str, store: Store, expected: str) -> None:
    """The cheap re-check of an open store: its marker is still ``expected``."""
    found = _read(store, location)
    if found != expected:
        judgement = judge(Facts(location, store.url, expected, found))
        raise StoreIdentityError(judgement.reason)


# -- moving a location to another store, or changing its kind --------------------------


@dataclass(frozen=True)
class MoveReport:
    location: str
    old_store: str
    new_store: str
    old_kind: str
    new_kind: str
    store_uuid: str
    #: How the new store was accepted: "same marker", "adopted marker", "new marker".
    how: str
    copies_checked: int


def move_location(
    archive: Archive,
    name: str,
    *,
    store_url: str | None = None,
    kind: str | None = None,
    actor: str = "operator",
) -> MoveReport:
    """Point the catalog's row for ``name`` at the store and kind the configuration
    now gives, after checking the new store is this location's (same marker) or holds
    its copies; audited. ``store_url``/``kind`` must repeat what the configuration says:
    the command confirms an edit, it does not make one."""
    config = archive.config
    if name not in config.locations:
        raise BadInput(f"no location named {name!r} in {archive.config_origin}")
    if store_url is None and kind is None:
        raise BadInput("give --store URL and/or --kind KIND: what the location moves to")
    new_url, new_kind = config.store_url(name), config.locations[name].kind
    if store_url is not None and not same_store_url(config.resolve_store_url(store_url), new_url):
        raise BadInput(
            f"{archive.config_origin} gives locations.{name}.store = {new_url}, not "
            f"{store_url}: edit the configuration first, then confirm it with this command"
        )
    if kind is not None and kind != new_kind:
        raise BadInput(
            f"{archive.config_origin} gives locations.{name}.kind = {new_kind}, not {kind}: "
            "edit the configuration first, then confirm it with this command"
        )
    with archive.db.read() as session:
        row = get_location(session, name)
        old_url, old_kind, recorded = row.store_url, row.kind, row.store_uuid
        sample = sample_present(session, row.id, PRESENCE_SAMPLE)
    store = open_store(new_url, config.locations[name].store_options())
    found = _read(store, name)
    checked = 0
    if found is not None:
        with archive.db.read() as session:
            owner = owner_of_store(session, found)
        if owner is not None and owner != name:
            raise StoreIdentityError(
                f"{new_url} is the store of location '{owner}' (identity marker {found}): "
                f"location '{name}' cannot move onto it"
            )
        if recorded is not None and found != recorded:
            raise StoreIdentityError(
                f"{new_url} carries the identity marker {found}, not {recorded} of location "
                f"'{name}': it is another store"
            )
        how = "same marker" if found == recorded else "adopted marker"
    else:
        keys = [archive.key_for(name, sha256, blob_id) for sha256, blob_id in sample]
        missing = [key for key in keys if not store.exists(key)]
        checked = len(keys)
        if missing:
            raise StoreIdentityError(
                f"{new_url} has no identity marker and lacks {len(missing)} of the {checked} "
                f"copies of location '{name}' checked (e.g. {missing[0]}): copy the objects "
                f"and {MARKER_NAME} there first"
            )
        store.initialize(StoreMarker.new(name).encode())
        found = _read(store, name)
        how = "new marker"
    if found is None:
        raise StoreIdentityError(f"{new_url}: the identity marker cannot be read back")
    report = MoveReport(name, old_url, new_url, old_kind, new_kind, found, how, checked)
    with archive.db.write() as session:
        row = get_location(session, name)
        row.store_url, row.kind, row.store_uuid = new_url, new_kind, found
        audit.record(session, [_audit_row(report, actor, archive)])
    archive.forget_store(name)
    return report


def _audit_row(report: MoveReport, actor: str, archive: Archive) -> dict[str, object]:
    return {
        "at": archive.clock(),
        "actor": actor,
        "action": "location-move",
        "blob_sha256": None,
        "location": report.location,
        "rule": "explicit-move",
        "reason": (
            f"store {report.old_store} -> {report.new_store}, kind {report.old_kind} -> "
            f"{report.new_kind} ({report.how})"
        ),
        "evidence": {
            "old_store": report.old_store,
            "new_store": report.new_store,
            "old_kind": report.old_kind,
            "new_kind": report.new_kind,
            "store_uuid": report.store_uuid,
            "accepted_by": report.how,
            "copies_checked": report.copies_checked,
        },
    }
