"""Tenant isolation: another tenant's namespace is indistinguishable from none."""

from __future__ import annotations

import pytest

from safekeeper.api.principal import Principal
from safekeeper.archive import Archive
from safekeeper.db.models import Namespace
from safekeeper.db.refs import ensure_namespace
from safekeeper.errors import NotFound
from safekeeper.services import accounts, tenancy

PASSWORD = "correct horse battery"


def _principal(archive: Archive, name: str) -> Principal:
    _token, principal = accounts.sign_in(
        archive, accounts.LoginThrottle(100, archive.config.server.login_window), name, PASSWORD
    )
    return principal


def test_claim_see_and_hide(archive: Archive) -> None:
    for name, tenant, role in (
        ("alice", "acme", "member"),
        ("bob", "acme", "member"),
        ("carol", "globex", "member"),
        ("root", "ops", "admin"),
    ):
        accounts.add_user(
            archive, name, tenant=tenant, role=role, password=PASSWORD, create_tenant=True
        )
    alice, bob, carol, root = (_principal(archive, n) for n in ("alice", "bob", "carol", "root"))
    now = archive.clock()
    with archive.db.write() as session:
        mine = tenancy.claim_namespace(session, alice, "alice-files", now)
        assert (mine.tenant_id, mine.owner_user_id) == (alice.tenant_id, alice.user_id)
        # same tenant: visible, and claiming returns it without changing the owner
        assert (
            tenancy.claim_namespace(session, bob, "alice-files", now).owner_user_id == alice.user_id
        )
        with pytest.raises(NotFound) as other:
            tenancy.claim_namespace(session, carol, "alice-files", now)
        with pytest.raises(NotFound) as missing:
            tenancy.visible_namespace(session, carol, "no-such-thing")
        assert str(other.value).replace("alice-files", "X") == str(missing.value).replace(
            "no-such-thing", "X"
        )
        cli_made = ensure_namespace(session, "legacy", now)
        assert cli_made.tenant_id is None
        with pytest.raises(NotFound):
            tenancy.visible_namespace(session, alice, "legacy")
        assert tenancy.visible_namespace(session, root, "legacy").name == "legacy"
        assert tenancy.visible_namespace(session, root, "alice-files").name == "alice-files"
        session.flush()
        ids = {n.name: n.id for n in session.query(Namespace)}
        assert tenancy.visible_namespace_ids(session, carol) == []
        assert tenancy.visible_namespace_ids(session, bob) == [ids["alice-files"]]
        assert set(tenancy.visible_namespace_ids(session, root)) == set(ids.values())
