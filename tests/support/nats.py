"""A private, real ``nats-server -js`` for tests: loopback, a free port, a temporary store.

Started detached (its own session, no pipes we could block on), stopped by PID. ``kill()``
and ``restart()`` keep the port and the store directory, so tests can crash the server and
bring the same JetStream state back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from altostack.bus import Message
from altostack.bus.nats import NatsBus
from tests.support.real import free_port, need_real

READY_TIMEOUT = 10.0


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL (Linux), so a killed
    test run leaves no server behind."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class NatsServer:
    binary: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    """Where it listens: loopback, or an address of a test's own underlay bridge."""

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def store_dir(self) -> Path:
        return self.workdir / "store"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats-server.log"

    def start(self) -> None:
        cmd = [self.binary, "-js", "-a", self.host, "-p", str(self.port),
               "-sd", str(self.store_dir), "-m", "0"]  # fmt: skip
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"nats-server not ready in {READY_TIMEOUT}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """Crash it: SIGKILL, no goodbye to clients, JetStream state left as it is on disk."""
        self._signal_and_wait(signal.SIGKILL, 5.0)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``timeout``."""
        if not self._signal_and_wait(signal.SIGTERM, timeout):
            self._signal_and_wait(signal.SIGKILL, 5.0)

    def restart(self) -> None:
        """Start again on the same port with the same store (after ``kill`` or ``stop``)."""
        self.start()

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> bool:
        process = self.process
        if process is None or process.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def remove(self) -> None:
        self.stop()
        self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_nats(host: str = "127.0.0.1") -> NatsServer:
    binary = shutil.which("nats-server")
    if binary is None:
        need_real("nats-server is not installed (scripts/install-system-deps installs it)")
        raise AssertionError("unreachable")
    workdir = Path(tempfile.mkdtemp(prefix="alto-nats-"))
    server = NatsServer(binary, free_port(), workdir, host=host)
    started = time.monotonic()
    try:
        server.start()
    except RuntimeError as exc:
        server.remove()
        need_real(f"nats-server did not start: {exc}")
    print(f"\nnats-server ready in {time.monotonic() - started:.2f}s on port {server.port}")
    return server


@contextlib.contextmanager
def running_nats(host: str = "127.0.0.1") -> Iterator[NatsServer]:
    """A server for the duration of the block (fixtures wrap this)."""
    server = start_nats(host)
    try:
        yield server
    finally:
        server.remove()


# Fast settings for tests: short pulls, quick retries, short drains.
TEST_BUS_OPTIONS: dict[str, Any] = {
    "pull_wait": 1.0,
    "retry_delay": 0.05,
    "drain_timeout": 1.0,
    "publish_deadline": 5.0,
    "connect_timeout": 2.0,
}


class NatsBuses:
    """Buses sharing one private stream, for one test; ``aclose`` closes them, drops the stream."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.stream = f"T{uuid.uuid4().hex[:12].upper()}"
        self.options = {**TEST_BUS_OPTIONS, **options}
        self.buses: list[NatsBus] = []

    def new(self, **options: Any) -> NatsBus:
        bus = NatsBus(self.url, stream=self.stream, **{**self.options, **options})
        self.buses.append(bus)
        return bus

    async def aclose(self) -> None:
        for bus in self.buses:
            await bus.close()
        with contextlib.suppress(Exception):
            async with nats_admin(self.url) as nc:
                await nc.jetstream().delete_stream(self.stream)


@contextlib.asynccontextmanager
async def nats_admin(url: str) -> AsyncIterator[NatsClient]:
    """A plain nats-py client for checks behind the bus's back; fails fast (nats-py alone
    retries a refused first connect 60 times, two seconds apart)."""
    nc = await asyncio.wait_for(
        nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2), 3
    )
    try:
        yield nc
    finally:
        await nc.close()


class Inbox:
    """A handler that records what it gets and lets a test wait for a count."""

    def __init__(self, reply: dict[str, Any] | None = None) -> None:
        self.messages: list[Message] = []
        self.reply = reply
        self._changed = asyncio.Event()

    async def __call__(self, message: Message) -> dict[str, Any] | None:
        self.messages.append(message)
        self._changed.set()
        return self.reply

    @property
    def subjects(self) -> list[str]:
        return [m.subject for m in self.messages]

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()


class FailingInbox(Inbox):
    """Records each call, then raises like a buggy handler."""

    async def __call__(self, message: Message) -> dict[str, Any] | None:
        await super().__call__(message)
        raise RuntimeError(f"handler bug on {message.subject}")
