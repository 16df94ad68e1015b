"""Running ``qemu-img`` and ``qemu-io`` for the ``local`` backend, failures typed.

Every call is an asyncio subprocess with a time limit (the event loop never blocks on
disk work), killed by its own PID when the limit passes or the caller is cancelled. This is
the one boundary where the tools' failures become :mod:`altostack.drivers.errors`, with the
tool's own message kept, so an operator reads what QEMU said.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from altostack.drivers import tools
from altostack.drivers.errors import (
    BackendFailure,
    InsufficientResources,
    InvalidState,
)

DEFAULT_TIMEOUT = 120.0
"""Seconds for metadata work; copies (``convert``) get the caller's longer limit."""


async def run(
    argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, cwd: str | None = None
) -> str:
    """Run ``argv``; its stdout, or a typed error naming the command and its stderr.

    ``qemu-io`` reports a failed command on stdout ("write failed: ...") and, for some
    commands, still exits 0: both count as failures.
    """
    result = await tools.run(argv, timeout=timeout, cwd=cwd)
    stdout, message = result.stdout, result.stderr
    ok = result.returncode == 0
    if argv[0] == "qemu-io":
        failed = [line for line in stdout.splitlines() if " failed: " in line]
        message = "; ".join([*failed, message] if message else failed)
        ok = ok and not failed
    if not ok:
        raise translate(tools.name_of(argv), message or f"exit status {result.returncode}")
    return stdout


def translate(what: str, message: str) -> Exception:
    """The typed error for a tool's failure ``message``."""
    text = f"{what}: {message}"
    lowered = message.lower()
    if "no space left on device" in lowered or "disk quota exceeded" in lowered:
        return InsufficientResources(text)
    if "failed to get" in lowered and "lock" in lowered:
        # QEMU's image locking: a running VM holds the volume open for writing.
        return InvalidState("in use", "not in use by a running VM", message=text)
    return BackendFailure(text)


async def info(
    path: str, *, fmt: str | None = None, timeout: float = 60.0, share: bool = True
) -> dict[str, Any]:
    """``qemu-img info --output=json``.

    ``share`` (``-U``) reads a file a running VM holds; without it, such a file fails
    with QEMU's lock error (``InvalidState("in use")``): the cheap way to ask "in use?".
    """
    argv = ["qemu-img", "info", "--output=json", *(["-U"] if share else [])]
    if fmt is not None:
        argv += ["-f", fmt]
    out = await run([*argv, path], timeout=timeout)
    data = json.loads(out)
    if not isinstance(data, dict):
        raise BackendFailure(f"qemu-img info {path}: unexpected output")
    return data
