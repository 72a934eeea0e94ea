"""Setting and removing references by hand, each in its own transaction, audited.

A replaced or removed reference may leave its old blob unreferenced; the garbage
rule takes it from there after the grace period (``db/refs.py`` keeps
``unreferenced_since`` true).
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from safekeeper.db import audit
from safekeeper.db.blobs import find_blob
from safekeeper.db.models import Blob
from safekeeper.db.refs import remove_reference, set_reference
from safekeeper.errors import NotFound
from safekeeper.ids import RefSpec
from safekeeper.services.copies import inventory

if TYPE_CHECKING:
    from datetime import datetime

    from safekeeper.archive import Archive


def default_actor() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class RefChange:
    ref: RefSpec
    sha256: str
    #: The blob the reference pointed at before, if it was another one.
    previous: str | None


def set_ref(
    archive: Archive,
    spec: RefSpec,
    blob: str,
    *,
    actor: str | None = None,
    action: str = "ref-set",
) -> RefChange:
    """Point ``spec`` at ``blob`` (an id, unique prefix or reference). The blob must
    have a present copy (Conflict otherwise; NotFound if there is no such blob)."""
    sha256 = inventory.resolve_blob(archive, blob)
    now = archive.clock()
    with archive.db.write() as session:
        target = find_blob(session, sha256)
        if target is None:
            raise NotFound(f"no blob {sha256}")
        return point(session, now, spec, target, actor=actor, action=action)


def point(
    session: Session,
    now: datetime,
    spec: RefSpec,
    blob: Blob,
    *,
    actor: str | None = None,
    action: str = "ref-set",
) -> RefChange:
    """Inside the caller's transaction: set the reference and audit the change."""
    previous = _sha256_of(session, set_reference(session, spec, blob, now))
    _audit(session, now, actor, action, blob.sha256, spec, previous)
    return RefChange(spec, blob.sha256, previous)


def remove_ref(archive: Archive, spec: RefSpec, *, actor: str | None = None) -> str:
    """Drop ``spec``; return the blob id it pointed at (NotFound if none)."""
    now = archive.clock()
    with archive.db.write() as session:
        blob_id = remove_reference(session, spec, now)
        sha256 = _sha256_of(session, blob_id) or ""
        _audit(session, now, actor, "ref-removed", sha256, spec, None)
    return sha256


def _sha256_of(session: Session, blob_id: int | None) -> str | None:
    if blob_id is None:
        return None
    return session.scalar(select(Blob.sha256).where(Blob.id == blob_id))


def _audit(
    session: Session,
    now: datetime,
    actor: str | None,
    action: str,
    sha256: str,
    spec: RefSpec,
    previous: str | None,
) -> None:
    audit.record(
        session,
        [
            {
                "at": now,
                "actor": actor or default_actor(),
                "action": action,
                "blob_sha256": sha256,
                "reason": f"{action} {spec}",
                "evidence": {"ref": str(spec), "previous": previous},
            }
        ],
    )
