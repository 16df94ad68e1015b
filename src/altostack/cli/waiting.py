"""Following asynchronous work: a progress bar over an operation, and the one helper every
mutating command uses for a ``202 {"operation": …, "<thing>": …}`` answer.

Waiting is the default because a person at a terminal wants to know how it ended;
``--no-wait`` prints the resource at once (still in its transitional state) and the
operation id to follow later with ``alto ops wait``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import httpx
import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from altostack.cli.output import emit_list, emit_object, note
from altostack.cli.state import CliState
from altostack.client import NotFound, OperationFailed
from altostack.client.base import BaseClient

NoWaitOption = Annotated[
    bool, typer.Option("--no-wait", help="Return at once instead of waiting for the operation")
]
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", help="Give up waiting after this many seconds (default: never)"),
]


def _describe(op: Mapping[str, Any]) -> str:
    return f"{op.get('kind', 'operation')} {op.get('resource_id') or ''} {op.get('state', '')}"


def wait_with_progress(state: CliState, op_id: str, timeout: float | None) -> dict[str, Any]:
    """Wait for the operation with a progress bar on stderr; return it however it ended."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=state.stderr, transient=False) as progress:
        task = progress.add_task(op_id, total=100)

        def on_progress(op: dict[str, Any]) -> None:
            progress.update(task, completed=op.get("progress") or 0, description=_describe(op))

        return state.client().wait_operation(op_id, timeout, on_progress)


def raise_if_failed(op: Mapping[str, Any]) -> None:
    if op.get("state") == "failed":
        raise OperationFailed(dict(op))


def _split(body: Mapping[str, Any], thing: str | None) -> tuple[dict[str, Any] | None, Any]:
    operation = body.get("operation")
    if thing is not None:
        return operation, body.get(thing)
    others = [v for k, v in body.items() if k != "operation"]
    return operation, others[0] if len(others) == 1 else {k: v for k, v in body.items()}


def follow_operation(
    state: CliState,
    answer: httpx.Response | Mapping[str, Any],
    thing: str | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    resource_path: str | None = None,
) -> Any:
    """Print the resource of a 202 answer, after waiting for its operation by default.

    ``thing`` names the resource key (``"vm"``; ``"vms"`` for a list); without it the one
    key beside ``"operation"`` is used. After a successful wait the resource is read
    again (from ``resource_path``, else the answer's ``Location``) so the printout shows
    its settled state; a resource that is gone by then (a delete) is reported as such.
    A failed operation raises :class:`OperationFailed`, which exits non-zero.
    """
    location = None
    if isinstance(answer, httpx.Response):
        location = answer.headers.get("location")
        decoded = BaseClient.decode(answer)  # an error answer raises its ApiError
        answer = decoded if isinstance(decoded, Mapping) else {}
    operation, resource = _split(answer, thing)
    if operation is None:
        return _show(state, resource if resource is not None else answer)
    if not wait:
        note(state, f"Started {operation['id']}; follow it with: alto ops wait {operation['id']}")
        return _show(state, resource)
    final = wait_with_progress(state, operation["id"], timeout)
    raise_if_failed(final)
    path = resource_path or location
    if path and not isinstance(resource, list):
        try:
            resource = state.client().get(path)
        except NotFound:
            note(state, f"{operation.get('resource_id') or 'The resource'} is gone.")
            return None
    return _show(state, resource)


def _show(state: CliState, resource: Any) -> Any:
    if isinstance(resource, list):
        emit_list(state, resource, ["id", "name", "state"])
    elif resource is not None:
        emit_object(state, resource)
    return resource
