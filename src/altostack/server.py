"""Run the all-in-one: API + operation worker (+ local agent later) in one process."""

from __future__ import annotations

import signal
import sys
from typing import Any

import uvicorn

from altostack import logging as alto_logging
from altostack.api.app import create_app
from altostack.bootstrap import Container, build
from altostack.settings import Settings


def _driver(container: Container) -> str:
    from altostack.allinone import resolve_driver

    if resolve_driver(container.settings.driver) == "qemu":
        accel = next((getattr(a.compute, "accel", "?") for a in container.agents), "?")
        return f"qemu, this machine (accel {accel})"
    return f"sim ({container.settings.sim_hosts} hosts)"


def banner(container: Container) -> str:
    s = container.settings
    url = f"http://{s.host}:{s.port}"
    lines = [
        f"Altostack is up on {url}  (API docs: {url}/docs)",
        f"  database: {s.masked()['database_url']}",
        f"  bus: {s.masked()['bus']}   driver: {_driver(container)}",
    ]
    if container.bootstrap_password:
        lines += [
            "  First start: the administrator account was created.",
            "    tenant: system   username: admin",
            f"    password: {container.bootstrap_password}   (shown once; change it)",
        ]
    lines.append(f"  Log in:  alto login --url {url} --tenant system --username admin")
    return "\n".join(lines)


def serve(settings: Settings, **uvicorn_overrides: Any) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn drains in-flight requests, then the container
    stops the worker, which hands unfinished operations back for the next start."""
    alto_logging.configure(settings.log_format, settings.log_level)
    container = build(settings)
    app = create_app(
        container, on_started=lambda: print(banner(container), file=sys.stderr, flush=True)
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(int(settings.shutdown_grace_seconds), 1),
        **uvicorn_overrides,
    )
    # uvicorn re-raises the SIGTERM it caught once it has shut down gracefully; with a
    # no-op handler installed that re-raise is harmless and a clean stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run()
