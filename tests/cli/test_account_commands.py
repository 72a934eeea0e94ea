"""``safekeeper users`` and ``tenants``: the first-run path, errors and revocation."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from safekeeper.archive import Archive
from safekeeper.config import load_config
from safekeeper.db.models import Namespace, Tenant, User
from safekeeper.errors import Unauthenticated
from safekeeper.services.access import accounts, sessions
from safekeeper.services.access.login_throttle import LoginThrottle
from tests.cli.test_blob_commands import cli

PASSWORD = b"correct horse battery\n"


def test_first_run_then_list(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli(data, "tenants", "add", "acme")[0] == 0
    code, out, _ = cli(
        data,
        "users",
        "add",
        "alice",
        "--tenant",
        "acme",
        "--role",
        "admin",
        "--password-stdin",
        input=PASSWORD,
    )
    assert code == 0 and "alice" in out
    code, out, _ = cli(
        data,
        "users",
        "add",
        "bob",
        "--tenant",
        "globex",
        "--create-tenant",
        "--password-stdin",
        input=PASSWORD,
    )
    assert code == 0
    code, out, _ = cli(data, "users", "ls", "--json")
    assert [(u["name"], u["tenant"], u["role"]) for u in json.loads(out)] == [
        ("alice", "acme", "admin"),
        ("bob", "globex", "member"),
    ]
    code, out, _ = cli(data, "tenants", "ls", "--json")
    assert {t["name"]: t["users"] for t in json.loads(out)} == {"acme": 1, "globex": 1}


def test_errors_and_usage(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, _, err = cli(
        data, "users", "add", "x", "--tenant", "none", "--password-stdin", input=PASSWORD
    )
    assert code == 1 and "error: no tenant 'none'" in err
    code, _, err = cli(
        data,
        "users",
        "add",
        "x",
        "--tenant",
        "t",
        "--create-tenant",
        "--password-stdin",
        input=b"short\n",
    )
    assert code == 1 and "8 to 1024" in err
    code, _, _ = cli(
        data,
        "users",
        "add",
        "x",
        "--tenant",
        "t",
        "--role",
        "root",
        "--password-stdin",
        input=PASSWORD,
    )
    assert code == 2
    code, _, err = cli(data, "users", "rm", "ghost")
    assert code == 1 and "ghost" in err
    code, _, err = cli(data, "tenants", "add", "a/b")
    assert code == 1 and "bad tenant" in err


def test_disable_rm_and_erase_end_sessions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("alice", "bob", "carol"):
        cli(
            data,
            "users",
            "add",
            name,
            "--tenant",
            "acme",
            "--create-tenant",
            "--password-stdin",
            input=PASSWORD,
        )
    with Archive(load_config(data_dir=data)) as archive:
        throttle = LoginThrottle(100, archive.config.server.login_window)
        token = {
            n: accounts.sign_in(archive, throttle, n, PASSWORD.decode().strip())[0]
            for n in ("alice", "bob", "carol")
        }
    assert cli(data, "users", "disable", "alice")[1].startswith("disabled alice; 1 sessions")
    assert cli(data, "users", "rm", "bob")[0] == 0
    code, out, _ = cli(data, "users", "rm", "carol", "--erase", "--json")
    assert code == 0 and json.loads(out)[0]["sessions_ended"] == 1
    with Archive(load_config(data_dir=data)) as archive:
        for name in ("alice", "bob", "carol"):
            try:
                sessions.validate(archive, token[name])
            except Unauthenticated as exc:
                assert exc.code == "session_revoked"
            else:
                raise AssertionError(f"{name} still signed in")
    code, out, _ = cli(data, "users", "ls", "--all", "--json")
    assert [(u["name"], u["disabled"], u["deleted"]) for u in json.loads(out)] == [
        ("alice", True, False),
        ("bob", False, True),
    ]
    assert cli(data, "users", "enable", "alice")[0] == 0
    assert cli(data, "users", "role", "alice", "operator")[0] == 0
    assert (
        cli(data, "users", "passwd", "alice", "--password-stdin", input=b"new password\n")[0] == 0
    )
    assert cli(data, "tenants", "rm", "acme")[0] == 0
    assert json.loads(cli(data, "tenants", "ls", "--json")[1]) == []


def test_assigning_namespaces_gives_them_to_a_tenant(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for tenant in ("acme", "globex"):
        assert cli(data, "tenants", "add", tenant)[0] == 0
    code, _, _ = cli(
        data, "users", "add", "bob", "--tenant", "globex", "--password-stdin", input=PASSWORD
    )
    assert code == 0
    code, _, err = cli(data, "tenants", "assign", "acme", "course", "--owner", "bob")
    assert code == 1 and "not in tenant 'acme'" in err
    assert cli(data, "tenants", "assign", "nobody", "course")[0] == 1
    code, _, err = cli(data, "tenants", "assign", "globex", "course", "--owner", "bob")
    assert code == 1 and "no namespace 'course'" in err and "--create" in err
    code, out, _ = cli(
        data, "tenants", "assign", "globex", "course", "notes", "--owner", "bob", "--create"
    )
    assert code == 0 and "course, notes now belong to tenant globex" in out
    code, out, _ = cli(data, "tenants", "assign", "globex", "notes", "--owner", "bob")  # exists
    assert code == 0 and "notes now belongs to tenant globex" in out

    archive = Archive(load_config(data_dir=data))
    try:
        with archive.db.read() as session:
            rows = session.execute(
                select(Namespace.name, Tenant.name, User.name)
                .join(Tenant, Namespace.tenant_id == Tenant.id)
                .join(User, Namespace.owner_user_id == User.id)
                .order_by(Namespace.name)
            ).all()
    finally:
        archive.close()
    assert [tuple(row) for row in rows] == [("course", "globex", "bob"), ("notes", "globex", "bob")]
