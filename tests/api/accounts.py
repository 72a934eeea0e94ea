"""Tenants, users and credentials for API tests.

Two tenants: ``acme`` (an admin, an operator and two members) and ``other`` (an
operator and a member). Each user gets an API token; ``headers(name)`` is the
``Authorization`` header that signs a request in as that user. Import the fixture as
``from tests.api.accounts import accounts_fixture  # noqa: F401`` and ask for
``accounts``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.db.models import Tenant, User
from safekeeper.services.access import accounts, tokens

PASSWORD = "correct horse battery staple"
#: user → (tenant, role)
USERS = {
    "root": ("acme", "admin"),
    "ops": ("acme", "operator"),
    "alice": ("acme", "member"),
    "bob": ("acme", "member"),
    "otto": ("other", "operator"),
    "olga": ("other", "member"),
}


@dataclass
class Accounts:
    archive: Archive
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


@functools.cache
def _password_hash() -> str:
    # Hashed once per test process: argon2 is slow on purpose.
    return accounts.hash_password(PASSWORD)


def add_accounts(archive: Archive) -> Accounts:
    made = Accounts(archive)
    for tenant in sorted({tenant for tenant, _ in USERS.values()}):
        accounts.add_tenant(archive, tenant)
    user_ids = {}
    with archive.db.write() as session:
        tenant_ids = {n: i for n, i in session.execute(select(Tenant.name, Tenant.id))}
        for name, (tenant, role) in USERS.items():
            user = User(
                tenant_id=tenant_ids[tenant],
                name=name,
                role=role,
                password_hash=_password_hash(),
                created_at=archive.clock(),
            )
            session.add(user)
            session.flush()
            user_ids[name] = user.id
    for name, user_id in user_ids.items():
        made.tokens[name] = tokens.create_token(archive, user_id, "tests")[1]
    return made


def login(client: TestClient, name: str) -> str:
    """Sign ``client`` in with a session cookie; returns the CSRF token to send."""
    response = client.post("/api/auth/login", json={"user": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    csrf: str = response.json()["csrf_token"]
    return csrf


@pytest.fixture(name="accounts")
def accounts_fixture(app_archive: Archive) -> Accounts:
    return add_accounts(app_archive)
