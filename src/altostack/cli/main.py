"""``alto``: run the cloud and talk to it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="Altostack private cloud", no_args_is_help=True)


@app.callback()
def root() -> None:
    """Altostack: run the cloud (`alto up`) and manage it."""


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Listen address [ALTO_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [ALTO_PORT]")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="State directory [ALTO_DATA_DIR]")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL [ALTO_DB]")] = None,
    bus: Annotated[str | None, typer.Option(help="Bus URL [ALTO_BUS]")] = None,
    driver: Annotated[str | None, typer.Option(help="qemu|sim [ALTO_DRIVER]")] = None,
    sim_hosts: Annotated[int | None, typer.Option(help="Sim hosts [ALTO_SIM_HOSTS]")] = None,
) -> None:
    """Start the all-in-one cloud: API, workers and the local agent in one process."""
    from altostack.server import serve
    from altostack.settings import Settings

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "db": db,
        "bus": bus,
        "driver": driver,
        "sim_hosts": sim_hosts,
    }
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    serve(settings)


def main() -> None:
    app()
