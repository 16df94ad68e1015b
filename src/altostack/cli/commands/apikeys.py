"""``alto apikey``: long-lived credentials for scripts, signing each request.

The secret exists only in the create answer; ``--save`` stores it in the credentials
file as the profile's active credential so it is never copied by hand.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated

import typer

from altostack.cli.commands.common import LimitOption, YesOption, confirm, settle
from altostack.cli.output import emit_list, emit_object, note
from altostack.cli.state import OutputOption, get_state
from altostack.client import Unauthenticated, path_of, update_profile

app = typer.Typer(help="API keys (access key id + secret) for signed requests.")

BASE = "/v1/api-keys"
COLUMNS = ["id", "description", "role", "status", "expires_at", "last_used_at", "created_at"]


@app.command("list")
def list_(ctx: typer.Context, limit: LimitOption = 100, output: OutputOption = None) -> None:
    """Your API keys (never their secrets)."""
    state = get_state(ctx, output)
    emit_list(state, state.client().list_all(BASE, max_items=limit), COLUMNS, title="API keys")


@app.command()
def create(
    ctx: typer.Context,
    description: Annotated[str | None, typer.Option(help="What it is for")] = None,
    expires_at: Annotated[
        datetime | None, typer.Option(help="Expiry, e.g. 2030-01-31 (default: never)")
    ] = None,
    role: Annotated[str | None, typer.Option(help="Narrow the key to this role")] = None,
    save: Annotated[
        bool, typer.Option("--save", help="Store it in the credentials file as the active key")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Create a key; its secret is printed this once."""
    state = get_state(ctx, output)
    client = state.client()
    body: dict[str, object] = {}
    if description:
        body["description"] = description
    if expires_at:
        body["expires_at"] = expires_at.astimezone().isoformat()
    if role:
        body["role"] = role
    created = client.post(BASE, body)
    emit_object(state, created)
    if not save:
        note(state, "Store the secret now: it is not shown again.")
        return
    key_id = created.get("access_key_id") or created["id"]
    path = update_profile(
        state.profile,
        url=client.base_url,
        access_key_id=key_id,
        secret_access_key=created["secret"],
        token=None,
    )
    if client.auth_kind == "token":
        # The key replaces the session: leave no live token behind.
        with contextlib.suppress(Unauthenticated):
            client.logout()
    note(
        state,
        f"Saved {key_id} as the active credential of profile "
        f"{client.credentials.profile!r} in {path}.",
    )


@app.command()
def revoke(
    ctx: typer.Context, key_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Revoke a key; requests signed with it fail from now on."""
    state = get_state(ctx, output)
    confirm(yes, f"Revoke API key {key_id}?")
    response = state.client().send("DELETE", path_of(BASE, key_id))
    settle(state, response, "api_key", done=f"Revoked {key_id}.")
