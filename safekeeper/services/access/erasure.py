"""Erasing a user: their own namespaces' references go, then the user does.

Erasure takes what is the user's alone: the references in the namespaces they own
(``namespaces.owner_user_id``) that they set (``refs.set_by_user_id``), or that no
one is recorded as setting (the CLI, or before 0006). If a colleague set a reference
in one of those namespaces, others depend on it: erasure refuses (Conflict) and
lists those references, and nothing changes; an admin first gives the namespace to
another owner (``tenant assign --owner``), then erases.

Erasure does not delete bytes itself. It removes those references, so each blob
nobody else references becomes garbage (``blobs.unreferenced_since``); after the
policy's grace period gc deletes every copy of it, everywhere, through the same
checked and audited path as any other deletion (rule ``garbage``). Blobs other
namespaces still reference stay.

The trail ties the two together: one audit row per removed reference (action
``erase``, the blob's SHA-256, the user and the reference in reason and evidence),
then gc's rows for the same ``blob_sha256``. All of it is one catalog transaction: a
namespace on hold refuses (PolicyDenied) and nothing is removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, exists, select

from safekeeper.db import accounts as queries
from safekeeper.db import attempts, audit, refs
from safekeeper.db.models import Blob, Hold, Namespace, Reference
from safekeeper.errors import Conflict
from safekeeper.ids import RefSpec
from safekeeper.services.access import sessions
from safekeeper.services.access.accounts import hard_delete_users

if TYPE_CHECKING:
    from safekeeper.archive import Archive

ACTION = "erase"
#: At most this many of the references others depend on are named in the refusal.
_NAMED = 20


def split_erasure(
    user_id: int, references: Sequence[tuple[str, int | None]]
) -> tuple[list[str], list[str]]:
    """The references (name, who set them) of the user's namespaces, split into those
    erasure takes (set by the user or unattributed) and those others depend on."""
    taken = [name for name, setter in references if setter in (None, user_id)]
    others = [name for name, setter in references if setter not in (None, user_id)]
    return taken, others


@dataclass
class ErasureReport:
    user: str
    references: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    sessions_ended: int = 0


def erase_user(archive: Archive, name: str, *, actor: str) -> ErasureReport:
    """Remove the user's own references and the user (hard delete); see the module."""
    now = archive.clock()
    report = ErasureReport(user=name)
    with archive.db.write() as session:
        user = queries.user_named(session, name, include_deleted=True)
        user_id = user.id
        owned = session.execute(
            select(Namespace.id, Namespace.name)
            .where(Namespace.owner_user_id == user_id)
            .order_by(Namespace.name)
        ).all()
        found = session.execute(
            select(
                Namespace.name,
                Reference.key,
                Reference.label,
                Blob.sha256,
                Reference.set_by_user_id,
            )
            .join(Namespace, Reference.namespace_id == Namespace.id)
            .join(Blob, Reference.blob_id == Blob.id)
            .where(Namespace.owner_user_id == user_id)
            .order_by(Namespace.name, Reference.key, Reference.label)
        ).all()
        _, others = split_erasure(
            user_id, [(str(RefSpec(n, k, lb)), setter) for n, k, lb, _, setter in found]
        )
        if others:
            named = ", ".join(others[:_NAMED]) + (" …" if len(others) > _NAMED else "")
            raise Conflict(
                f"cannot erase user {name}: {len(others)} reference(s) in their namespaces "
                f"were set by other users, who depend on them: {named}; give those "
                "namespaces to another owner first (tenant assign --owner)"
            )
        rows = [(n, k, lb, sha) for n, k, lb, sha, _ in found]
        entries: list[dict[str, Any]] = []
        for namespace, key, label, sha256 in rows:
            spec = RefSpec(namespace, key, label)
            refs.remove_reference(session, spec, now)
            report.references.append(str(spec))
            report.blobs.append(sha256)
            entries.append(
                {
                    "at": now,
                    "actor": actor,
                    "action": ACTION,
                    "blob_sha256": sha256,
                    "rule": "erasure",
                    "reason": f"erasure of user {name}: reference {spec} removed",
                    "evidence": {"user": name, "reference": str(spec)},
                }
            )
        entries.append(
            {
                "at": now,
                "actor": actor,
                "action": ACTION,
                "rule": "erasure",
                "reason": f"erasure of user {name}: {len(rows)} references removed, user deleted",
                "evidence": {"user": name, "references": report.references},
            }
        )
        audit.record(session, entries)
        hard_delete_users(session, [user_id])
        # Emptied namespaces go too (their names may be personal), unless a hold ever
        # named one: the hold's history keeps its namespace.
        ever_held = exists().where(Hold.namespace_id == Namespace.id)
        namespace_ids = [namespace_id for namespace_id, _ in owned]
        attempts.delete_for_namespaces(session, namespace_ids)
        gone = session.execute(
            delete(Namespace)
            .where(Namespace.id.in_(namespace_ids), ~ever_held)
            .returning(Namespace.name)
            .execution_options(synchronize_session=False)
        )
        report.namespaces = sorted(gone.scalars())
    report.sessions_ended = sessions.end_user_sessions(archive, [user_id])
    return report
