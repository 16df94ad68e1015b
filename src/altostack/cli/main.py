"""``alto``: run the cloud and talk to it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from altostack.cli.commands import (
    agent,
    apikeys,
    compute_images,
    compute_infra,
    compute_types,
    compute_vms,
    config,
    events,
    network,
    network_edge,
    ops,
    quotas,
    roles,
    session,
    storage,
    tenants,
    users,
)
from altostack.cli.errors import AltoGroup
from altostack.cli.state import CliState, OutputFormat

app = typer.Typer(help="Altostack private cloud", no_args_is_help=True, cls=AltoGroup)


@app.callback()
def root(
    ctx: typer.Context,
    output: Annotated[
        OutputFormat,
        typer.Option(
            "--output",
            "-o",
            envvar="ALTO_OUTPUT",
            case_sensitive=False,
            help="table for people; json or yaml print the raw API objects",
        ),
    ] = OutputFormat.table,
    profile: Annotated[
        str | None,
        typer.Option(help="Credentials profile to use [ALTO_PROFILE, else 'default']"),
    ] = None,
) -> None:
    """Altostack: run the cloud (`alto up`) and manage it."""
    state = ctx.obj if isinstance(ctx.obj, CliState) else CliState()
    state.output = output
    state.profile = profile or state.profile
    ctx.obj = state
    ctx.call_on_close(state.close)


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


session.register(app)
events.register(app)
agent.register(app)
app.add_typer(ops.app, name="ops")
app.add_typer(config.app, name="config")
app.add_typer(tenants.app, name="tenant")
app.add_typer(users.app, name="user")
app.add_typer(roles.app, name="role")
app.add_typer(apikeys.app, name="apikey")
app.add_typer(quotas.app, name="quota")
app.add_typer(compute_infra.regions, name="region")
app.add_typer(compute_infra.clusters, name="cluster")
app.add_typer(compute_infra.hosts, name="host")
app.add_typer(compute_types.app, name="type")
app.add_typer(compute_images.app, name="image")
app.add_typer(compute_vms.vms, name="vm")
app.add_typer(compute_vms.groups, name="group")
app.add_typer(compute_vms.recycle_bin, name="recycle-bin")
app.add_typer(network.vpcs, name="vpc")
app.add_typer(network.subnets, name="subnet")
app.add_typer(network.groups, name="sg")
app.add_typer(storage.disks, name="disk")
app.add_typer(storage.snapshots, name="snapshot")
app.add_typer(storage.pools, name="storage-pool")
app.add_typer(network_edge.nics, name="nic")
app.add_typer(network_edge.eips, name="eip")
app.add_typer(network_edge.pools, name="ip-pool")
app.add_typer(network_edge.natgws, name="natgw")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
