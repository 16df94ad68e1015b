"""Turning SDK errors into one clear message and an exit code, in one place.

Commands just call the SDK and let errors rise; this group catches them around every
subcommand, so no command prints a traceback for an expected failure.

Exit codes: 0 success, 1 the API refused or an operation failed, 2 bad usage,
3 not configured / cannot reach the API, 4 an operation wait timed out.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from altostack.client import (
    ApiError,
    ConfigurationError,
    OperationFailed,
    TransportFailure,
    WaitTimeout,
)

EXIT_API = 1
EXIT_CONFIG = 3
EXIT_TIMEOUT = 4


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def report(exc: Exception) -> int:
    """Print ``exc`` for a person and return the exit code it deserves."""
    err = _stderr()
    if isinstance(exc, ApiError):
        err.print(f"Error: {exc}")
        for issue in exc.errors:
            err.print(f"  - {issue.field}: {issue.message}")
        if exc.request_id:
            err.print(f"  (request id {exc.request_id})")
        return EXIT_API
    if isinstance(exc, OperationFailed):
        error = exc.operation.get("error") or {}
        err.print(f"Error: {exc}")
        if error.get("code"):
            err.print(f"  code: {error['code']}")
        for key, value in (error.get("details") or {}).items():
            err.print(f"  {key}: {value}")
        return EXIT_API
    if isinstance(exc, WaitTimeout):
        op_id = exc.operation.get("id")
        err.print(f"Error: {exc}; it keeps running: alto ops wait {op_id}")
        return EXIT_TIMEOUT
    err.print(f"Error: {exc}")
    return EXIT_CONFIG


class AltoGroup(TyperGroup):
    """The root command group, mapping expected failures to messages and exit codes."""

    def invoke(self, ctx: Any) -> Any:  # Any: Typer's vendored Click context
        try:
            return super().invoke(ctx)
        except (ApiError, OperationFailed, WaitTimeout, ConfigurationError, TransportFailure) as e:
            raise typer.Exit(report(e)) from e
