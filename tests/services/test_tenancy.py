"""Tenant isolation: another tenant's namespace is indistinguishable from none, and
nobody but an admin takes a namespace name another tenant could want."""

from __future__ import annotations

import pytest

from safekeeper.api.principal import Principal
from safekeeper.archive import Archive
from safekeeper.db.models import Namespace
from safekeeper.db.refs import ensure_namespace
from safekeeper.errors import BadInput, NamespaceReserved, NotFound
from safekeeper.ids import check_tenant_name
from safekeeper.services.access import accounts, tenancy

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
        mine = tenancy.claim_namespace(session, alice, "acme.alice-files", now)
        assert (mine.tenant_id, mine.owner_user_id) == (alice.tenant_id, alice.user_id)
        # same tenant: visible, and claiming returns it without changing the owner
        assert (
            tenancy.claim_namespace(session, bob, "acme.alice-files", now).owner_user_id
            == alice.user_id
        )
        with pytest.raises(NotFound) as other:
            tenancy.visible_namespace(session, carol, "acme.alice-files")
        with pytest.raises(NotFound) as missing:
            tenancy.visible_namespace(session, carol, "no-such-thing")
        assert str(other.value).replace("acme.alice-files", "X") == str(missing.value).replace(
            "no-such-thing", "X"
        )
        # Claiming another tenant's name is refused alike, whether it exists or not.
        with pytest.raises(NamespaceReserved) as taken:
            tenancy.claim_namespace(session, carol, "acme.alice-files", now)
        with pytest.raises(NamespaceReserved) as free:
            tenancy.claim_namespace(session, carol, "acme.no-such-thing", now)
        assert str(taken.value).replace("alice-files", "X") == str(free.value).replace(
            "no-such-thing", "X"
        )
        cli_made = ensure_namespace(session, "legacy", now)
        assert cli_made.tenant_id is None
        with pytest.raises(NotFound):
            tenancy.visible_namespace(session, alice, "legacy")
        assert tenancy.visible_namespace(session, root, "legacy").name == "legacy"
        assert (
            tenancy.visible_namespace(session, root, "acme.alice-files").name == "acme.alice-files"
        )
        session.flush()
        ids = {n.name: n.id for n in session.query(Namespace)}
        assert tenancy.visible_namespace_ids(session, carol) == []
        assert tenancy.visible_namespace_ids(session, bob) == [ids["acme.alice-files"]]
        assert set(tenancy.visible_namespace_ids(session, root)) == set(ids.values())


# -- squatting: who may create which name -------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "namespace", "allowed"),
    [
        ("acme", "acme", True),
        ("acme", "acme.course-1", True),
        ("acme", "acme.a.b", True),
        ("acme", "acme.", False),
        ("acme", "course", False),
        ("acme", "acme-course", False),
        ("acme", "acmecourse", False),
        ("acme", "acme-labs.course", False),
        ("acme", "Acme.course", False),
        ("acme", "globex.acme", False),
        ("acme-labs", "acme-labs.x", True),
        ("acme-labs", "acme.x", False),
        # a tenant named before the rule with a dot would overlap tenant "old": no names
        ("old.co", "old.co.x", False),
        ("old.co", "old.co", False),
    ],
)
def test_tenant_may_create(tenant: str, namespace: str, allowed: bool) -> None:
    assert tenancy.tenant_may_create(tenant, namespace) is allowed


@pytest.mark.parametrize(
    ("name", "valid"),
    [("acme", True), ("acme-labs_2@x+y", True), ("acme.labs", False), ("acme.", False)],
)
def test_tenant_names_cannot_contain_the_separator(name: str, valid: bool) -> None:
    if valid:
        assert check_tenant_name(name) == name
    else:
        with pytest.raises(BadInput, match=r"cannot contain '\.'"):
            check_tenant_name(name)


def test_tenants_are_created_without_the_separator(archive: Archive) -> None:
    with pytest.raises(BadInput, match="cannot contain"):
        accounts.add_tenant(archive, "acme.labs")
    with pytest.raises(BadInput, match="cannot contain"):
        accounts.add_user(
            archive, "dot", tenant="acme.labs", role="member", password=PASSWORD, create_tenant=True
        )
    assert [t.name for t in accounts.list_tenants(archive)] == []


def test_members_cannot_squat_and_admins_assign_names(archive: Archive) -> None:
    for name, tenant, role in (
        ("alice", "acme", "member"),
        ("otto", "globex", "operator"),
        ("root", "ops", "admin"),
    ):
        accounts.add_user(
            archive, name, tenant=tenant, role=role, password=PASSWORD, create_tenant=True
        )
    alice, otto, root = (_principal(archive, n) for n in ("alice", "otto", "root"))
    now = archive.clock()
    for who in (alice, otto):
        with archive.db.write() as session, pytest.raises(NamespaceReserved) as refused:
            tenancy.claim_namespace(session, who, "course", now)
        assert refused.value.code == "namespace_reserved"
        assert refused.value.allowed_prefix == f"{who.tenant_name}."
        assert f"{who.tenant_name}.course" in str(refused.value)
    with archive.db.read() as session:
        assert session.query(Namespace).count() == 0
    # The admin gives the name to globex; it then works for globex's users only.
    accounts.assign_namespaces(archive, "globex", ["course"], create=True)
    with archive.db.write() as session:
        assert tenancy.claim_namespace(session, otto, "course", now).name == "course"
        with pytest.raises(NamespaceReserved):
            tenancy.claim_namespace(session, alice, "course", now)
    # Members still create their tenant's names; admins any name.
    with archive.db.write() as session:
        created = tenancy.claim_namespace_created(session, alice, "acme.course", now)
        assert created[1] and created[0].tenant_id == alice.tenant_id
        assert tenancy.claim_namespace_created(session, alice, "acme", now)[1]
        assert tenancy.claim_namespace(session, root, "anything", now).tenant_id == root.tenant_id
