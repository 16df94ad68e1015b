"""Live migration over QMP: the source side's transfer loop and its cancellation.

The destination QEMU was started with ``-incoming defer`` and told where to listen
(``migrate-incoming``); the source sets the downtime limit, starts ``migrate`` and polls
``query-migrate`` (progress for the caller) until ``completed``. A failure, a timeout or a
cancellation runs ``migrate_cancel`` and resumes the guest on the source: the VM never
ends up running nowhere. One case is not a failure: when the transfer completed before the
cancel arrived the guest already runs on the destination, so that counts as success.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from altostack.drivers.compute.base import MigrationProgress, ProgressCallback
from altostack.drivers.compute.qemu_process import Qmp
from altostack.drivers.errors import BackendFailure, DriverError, DriverTimeout

POLL = 0.05
_ENDED = ("completed", "failed", "cancelled")


def progress_of(info: dict[str, Any]) -> MigrationProgress:
    ram = info.get("ram", {})
    return MigrationProgress(
        status=str(info.get("status", "none")),
        transferred_bytes=int(ram.get("transferred", 0)),
        remaining_bytes=int(ram.get("remaining", 0)),
        total_bytes=int(ram.get("total", 0)),
    )


async def migrate(
    qmp: Qmp,
    uri: str,
    *,
    downtime_limit_ms: int,
    timeout: float,
    progress: ProgressCallback | None,
    fault: Callable[[], None],
) -> dict[str, Any]:
    """Run one migration to ``uri``; the final ``query-migrate`` answer (``completed``).

    ``fault`` is the fault-injection point: called once the transfer is under way.
    """
    deadline = time.monotonic() + timeout
    await qmp.execute("migrate-set-parameters", {"downtime-limit": downtime_limit_ms})
    await qmp.execute("migrate", {"uri": uri})
    try:
        fault()
        while True:
            info: dict[str, Any] = await qmp.execute("query-migrate")
            if progress is not None:
                progress(progress_of(info))
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise BackendFailure(
                    f"migration to {uri} {status}: {info.get('error-desc', 'no reason given')}"
                )
            if time.monotonic() >= deadline:
                raise DriverTimeout(f"migration to {uri} did not finish within {timeout:.0f}s")
            await asyncio.sleep(POLL)
    except BaseException:
        final = await asyncio.shield(_cancel(qmp))
        if final.get("status") == "completed":
            return final  # too late to cancel: the guest runs on the destination now
        raise


async def _cancel(qmp: Qmp) -> dict[str, Any]:
    """Cancel the transfer and make sure the guest runs on the source again."""
    info: dict[str, Any] = {}
    with contextlib.suppress(DriverError):
        await qmp.execute("migrate_cancel")
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        try:
            info = await qmp.execute("query-migrate")
        except DriverError:
            break
        if info.get("status") in _ENDED:
            break
        await asyncio.sleep(POLL)
    if info.get("status") != "completed":
        with contextlib.suppress(DriverError):
            if await qmp.runstate() != "running":
                await qmp.execute("cont")
    return info
