"""``alto agent``: run this machine's host agent and join a cluster."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("agent")
    def agent(
        join: Annotated[str, typer.Option("--join", help="Control plane URL, http://host:8080")],
        token: Annotated[str, typer.Option("--token", help="The cluster's join token")],
        hostname: Annotated[
            str, typer.Option(help="Name of this host (unique; re-joining keeps the id)")
        ] = socket.gethostname(),
        driver: Annotated[
            str, typer.Option(help="Compute driver: qemu (this machine's QEMU) or sim")
        ] = "sim",
        state_dir: Annotated[
            Path | None,
            typer.Option(help="qemu: VMs and base images (default /var/lib/altostack as root)"),
        ] = None,
        console_host: Annotated[
            str, typer.Option(help="qemu: address the VMs' VNC consoles listen on")
        ] = "127.0.0.1",
        bus: Annotated[
            str | None, typer.Option(help="Bus URL; default: the one the control plane uses")
        ] = None,
        heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats")] = 5.0,
        sim_timing_scale: Annotated[
            float, typer.Option(help="Scale of the sim driver's delays (0: instant)")
        ] = 1.0,
        netns: Annotated[
            str | None,
            typer.Option(help="Run inside this network namespace (a lab's host on one machine)"),
        ] = None,
    ) -> None:
        """Join a cluster as a host and serve its commands until SIGTERM."""
        from altostack import logging as alto_logging
        from altostack.agent.main import AgentOptions, run

        alto_logging.configure()
        options = AgentOptions(
            join_url=join,
            token=token,
            hostname=hostname,
            driver=driver,
            bus=bus,
            heartbeat_interval=heartbeat,
            sim_timing_scale=sim_timing_scale,
            state_dir=state_dir,
            console_host=console_host,
            netns=netns,
        )
        asyncio.run(run(options))
