"""Helpers for console tests: an in-process uvicorn, a fake VNC server, page parsing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from tests.support.real import free_port

BANNER = b"RFB 003.008\n"
_CONFIG = re.compile(r'<script id="alto-console" type="application/json">(.*?)</script>', re.S)


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """The app on a real loopback port (WebSockets need a real server), in this loop, so
    it shares the test's container; stopped and awaited at the end, bounded."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="auto",  # what `alto up` gets
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(250):
            if server.started or task.done():
                break
            await asyncio.sleep(0.02)
        assert server.started, "uvicorn did not start"
        yield f"127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()


class FakeVnc:
    """A loopback TCP server that greets like a VNC server (``RFB 003.008``) and then
    echoes what it receives; it remembers what each connection sent."""

    def __init__(self, *, close_after_banner: bool = False) -> None:
        self.close_after_banner = close_after_banner
        self.received: list[bytes] = []
        self.closed = asyncio.Event()
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeVnc:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        got = bytearray()
        try:
            writer.write(BANNER)
            await writer.drain()
            if self.close_after_banner:
                return
            while data := await reader.read(65536):
                got += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self.received.append(bytes(got))
            writer.close()
            self.closed.set()


def page_config(html: str) -> dict[str, Any]:
    """The JSON the console page hands its script (WebSocket path, password)."""
    match = _CONFIG.search(html)
    assert match, html[:500]
    return dict(json.loads(match.group(1)))
