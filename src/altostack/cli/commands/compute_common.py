"""What the compute commands share: table rows for people, sizes, tags, waiting for many
operations at once, and byte-counting progress bars for image transfers.

Tables show derived, readable columns (``2 GiB``, ``3/16`` vCPUs) while JSON and YAML keep
printing the API objects untouched, so scripts never depend on how a table looks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from altostack.cli.output import emit_list
from altostack.cli.state import CliState, OutputFormat
from altostack.client import WaitTimeout, path_of

Row = Mapping[str, Any]

FINISHED = frozenset({"succeeded", "failed"})
POLL_SECONDS = 1.0

# ``--timeout`` is the wait limit on every compute command but `vm stop`, where it is the
# API's graceful-shutdown timeout; ``--wait-timeout`` means the wait limit everywhere.
WaitTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        "--wait-timeout",
        help="Give up waiting after this many seconds (default: never)",
    ),
]
TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", help="key=value; repeat for more"),
]


def human_bytes(size: int | None) -> str | None:
    """``1536`` → ``1.5 KiB``: sizes as people read them (tables only)."""
    if size is None:
        return None
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None  # unreachable


def human_mib(mib: int | None) -> str | None:
    """Memory in MiB as a table shows it: ``512 MiB``, ``2 GiB``, ``1.5 GiB``."""
    if mib is None:
        return None
    if mib < 1024:
        return f"{mib} MiB"
    gib = mib / 1024
    return f"{gib:g} GiB" if gib == int(gib) else f"{gib:.1f} GiB"


def emit_rows(
    state: CliState,
    items: Iterable[Row],
    columns: Sequence[str],
    *,
    title: str,
    derive: Callable[[Row], Row] | None = None,
) -> list[Row]:
    """A list: derived readable columns in a table, the raw API objects otherwise."""
    rows = list(items)
    if state.output is OutputFormat.table and derive is not None:
        emit_list(state, [derive(r) for r in rows], columns, title=title)
    else:
        emit_list(state, rows, columns, title=title)
    return rows


def parse_tags(values: Sequence[str] | None) -> dict[str, str]:
    """``["env=prod", "team=web"]`` → ``{"env": "prod", "team": "web"}``."""
    tags: dict[str, str] = {}
    for text in values or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{text!r} is not key=value", param_hint="--tag")
        tags[key.strip()] = value
    return tags


def _describe(op: Mapping[str, Any]) -> str:
    return f"{op.get('kind', 'operation')} {op.get('resource_id') or ''} {op.get('state', '')}"


def wait_all(state: CliState, op_ids: Sequence[str], timeout: float | None) -> list[dict[str, Any]]:
    """Wait for several operations with one progress bar each; return them in order.

    Every round long-polls the first unfinished operation (so the loop never spins) and
    reads the others at once, so all bars move together instead of one after another.
    """
    client = state.client()
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    finished: dict[str, dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=state.stderr) as progress:
        tasks = {op_id: progress.add_task(op_id, total=100) for op_id in op_ids}
        while len(finished) < len(op_ids):
            pending = [i for i in op_ids if i not in finished]
            for n, op_id in enumerate(pending):
                hold = 0.0
                if n == 0:
                    left = POLL_SECONDS if deadline is None else deadline - time.monotonic()
                    hold = max(0.0, min(POLL_SECONDS, left))
                params = {"wait": f"{hold:g}"} if hold > 0 else None
                op: dict[str, Any] = client.get(
                    path_of("/v1/operations", op_id), params, timeout=hold + client.timeout
                )
                last[op_id] = op
                progress.update(
                    tasks[op_id], completed=op.get("progress") or 0, description=_describe(op)
                )
                if op.get("state") in FINISHED:
                    finished[op_id] = op
            expired = deadline is not None and time.monotonic() >= deadline
            if expired and len(finished) < len(op_ids):
                stuck = next(last[i] for i in op_ids if i not in finished)
                raise WaitTimeout(stuck, timeout or 0.0)
    return [finished[i] for i in op_ids]


def transfer_progress(state: CliState, *, transient: bool = False) -> Progress:
    """A progress bar counting bytes (for image uploads and downloads), on stderr."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=state.stderr,
        transient=transient,
    )
