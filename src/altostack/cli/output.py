"""Printing API objects: a Rich table for people, raw JSON or YAML for scripts.

JSON and YAML print the API objects untouched (a list prints as a list), so a script can
rely on the same field names as the HTTP API. Only tables choose columns, and they adapt
to the fields an object actually has, so commands keep working as the API grows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import typer
import yaml  # type: ignore[import-untyped]
from rich.table import Table

from altostack.cli.state import CliState, OutputFormat

MAX_AUTO_COLUMNS = 8
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$")


def cell(value: Any) -> str:
    """One value as a table shows it: short times, ``-`` for none, compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    text = str(value)
    match = _TIMESTAMP.match(text)
    if match:
        return f"{match[1]} {match[2]}{'Z' if match[3] == 'Z' else match[3]}"
    return text


def _table(columns: Sequence[str], title: str | None) -> Table:
    # fold, never ellipsis: an id cut short cannot be copied into the next command
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _scalar_keys(item: Mapping[str, Any]) -> list[str]:
    return [k for k, v in item.items() if not isinstance(v, dict | list)][:MAX_AUTO_COLUMNS]


def pick_columns(items: Sequence[Mapping[str, Any]], preferred: Sequence[str]) -> list[str]:
    """The preferred columns that the items have; the first item's plain fields if none."""
    present = {key for item in items for key in item}
    columns = [c for c in preferred if c in present]
    if columns or not items:
        return columns or list(preferred)
    return _scalar_keys(items[0])


def _dump(state: CliState, data: Any) -> None:
    if state.output is OutputFormat.yaml:
        typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
    else:
        typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def emit_list(
    state: CliState,
    items: Iterable[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
) -> list[Mapping[str, Any]]:
    rows = list(items)
    if state.output is not OutputFormat.table:
        _dump(state, rows)
        return rows
    if not rows:
        state.stderr.print(f"No {title or 'items'}.")
        return rows
    chosen = pick_columns(rows, columns)
    table = _table(chosen, title)
    for row in rows:
        table.add_row(*(cell(row.get(c)) for c in chosen))
    state.stdout.print(table)
    return rows


def emit_object(state: CliState, obj: Any, *, title: str | None = None) -> None:
    if state.output is not OutputFormat.table:
        _dump(state, obj)
        return
    if not isinstance(obj, Mapping):
        state.stdout.print(cell(obj))
        return
    table = _table(["field", "value"], title)
    for key, value in obj.items():
        table.add_row(key, cell(value))
    state.stdout.print(table)


def note(state: CliState, text: str) -> None:
    """A message for people (stderr), so it never corrupts JSON or YAML on stdout."""
    state.stderr.print(text)
