"""``alto role``: named sets of permissions given to users and API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from altostack.cli.commands.common import LimitOption, YesOption, confirm, settle
from altostack.cli.output import emit_list, emit_object
from altostack.cli.state import OutputOption, get_state
from altostack.client import path_of

app = typer.Typer(help="Roles: built-in and custom permission sets.")

BASE = "/v1/roles"
COLUMNS = ["id", "name", "builtin", "description", "permissions"]


@app.command("list")
def list_(ctx: typer.Context, limit: LimitOption = 100, output: OutputOption = None) -> None:
    """Roles visible to you (built-in ones included)."""
    state = get_state(ctx, output)
    emit_list(state, state.client().list_all(BASE, max_items=limit), COLUMNS, title="roles")


@app.command()
def create(
    ctx: typer.Context,
    name: str,
    permission: Annotated[
        list[str],
        typer.Option("--permission", "-p", help="Repeat for each, e.g. -p vm.read -p vm.write"),
    ],
    description: Annotated[str | None, typer.Option(help="What the role is for")] = None,
    output: OutputOption = None,
) -> None:
    """Create a custom role."""
    state = get_state(ctx, output)
    body: dict[str, object] = {"name": name, "permissions": permission}
    if description:
        body["description"] = description
    emit_object(state, state.client().post(BASE, body))


@app.command()
def delete(
    ctx: typer.Context, role_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete a custom role."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete role {role_id}?")
    response = state.client().send("DELETE", path_of(BASE, role_id))
    settle(state, response, "role", done=f"Deleted {role_id}.")
