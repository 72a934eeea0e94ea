"""Security events in the audit log: who changed which account or credential, from
where, and every failed sign-in.

Each event is one ``audit_log`` row with ``rule = "security"`` (filter on it in the
dashboard's audit page, ``GET /api/audit?rule=security`` and ``safekeeper audit
--rule security``): ``actor`` is who acted (``api:NAME``, ``dashboard:NAME``, or the
name tried for a sign-in), ``action`` what happened, ``at`` when, and the evidence
names the account concerned (``user``), its tenant and the client address (``ip``).
Nothing secret goes in: no password, no token, no hash; a token appears by its id and
name only. The evidence names a user, so only admins read these rows
(``tenant_data.visible_audit``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safekeeper.db import audit

if TYPE_CHECKING:
    from safekeeper.archive import Archive

RULE = "security"


def record_event(
    archive: Archive,
    action: str,
    *,
    actor: str,
    user: str | None = None,
    tenant: str | None = None,
    ip: str | None = None,
    detail: str | None = None,
) -> None:
    """One security event, in its own transaction (after the change it describes)."""
    target = user if user is not None else f"tenant {tenant}"
    evidence: dict[str, Any] = {"user": user, "tenant": tenant, "ip": ip}
    if detail is not None:
        evidence["detail"] = detail
    entry = {
        "at": archive.clock(),
        "actor": actor[:200],
        "action": action,
        "rule": RULE,
        "reason": f"{action}: {target}" + (f" ({detail})" if detail else ""),
        "evidence": evidence,
    }
    with archive.db.write() as session:
        audit.record(session, [entry])
