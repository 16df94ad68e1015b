"""``alto type``: instance types, the sizes a VM can have (``c1.small``…).

Everyone can list the enabled types; creating, enabling and disabling them is for
platform administrators. Commands take a type's id or its name.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from altostack.cli.commands.common import YesOption, confirm, settle
from altostack.cli.commands.compute_common import Row, emit_rows, human_mib
from altostack.cli.output import emit_object
from altostack.cli.state import OutputOption, get_state
from altostack.client import path_of

app = typer.Typer(help="Instance types: the sizes of VMs (vCPUs, memory, disk range).")

BASE = "/v1/instance-types"
COLUMNS = ["name", "id", "vcpus", "memory", "disk", "gpus", "enabled", "description"]


def type_row(itype: Row) -> Row:
    """An instance type as a table row: memory and the disk range people can read."""
    return {
        "name": itype.get("name"),
        "id": itype.get("id"),
        "vcpus": itype.get("vcpus"),
        "memory": human_mib(itype.get("memory_mib")),
        "disk": f"{itype.get('min_disk_gib')}-{itype.get('max_disk_gib')} GiB",
        "gpus": itype.get("gpus"),
        "enabled": itype.get("enabled"),
        "description": itype.get("description"),
    }


@app.command("list")
def list_(
    ctx: typer.Context,
    all_: Annotated[
        bool, typer.Option("--all", help="Disabled types too (platform admins)")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Instance types, smallest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(BASE, include_disabled=True if all_ else None)
    emit_rows(state, items, COLUMNS, title="instance types", derive=type_row)


@app.command()
def show(ctx: typer.Context, type_ref: str, output: OutputOption = None) -> None:
    """One instance type, by id or name."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(BASE, type_ref)))


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="lower case, digits, '.' and '-', e.g. c2.large")],
    vcpus: Annotated[int, typer.Option(min=1, help="Virtual CPUs")],
    memory_mib: Annotated[int, typer.Option(min=128, help="Memory in MiB")],
    min_disk: Annotated[int | None, typer.Option(help="Smallest root disk, GiB")] = None,
    max_disk: Annotated[int | None, typer.Option(help="Largest root disk, GiB")] = None,
    gpus: Annotated[int, typer.Option(help="0, 1, 2 or 4")] = 0,
    description: Annotated[str | None, typer.Option(help="What it is for")] = None,
    output: OutputOption = None,
) -> None:
    """Create an instance type (platform admins)."""
    state = get_state(ctx, output)
    body: dict[str, Any] = {"name": name, "vcpus": vcpus, "memory_mib": memory_mib}
    if min_disk is not None:
        body["min_disk_gib"] = min_disk
    if max_disk is not None:
        body["max_disk_gib"] = max_disk
    if gpus:
        body["gpus"] = gpus
    if description is not None:
        body["description"] = description
    emit_object(state, state.client().post(BASE, body))


def _action(ctx: typer.Context, type_ref: str, verb: str, output: OutputOption) -> None:
    state = get_state(ctx, output)
    emit_object(state, state.client().post(path_of(BASE, type_ref, "actions", verb), {}))


@app.command()
def enable(ctx: typer.Context, type_ref: str, output: OutputOption = None) -> None:
    """Offer the type for new VMs again."""
    _action(ctx, type_ref, "enable", output)


@app.command()
def disable(ctx: typer.Context, type_ref: str, output: OutputOption = None) -> None:
    """Stop offering the type for new VMs; existing VMs keep it."""
    _action(ctx, type_ref, "disable", output)


@app.command()
def delete(
    ctx: typer.Context, type_ref: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete an instance type; existing VMs keep their size."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete instance type {type_ref}?")
    response = state.client().send("DELETE", path_of(BASE, type_ref))
    settle(state, response, None, done=f"Deleted {type_ref}.")
