"""``alto login``, ``alto logout``, ``alto whoami``: the session of a profile."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from altostack.cli.commands.common import ask
from altostack.cli.output import emit_object, note
from altostack.cli.state import OutputFormat, OutputOption, get_state
from altostack.client import ConfigurationError, Credentials, Unauthenticated, update_profile


def login(
    ctx: typer.Context,
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="User name (prompted when missing)")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(envvar="ALTO_PASSWORD", help="Password (prompted when missing)"),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="API URL, e.g. http://127.0.0.1:8080 [ALTO_URL]")
    ] = None,
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="Tenant name [ALTO_TENANT]")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Log in and keep the token in the credentials file (profile: --profile)."""
    state = get_state(ctx, output)
    known = state.credentials(url)
    if not known.url:
        raise ConfigurationError(f"no API URL for profile {known.profile!r}: pass --url")
    tenant = tenant or known.tenant or "system"
    username = ask(username, "Username")
    password = ask(password, "Password", secret=True)
    client = state.make_client(Credentials(url=known.url, profile=known.profile))
    try:
        issued = client.login(tenant, username, password)
    finally:
        client.close()
    path = update_profile(
        state.profile,
        url=known.url,
        tenant=tenant,
        username=username,
        token=issued["token"],
    )
    user = issued.get("user") or {}
    note(
        state,
        f"Logged in to {known.url} as {tenant}/{username} (role {user.get('role', '?')}); "
        f"token expires {issued.get('expires_at')}. Saved to profile {known.profile!r} in {path}.",
    )
    if state.output is OutputFormat.table:
        emit_object(state, {**user, "expires_at": issued.get("expires_at")})
    else:  # the API's answer minus the token, which stays in the credentials file
        emit_object(state, {"user": user, "expires_at": issued.get("expires_at")})


def logout(ctx: typer.Context) -> None:
    """Revoke this profile's token on the server and remove it from the credentials file."""
    state = get_state(ctx)
    creds = state.credentials()
    if not creds.token:
        note(state, f"Profile {creds.profile!r} has no token; nothing to do.")
        return
    if creds.url:
        client = state.make_client(creds)
        try:
            # Already expired or revoked: forgetting it is all that is left to do.
            with contextlib.suppress(Unauthenticated):
                client.logout()
        finally:
            client.close()
    if creds.source == "file":
        update_profile(state.profile, token=None)
        note(state, f"Logged out; removed the token from profile {creds.profile!r}.")
    else:
        note(state, f"Logged out; the token came from the {creds.source}, unset it there.")


def whoami(ctx: typer.Context, output: OutputOption = None) -> None:
    """Show who the active credentials belong to."""
    state = get_state(ctx, output)
    emit_object(state, state.client().whoami())


def register(app: typer.Typer) -> None:
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
