"""``alto ops``: list, show and wait for operations (asynchronous work)."""

from __future__ import annotations

from typing import Annotated

import typer

from altostack.cli.output import emit_list, emit_object
from altostack.cli.state import OutputOption, get_state
from altostack.cli.waiting import TimeoutOption, raise_if_failed, wait_with_progress
from altostack.client import path_of

app = typer.Typer(help="Operations: the asynchronous work behind every 202 answer.")

COLUMNS = ["id", "kind", "state", "progress", "resource_id", "created_at", "finished_at"]
LimitOption = Annotated[int, typer.Option(min=1, help="Show at most this many")]


@app.command("list")
def list_(
    ctx: typer.Context,
    state_: Annotated[
        str | None, typer.Option("--state", help="pending, running, succeeded or failed")
    ] = None,
    resource_id: Annotated[str | None, typer.Option(help="Only this resource's")] = None,
    kind: Annotated[str | None, typer.Option(help="e.g. vm.create")] = None,
    tenant_id: Annotated[str | None, typer.Option(help="Another tenant's (admins)")] = None,
    limit: LimitOption = 50,
    output: OutputOption = None,
) -> None:
    """Operations, newest first."""
    state = get_state(ctx, output)
    items = state.client().operations(
        state=state_, resource_id=resource_id, kind=kind, tenant_id=tenant_id, max_items=limit
    )
    emit_list(state, items, COLUMNS, title="operations")


@app.command()
def show(ctx: typer.Context, op_id: str, output: OutputOption = None) -> None:
    """One operation, with its error when it failed."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of("/v1/operations", op_id)))


@app.command()
def wait(
    ctx: typer.Context,
    op_id: str,
    timeout: TimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Wait for an operation with a progress bar; exit 1 if it failed, 4 on timeout."""
    state = get_state(ctx, output)
    op = wait_with_progress(state, op_id, timeout)
    emit_object(state, op)
    raise_if_failed(op)
