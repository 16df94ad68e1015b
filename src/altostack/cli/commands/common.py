"""Small pieces the resource commands share: confirmation, answers of any shape."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer

from altostack.cli.output import emit_object, note
from altostack.cli.state import CliState
from altostack.cli.waiting import follow_operation

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]
LimitOption = Annotated[int, typer.Option(min=1, help="Show at most this many")]


def confirm(yes: bool, question: str) -> None:
    if not yes:
        typer.confirm(question, abort=True, err=True)


def ask(value: str | None, label: str, *, secret: bool = False, twice: bool = False) -> str:
    """``value`` if given, else ask for it on the terminal.

    Prompts go to stderr, so ``alto … -o json | jq`` still gets clean JSON on stdout.
    """
    if value:
        return value
    answer: str = typer.prompt(
        label, hide_input=secret, confirmation_prompt=twice, err=True, type=str
    )
    return answer


def settle(
    state: CliState,
    response: httpx.Response,
    thing: str | None,
    *,
    done: str,
    wait: bool = True,
    timeout: float | None = None,
) -> Any:
    """Print whatever a mutation answered: nothing (204, with ``done`` as the note), the
    object (200/201), or the resource after its operation (202)."""
    body = state.client().decode(response)
    if body is None:
        note(state, done)
        return None
    if isinstance(body, dict) and "operation" in body:
        return follow_operation(state, response, thing, wait=wait, timeout=timeout)
    emit_object(state, body)
    return body


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value when it parses (``vms=20`` → 20), text otherwise."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{text!r} is not key=value")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value
