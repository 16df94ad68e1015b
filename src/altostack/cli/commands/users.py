"""``alto user``: the people (sub-accounts) of a tenant, and your own password."""

from __future__ import annotations

from typing import Annotated

import typer

from altostack.cli.commands.common import LimitOption, YesOption, ask, confirm, settle
from altostack.cli.output import emit_list, emit_object, note
from altostack.cli.state import OutputOption, get_state
from altostack.client import path_of

app = typer.Typer(help="Users of a tenant; `alto user passwd` changes your own password.")

BASE = "/v1/users"
COLUMNS = ["id", "username", "tenant_id", "role", "status", "is_platform_admin", "created_at"]


NewPassword = Annotated[
    str | None,
    typer.Option(envvar="ALTO_NEW_PASSWORD", help="New password (prompted when missing)"),
]


@app.command("list")
def list_(
    ctx: typer.Context,
    tenant_id: Annotated[str | None, typer.Option(help="Another tenant's (admins)")] = None,
    limit: LimitOption = 50,
    output: OutputOption = None,
) -> None:
    """Users, newest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(BASE, tenant_id=tenant_id, max_items=limit)
    emit_list(state, items, COLUMNS, title="users")


@app.command()
def show(ctx: typer.Context, user_id: str, output: OutputOption = None) -> None:
    """One user."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(BASE, user_id)))


@app.command()
def create(
    ctx: typer.Context,
    username: str,
    role: Annotated[str, typer.Option(help="A role name; see `alto role list`")] = "readonly",
    tenant_id: Annotated[str | None, typer.Option(help="In another tenant (admins)")] = None,
    password: NewPassword = None,
    output: OutputOption = None,
) -> None:
    """Create a user."""
    state = get_state(ctx, output)
    password = ask(password, "Password", secret=True, twice=True)
    body: dict[str, object] = {"username": username, "password": password, "role": role}
    if tenant_id:
        body["tenant_id"] = tenant_id
    emit_object(state, state.client().post(BASE, body))


def _action(
    ctx: typer.Context, user_id: str, verb: str, body: dict[str, str], output: OutputOption
) -> None:
    state = get_state(ctx, output)
    response = state.client().send("POST", path_of(BASE, user_id, "actions", verb), json=body)
    settle(state, response, "user", done=f"Done: {verb} {user_id}.")


@app.command()
def disable(ctx: typer.Context, user_id: str, output: OutputOption = None) -> None:
    """Stop a user from logging in; their sessions and keys stop working at once."""
    _action(ctx, user_id, "disable", {}, output)


@app.command()
def enable(ctx: typer.Context, user_id: str, output: OutputOption = None) -> None:
    """Let a disabled user log in again."""
    _action(ctx, user_id, "enable", {}, output)


@app.command("reset-password")
def reset_password(
    ctx: typer.Context,
    user_id: str,
    password: NewPassword = None,
    output: OutputOption = None,
) -> None:
    """Set another user's password (admins)."""
    password = ask(password, "New password", secret=True, twice=True)
    _action(ctx, user_id, "reset-password", {"password": password}, output)


@app.command()
def delete(
    ctx: typer.Context, user_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete a user."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete user {user_id}?")
    response = state.client().send("DELETE", path_of(BASE, user_id))
    settle(state, response, "user", done=f"Deleted {user_id}.")


@app.command()
def passwd(
    ctx: typer.Context,
    old_password: Annotated[
        str | None,
        typer.Option(envvar="ALTO_PASSWORD", help="Current password (prompted when missing)"),
    ] = None,
    new_password: NewPassword = None,
) -> None:
    """Change your own password."""
    state = get_state(ctx)
    body = {
        "old_password": ask(old_password, "Current password", secret=True),
        "new_password": ask(new_password, "New password", secret=True, twice=True),
    }
    state.client().post(path_of(BASE, "me", "actions", "change-password"), body)
    note(state, "Password changed.")
