"""``alto quota``: how much a tenant may use, and how much it does."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from altostack.cli.commands.common import parse_assignment
from altostack.cli.output import cell, emit_list, emit_object
from altostack.cli.state import CliState, OutputFormat, OutputOption, get_state
from altostack.client import path_of

app = typer.Typer(help="Quotas per tenant (-1 means unlimited).")

BASE = "/v1/quotas"


def _show(state: CliState, answer: dict[str, Any]) -> None:
    if state.output is not OutputFormat.table:
        emit_object(state, answer)
        return
    rows = [
        {"quota": name, **(item if isinstance(item, dict) else {"limit": item})}
        for name, item in (answer.get("quotas") or {}).items()
    ]
    for row in rows:
        if row.get("limit") == -1:
            row["limit"] = "unlimited"
    title = f"quotas of {cell(answer.get('tenant_id'))}"
    emit_list(state, rows, ["quota", "limit", "usage", "default"], title=title)


@app.command()
def show(
    ctx: typer.Context,
    tenant_id: Annotated[str | None, typer.Option(help="Another tenant's (admins)")] = None,
    output: OutputOption = None,
) -> None:
    """Limits and current usage."""
    state = get_state(ctx, output)
    _show(state, state.client().get(BASE, {"tenant_id": tenant_id}))


@app.command("set")
def set_(
    ctx: typer.Context,
    tenant_id: str,
    assignments: Annotated[list[str], typer.Argument(help="key=value, e.g. vms=20 vcpus=-1")],
    output: OutputOption = None,
) -> None:
    """Change a tenant's limits (admins); unnamed quotas keep their value."""
    state = get_state(ctx, output)
    body = dict(parse_assignment(a) for a in assignments)
    _show(state, state.client().put(path_of(BASE, tenant_id), body))
