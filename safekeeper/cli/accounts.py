"""``safekeeper users …`` and ``safekeeper tenants …``: the operator's root console.

The CLI needs no sign-in: whoever can run it can open the database anyway. First run:

    safekeeper tenants add acme
    safekeeper users add alice --tenant acme --role admin      # prompts for the password
    safekeeper tenants assign acme course                      # acme's users see it

Passwords come from a prompt (typed twice) or ``--password-stdin``, never from an
argument, which would land in shell history and ``ps``.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Annotated

import typer

from safekeeper.cli.context import state
from safekeeper.cli.output import console, emit_json, plural, table, when
from safekeeper.db.models import USER_ROLES
from safekeeper.errors import BadInput
from safekeeper.services.access import accounts, erasure

users_app = typer.Typer(help="Users: add, list, change password, disable, delete.")
tenants_app = typer.Typer(help="Tenants: the owners of namespaces and users.")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]


def _role(value: str) -> str:
    if value not in USER_ROLES:
        raise typer.BadParameter(f"use one of {', '.join(USER_ROLES)}")
    return value


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise BadInput("no terminal to prompt for the password: use --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise BadInput("the passwords differ")
    return accounts.check_password(password)


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


@users_app.command("add")
def users_add(
    ctx: typer.Context,
    name: str,
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="The user's tenant.")],
    role: Annotated[str, typer.Option(callback=_role, help="admin, operator or member.")] = (
        "member"
    ),
    create_tenant: Annotated[
        bool, typer.Option("--create-tenant", help="Create the tenant if it does not exist.")
    ] = False,
    password_stdin: PasswordStdin = False,
) -> None:
    """Add a user (asks for the password)."""
    password = _read_password(password_stdin)
    view = accounts.add_user(
        state(ctx).archive(),
        name,
        tenant=tenant,
        role=role,
        password=password,
        create_tenant=create_tenant,
    )
    console.print(f"added user {view.name} ({view.role}) in tenant {view.tenant}")


@users_app.command("ls")
def users_ls(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant.")] = None,
    all_users: Annotated[bool, typer.Option("--all", help="Include deleted users.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """List users."""
    views = accounts.list_users(state(ctx).archive(), tenant=tenant, include_deleted=all_users)
    if json_out:
        emit_json(views)
        return
    table(
        None,
        ["user", "tenant", "role", "status", "created"],
        [
            (
                v.name,
                v.tenant,
                v.role,
                "deleted" if v.deleted else "disabled" if v.disabled else "active",
                when(v.created_at),
            )
            for v in views
        ],
    )


@users_app.command("passwd")
def users_passwd(ctx: typer.Context, name: str, password_stdin: PasswordStdin = False) -> None:
    """Set a user's password; every session of theirs ends."""
    password = _read_password(password_stdin)
    accounts.set_password(state(ctx).archive(), name, password)
    console.print(f"password of {name} changed; their sessions ended")


@users_app.command("role")
def users_role(
    ctx: typer.Context,
    name: str,
    role: Annotated[str, typer.Argument(callback=_role, help="admin, operator or member.")],
) -> None:
    """Change a user's role; their sessions end."""
    ended = accounts.set_role(state(ctx).archive(), name, role)
    console.print(f"{name} is now {role}; {ended} sessions ended")


@users_app.command("disable")
def users_disable(ctx: typer.Context, name: str) -> None:
    """Disable a user: sessions end, API tokens are revoked, sign-in is refused."""
    ended = accounts.set_disabled(state(ctx).archive(), name, True)
    console.print(f"disabled {name}; {ended} sessions ended")


@users_app.command("enable")
def users_enable(ctx: typer.Context, name: str) -> None:
    """Let a disabled user sign in again."""
    accounts.set_disabled(state(ctx).archive(), name, False)
    console.print(f"enabled {name}")


@users_app.command("rm")
def users_rm(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="One or more users.")],
    hard: Annotated[bool, typer.Option("--hard", help="Remove the rows, not only mark.")] = False,
    erase: Annotated[
        bool,
        typer.Option(
            "--erase",
            help="Also remove the references in their own namespaces, so gc deletes "
            "their blobs after the grace period (implies --hard).",
        ),
    ] = False,
    json_out: JsonFlag = False,
) -> None:
    """Delete users; their sessions end at once."""
    archive = state(ctx).archive()
    if erase:
        reports = [erasure.erase_user(archive, name, actor=_actor()) for name in names]
        if json_out:
            emit_json(reports)
            return
        for report in reports:
            console.print(
                f"erased {report.user}: {len(report.references)} references removed, "
                f"{len(set(report.blobs))} blobs left to gc, {report.sessions_ended} sessions ended"
            )
        return
    ended = accounts.delete_users(archive, names, hard=hard)
    if json_out:
        emit_json({"deleted": names, "sessions_ended": ended})
        return
    console.print(f"deleted {', '.join(names)}; {ended} sessions ended")


@tenants_app.command("add")
def tenants_add(ctx: typer.Context, name: str) -> None:
    """Add a tenant."""
    accounts.add_tenant(state(ctx).archive(), name)
    console.print(f"added tenant {name}")


@tenants_app.command("ls")
def tenants_ls(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """List tenants."""
    views = accounts.list_tenants(state(ctx).archive())
    if json_out:
        emit_json(views)
        return
    table(
        None, ["tenant", "users", "created"], [(v.name, v.users, when(v.created_at)) for v in views]
    )


@tenants_app.command("assign")
def tenants_assign(
    ctx: typer.Context,
    tenant: str,
    namespaces: Annotated[list[str], typer.Argument(help="Namespaces to give the tenant.")],
    owner: Annotated[
        str | None, typer.Option(help="A user of the tenant who owns them (for --erase).")
    ] = None,
    create: Annotated[
        bool, typer.Option("--create", help="Create namespaces that do not exist yet.")
    ] = False,
) -> None:
    """Give namespaces to a tenant: its users see them; other tenants get 404.
    A namespace that does not exist is an error unless --create."""
    accounts.assign_namespaces(state(ctx).archive(), tenant, namespaces, owner, create=create)
    verb = "now belongs" if len(namespaces) == 1 else "now belong"
    console.print(f"{', '.join(namespaces)} {verb} to tenant {tenant}")


@tenants_app.command("rm")
def tenants_rm(ctx: typer.Context, name: str) -> None:
    """Delete a tenant: its users can no longer sign in; their sessions end."""
    ended = accounts.delete_tenant(state(ctx).archive(), name)
    console.print(f"deleted tenant {name}; {plural(ended, 'session')} ended")
