"""The baseline for bench/api.py: a bare ASGI app that answers every GET with one constant
JSON body, served by uvicorn with the settings ``altostack.server.serve`` uses (uvloop,
httptools, one process, lifespan on, no log config, no access log).

Run: ``python bench/bare_app.py --port 8081 [--body-file op.json]``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Shaped like GET /v1/operations/{id}; bench/api.py normally replaces it with the exact
# body the real server returned so both sides move the same number of bytes.
DEFAULT_BODY: dict[str, Any] = {
    "id": "op-1m85jjtnmr1s815a",
    "kind": "bench.noop",
    "tenant_id": "tenant-1m85jjtnhsdb9bpc",
    "resource_type": "bench",
    "resource_id": None,
    "state": "succeeded",
    "progress": 100,
    "attempts": 1,
    "error": None,
    "result": {"ok": True},
    "request_id": "bench",
    "created_at": "2026-11-24T12:00:00Z",
    "started_at": "2026-11-24T12:00:00Z",
    "finished_at": "2026-11-24T12:00:01Z",
}


def make_app(body: bytes) -> ASGIApp:
    """An ASGI app that returns ``body`` as application/json to every HTTP request."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    start: Message = {"type": "http.response.start", "status": 200, "headers": headers}
    payload: Message = {"type": "http.response.body", "body": body}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        await send(start)
        await send(payload)

    return app


def uvicorn_config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    """The same uvicorn settings as ``altostack.server.serve``."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        log_level="warning",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path, help="bytes to answer with (default: built-in)")
    args = parser.parse_args(argv)
    body = (
        args.body_file.read_bytes()
        if args.body_file
        else json.dumps(DEFAULT_BODY, separators=(",", ":")).encode()
    )
    uvicorn.Server(uvicorn_config(make_app(body), args.host, args.port)).run()


if __name__ == "__main__":
    main()
