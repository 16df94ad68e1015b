"""QEMU processes: launching them daemonized, finding them again, QMP, killing them.

A VM's QEMU is found from its pidfile, and only counts as alive when ``/proc/<pid>`` is
a live (not zombie) process whose command line names the VM's directory, so a recycled
PID is never mistaken for the VM. Nothing here remembers anything between calls: a new
driver instance (agent restart) finds every running QEMU the same way.

QMP failures become typed driver errors at this one boundary, QEMU's message kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    QMPClient,
    QMPError,
)

from altostack.drivers.errors import (
    BackendFailure,
    DriverError,
    DriverTimeout,
    InsufficientResources,
)

# qemu.qmp logs a traceback-worthy line whenever QEMU hangs up on ``quit``; that is normal.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

LAUNCH_TIMEOUT = 60.0
QMP_CONNECT_TIMEOUT = 10.0
QMP_COMMAND_TIMEOUT = 30.0


# -- processes -------------------------------------------------------------------------------


def read_pidfile(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def process_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` is a live process whose command line contains ``marker``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    return state not in ("Z", "X") and marker.encode() in cmdline


def live_pid(pidfile: Path, marker: str) -> int | None:
    """The PID in ``pidfile`` if that process is alive and is the VM's (``marker``)."""
    pid = read_pidfile(pidfile)
    return pid if pid is not None and process_alive(pid, marker) else None


def pids_with(marker: str) -> list[int]:
    """Every live process whose command line contains ``marker`` (a VM directory).

    The fallback when a pidfile is missing: a QEMU whose start was interrupted before it
    wrote one.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_alive(int(entry.name), marker):
            found.append(int(entry.name))
    return found


def kill(pid: int, marker: str, sig: int = signal.SIGKILL) -> None:
    if process_alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def wait_gone(pid: int, marker: str, timeout: float) -> bool:
    """Wait until the process is gone; whether it went within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while process_alive(pid, marker):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def kill_and_wait(pid: int, marker: str, timeout: float = 10.0) -> None:
    kill(pid, marker)
    if not await wait_gone(pid, marker, timeout):
        raise DriverTimeout(f"QEMU process {pid} did not die within {timeout:.0f}s of SIGKILL")


def kill_now(pid: int, marker: str) -> None:
    """SIGKILL and wait briefly without an event loop (clean-up paths, finalizers)."""
    kill(pid, marker)
    deadline = time.monotonic() + 10.0
    while process_alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.01)


def launch_error(stderr: str) -> DriverError:
    """Translate QEMU's start-up complaint into a typed error, its words kept."""
    message = stderr.strip() or "QEMU exited without a message"
    lowered = message.lower()
    if "cannot set up guest memory" in lowered or "cannot allocate memory" in lowered:
        return InsufficientResources(message)
    return BackendFailure(message)


async def launch(argv: list[str], *, timeout: float = LAUNCH_TIMEOUT) -> None:
    """Run a ``-daemonize`` QEMU command: returns once the daemon is up (or raises).

    QEMU's parent process exits when the daemon finished initialising, with the daemon's
    start-up errors on its stderr. The end is the parent's exit, not the end of its output:
    stderr goes to an unnamed temporary file, because a pipe may stay open in the daemon
    (under uvloop ``communicate()`` then never returns).
    """
    with tempfile.TemporaryFile() as errors:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=errors,
                start_new_session=True,
            )
        except OSError as exc:
            raise BackendFailure(f"cannot run {argv[0]}: {exc}") from exc
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise DriverTimeout(f"QEMU did not start within {timeout:.0f}s") from exc
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            errors.seek(0)
            raise launch_error(errors.read().decode(errors="replace"))


# -- QMP -------------------------------------------------------------------------------------


class Qmp:
    """A connected QMP session; errors come out as driver errors."""

    def __init__(self, client: QMPClient, what: str) -> None:
        self.client = client
        self.what = what

    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float = QMP_COMMAND_TIMEOUT,
    ) -> Any:
        try:
            return await asyncio.wait_for(self.client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            raise BackendFailure(f"QEMU refused {command} on {self.what}: {exc}") from exc
        except ExecInterruptedError as exc:
            raise BackendFailure(f"QEMU hung up during {command} on {self.what}") from exc
        except TimeoutError as exc:
            raise DriverTimeout(
                f"QEMU did not answer {command} on {self.what} within {timeout:.0f}s"
            ) from exc
        except (QMPError, OSError, EOFError) as exc:
            raise BackendFailure(f"QMP {command} on {self.what} failed: {exc!r}") from exc

    def listen(self, names: Iterable[str]) -> AbstractContextManager[EventListener]:
        """An event listener; use it as a context manager (``with qmp.listen(...) as l``)."""
        return self.client.listener(tuple(names))

    async def runstate(self) -> str:
        status = await self.execute("query-status")
        return str(status["status"])


@asynccontextmanager
async def qmp_session(
    socket_path: Path, what: str, *, timeout: float = QMP_CONNECT_TIMEOUT
) -> AsyncIterator[Qmp]:
    """Connect to a QMP socket for the duration of the block."""
    client = QMPClient(what)
    try:
        await asyncio.wait_for(client.connect(str(socket_path)), timeout)
    except TimeoutError as exc:
        with contextlib.suppress(Exception):
            await client.disconnect()
        raise DriverTimeout(f"QMP of {what} did not answer within {timeout:.0f}s") from exc
    except (ConnectError, OSError) as exc:
        raise BackendFailure(f"cannot connect to the QMP socket of {what}: {exc}") from exc
    try:
        yield Qmp(client, what)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(client.disconnect())
