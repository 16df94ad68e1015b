"""Running host tools (``qemu-img``, ``genisoimage``, ``nft``…) from drivers.

Every call is an asyncio subprocess (the event loop never blocks on disk or kernel work)
with a time limit, and the child is killed by its own PID when the limit passes or the
caller is cancelled, so no tool outlives the operation that started it. Failures keep the
tool's own words: callers turn them into :mod:`altostack.drivers.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from altostack.drivers.errors import BackendFailure, DriverTimeout

DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class ToolResult:
    returncode: int
    stdout: str
    stderr: str


def name_of(argv: Sequence[str]) -> str:
    """How an error names the command: the tool and its subcommand."""
    return " ".join(argv[:2])


async def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | None = None,
    input: bytes | None = None,
) -> ToolResult:
    """Run ``argv`` to the end; ``DriverTimeout`` (child killed) after ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        await _kill(proc)
        raise DriverTimeout(f"{name_of(argv)} did not finish within {timeout:.0f} s") from None
    except BaseException:  # cancelled: do not leave the child running
        await _kill(proc)
        raise
    assert proc.returncode is not None
    return ToolResult(
        proc.returncode, out.decode(errors="replace"), err.decode(errors="replace").strip()
    )


async def check(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    cwd: str | None = None,
    input: bytes | None = None,
) -> str:
    """Run ``argv``; its stdout, or ``BackendFailure`` naming the command and its stderr."""
    result = await run(argv, timeout=timeout, cwd=cwd, input=input)
    if result.returncode != 0:
        raise BackendFailure(
            f"{name_of(argv)} failed: {result.stderr or f'exit status {result.returncode}'}"
        )
    return result.stdout


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 10)
