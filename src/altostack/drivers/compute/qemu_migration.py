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
from urllib.parse import urlsplit

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


# -- block migration: the root disk mirrored over NBD ---------------------------------------
#
# The destination exports its fresh root disk (an overlay on its own copy of the image)
# over NBD; the source mirrors its root disk there while the guest runs. ``write-blocking``
# makes every guest write after the mirror is ``ready`` reach both disks before it
# completes, so when the RAM transfer ends (the guest paused) the copies are equal; the
# job is then cancelled (which, for a ready mirror, is a clean end, not an abort) and
# only after that does the destination (started with ``-S``) resume the guest.

MIRROR_JOB = "alto-migrate-root"
MIRROR_TARGET = "alto-migrate-target"
EXPORT_NAME = "root"


def nbd_server(uri: str) -> tuple[str, int, str]:
    """``nbd://host:port/export`` → (host, port, export)."""
    parts = urlsplit(uri)
    if parts.scheme != "nbd" or parts.hostname is None or parts.port is None:
        raise BackendFailure(f"not an NBD address: {uri!r}")
    return parts.hostname, parts.port, parts.path.lstrip("/") or EXPORT_NAME


async def serve_root(qmp: Qmp, host: str, port: int, node: str) -> str:
    """Destination side: export ``node`` writable over NBD; the address to mirror to."""
    await qmp.execute(
        "nbd-server-start", {"addr": {"type": "inet", "data": {"host": host, "port": str(port)}}}
    )
    await qmp.execute(
        "block-export-add",
        {"type": "nbd", "id": EXPORT_NAME, "node-name": node, "name": EXPORT_NAME,
         "writable": True},
    )  # fmt: skip
    return f"nbd://{host}:{port}/{EXPORT_NAME}"


async def stop_serving(qmp: Qmp) -> None:
    with contextlib.suppress(DriverError):
        await qmp.execute("nbd-server-stop")


async def mirror_root(qmp: Qmp, node: str, uri: str, *, sync: str, timeout: float) -> None:
    """Source side: mirror ``node`` to the destination's export until the copy is in step
    (``ready``); ``sync`` is ``top`` (the destination has the image underneath) or
    ``full``. A failure or timeout ends the job and raises; the guest keeps running."""
    host, port, export = nbd_server(uri)
    await qmp.execute(
        "blockdev-add",
        {"driver": "nbd", "node-name": MIRROR_TARGET, "export": export,
         "server": {"type": "inet", "host": host, "port": str(port)}},
    )  # fmt: skip
    try:
        await qmp.execute(
            "blockdev-mirror",
            {"job-id": MIRROR_JOB, "device": node, "target": MIRROR_TARGET, "sync": sync,
             "copy-mode": "write-blocking", "auto-dismiss": False},
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            job = await _mirror_job(qmp)
            if job is None or job.get("status") == "concluded":
                raise BackendFailure(
                    f"copying the root disk to {uri} failed: "
                    f"{(job or {}).get('error', 'the copy job ended early')}"
                )
            if job.get("ready"):
                return
            if time.monotonic() >= deadline:
                raise DriverTimeout(f"the root disk copy to {uri} took over {timeout:.0f}s")
            await asyncio.sleep(POLL)
    except BaseException:
        await asyncio.shield(end_mirror(qmp))
        raise


async def end_mirror(qmp: Qmp) -> None:
    """End the mirror (cleanly when it was ready) and drop the NBD connection."""
    with contextlib.suppress(DriverError):
        await qmp.execute("block-job-cancel", {"device": MIRROR_JOB})
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        try:
            job = await _mirror_job(qmp)
        except DriverError:
            break
        if job is None:
            break
        if job.get("status") == "concluded":
            with contextlib.suppress(DriverError):
                await qmp.execute("job-dismiss", {"id": MIRROR_JOB})
            break
        await asyncio.sleep(POLL)
    with contextlib.suppress(DriverError):
        await qmp.execute("blockdev-del", {"node-name": MIRROR_TARGET})


async def _mirror_job(qmp: Qmp) -> dict[str, Any] | None:
    jobs: list[dict[str, Any]] = await qmp.execute("query-block-jobs")
    return next((j for j in jobs if j.get("device") == MIRROR_JOB), None)
