"""``ref set|rm|ls|publish``: references by hand, and publishing a draft."""

from __future__ import annotations

from typing import Annotated

import typer

from safekeeper.cli.blobs import print_references
from safekeeper.cli.context import parse_ref_param, state
from safekeeper.cli.output import console, emit_json
from safekeeper.errors import BadInput
from safekeeper.ids import RefSpec, parse_ref
from safekeeper.services.copies import refs
from safekeeper.services.packaging import packages

refs_app = typer.Typer(help="References NAMESPACE:KEY[:LABEL] → blob.", no_args_is_help=True)

RefArg = Annotated[
    RefSpec,
    typer.Argument(metavar="NAMESPACE:KEY[:LABEL]", parser=parse_ref_param, help="The reference."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _namespace_key(value: str) -> RefSpec:
    """Typer parser for ``NAMESPACE:KEY`` (no label: publishing picks both labels)."""
    try:
        if value.count(":") != 1:
            raise BadInput(f"bad reference {value!r}: expected NAMESPACE:KEY (no label)")
        return parse_ref(value)
    except BadInput as exc:
        raise typer.BadParameter(str(exc)) from exc


@refs_app.command("set")
def set_command(
    ctx: typer.Context,
    ref: RefArg,
    blob: Annotated[
        str, typer.Argument(help="Blob id (or a unique prefix) or NAMESPACE:KEY[:LABEL].")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Point a reference at a blob that has a present copy."""
    change = refs.set_ref(state(ctx).archive(), ref, blob)
    if as_json:
        emit_json(change)
        return
    replaced = f" (was {change.previous})" if change.previous else ""
    console.print(f"{change.ref} → {change.sha256}{replaced}")


@refs_app.command("rm")
def rm_command(ctx: typer.Context, ref: RefArg) -> None:
    """Remove a reference; its blob becomes garbage if nothing else refers to it."""
    sha256 = refs.remove_ref(state(ctx).archive(), ref)
    console.print(f"removed {ref} (was {sha256})")


@refs_app.command("ls")
def ls_command(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Argument(help="Only this namespace.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List references."""
    print_references(state(ctx).archive(), namespace, as_json)


@refs_app.command("publish")
def publish_command(
    ctx: typer.Context,
    target: Annotated[
        RefSpec,
        typer.Argument(
            metavar="NAMESPACE:KEY", parser=_namespace_key, help="Key whose draft to publish."
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Point NAMESPACE:KEY:published at the blob of NAMESPACE:KEY:draft."""
    namespace, key = target.namespace, target.key
    outcome = packages.publish(state(ctx).archive(), namespace, key)
    if as_json:
        emit_json(outcome)
        return
    replaced = f" (replacing {outcome.previous})" if outcome.previous else ""
    console.print(f"published {namespace}:{key} → {outcome.sha256}{replaced}")
