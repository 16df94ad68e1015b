"""``alto tenant``: the organisations sharing the cloud (platform admins)."""

from __future__ import annotations

from typing import Annotated

import typer

from altostack.cli.commands.common import LimitOption, YesOption, ask, confirm, settle
from altostack.cli.output import emit_list, emit_object
from altostack.cli.state import OutputOption, get_state
from altostack.cli.waiting import NoWaitOption, TimeoutOption
from altostack.client import path_of

app = typer.Typer(help="Tenants (platform administrators).")

BASE = "/v1/tenants"
COLUMNS = ["id", "name", "status", "contact_email", "balance", "created_at"]


@app.command("list")
def list_(ctx: typer.Context, limit: LimitOption = 50, output: OutputOption = None) -> None:
    """All tenants, newest first."""
    state = get_state(ctx, output)
    emit_list(state, state.client().list_all(BASE, max_items=limit), COLUMNS, title="tenants")


@app.command()
def show(ctx: typer.Context, tenant_id: str, output: OutputOption = None) -> None:
    """One tenant."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(BASE, tenant_id)))


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="lower case letters, digits and '-'")],
    owner_username: Annotated[str, typer.Option(help="The tenant's first user")] = "admin",
    owner_password: Annotated[
        str | None,
        typer.Option(envvar="ALTO_OWNER_PASSWORD", help="The first user's password (prompted)"),
    ] = None,
    contact_email: Annotated[str | None, typer.Option(help="Who to tell about it")] = None,
    output: OutputOption = None,
) -> None:
    """Create a tenant with its owner (a tenant admin)."""
    state = get_state(ctx, output)
    body: dict[str, object] = {
        "name": name,
        "owner": {
            "username": owner_username,
            "password": ask(owner_password, "Owner password", secret=True, twice=True),
        },
    }
    if contact_email:
        body["contact_email"] = contact_email
    emit_object(state, state.client().post(BASE, body))


def _action(ctx: typer.Context, tenant_id: str, verb: str, output: OutputOption) -> None:
    state = get_state(ctx, output)
    emit_object(state, state.client().post(path_of(BASE, tenant_id, "actions", verb), {}))


@app.command()
def freeze(ctx: typer.Context, tenant_id: str, output: OutputOption = None) -> None:
    """Stop a tenant's users from changing anything (reads still work)."""
    _action(ctx, tenant_id, "freeze", output)


@app.command()
def unfreeze(ctx: typer.Context, tenant_id: str, output: OutputOption = None) -> None:
    """Lift a freeze."""
    _action(ctx, tenant_id, "unfreeze", output)


@app.command()
def delete(
    ctx: typer.Context,
    tenant_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a tenant."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete tenant {tenant_id}?")
    response = state.client().send("DELETE", path_of(BASE, tenant_id))
    settle(
        state, response, "tenant", done=f"Deleted {tenant_id}.", wait=not no_wait, timeout=timeout
    )
