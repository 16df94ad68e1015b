"""``alto events``: the audit log (who did what, when, from where, how it ended)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from altostack.cli.output import emit_list
from altostack.cli.state import OutputOption, get_state

COLUMNS = [
    "time",
    "action",
    "result",
    "actor_name",
    "resource_id",
    "status_code",
    "source_ip",
    "failure_reason",
]
TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S"]


def _aware(moment: datetime | None) -> datetime | None:
    """A time typed without a zone is local time, as a person at this terminal means it."""
    return moment.astimezone() if moment is not None else None


def events(
    ctx: typer.Context,
    since: Annotated[
        datetime | None, typer.Option(formats=TIME_FORMATS, help="From this time (inclusive)")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(formats=TIME_FORMATS, help="Before this time")
    ] = None,
    resource_id: Annotated[str | None, typer.Option(help="Only about this resource")] = None,
    actor: Annotated[str | None, typer.Option(help="User id or tenant/user")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. auth.login")] = None,
    result: Annotated[str | None, typer.Option(help="success or failure")] = None,
    tenant_id: Annotated[str | None, typer.Option(help="Another tenant's (admins)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many")] = 50,
    output: OutputOption = None,
) -> None:
    """Audit events, newest first."""
    state = get_state(ctx, output)
    items = state.client().events(
        since=_aware(since),
        until=_aware(until),
        resource_id=resource_id,
        actor=actor,
        action=action,
        result=result,
        tenant_id=tenant_id,
        max_items=limit,
    )
    emit_list(state, items, COLUMNS, title="events")


def register(app: typer.Typer) -> None:
    app.command()(events)
