"""``alto region``, ``alto cluster``, ``alto host``: where VMs run (platform administrators).

Hosts are not created here: an agent joins a cluster with the cluster's join token
(``alto cluster join-token``), and from then on the host is listed and managed here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from altostack.cli.commands.common import LimitOption, YesOption, confirm, settle
from altostack.cli.commands.compute_common import Row, emit_rows, human_mib
from altostack.cli.output import emit_object, note
from altostack.cli.state import CliState, OutputOption, get_state
from altostack.client import path_of

regions = typer.Typer(help="Regions: the top level of the infrastructure (platform admins).")
clusters = typer.Typer(help="Clusters of hosts in a region (platform admins).")
hosts = typer.Typer(help="Hypervisor hosts: list, inspect, take out of service (platform admins).")

REGIONS = "/v1/regions"
CLUSTERS = "/v1/clusters"
HOSTS = "/v1/hosts"

REGION_COLUMNS = ["id", "name", "description", "created_at"]
CLUSTER_COLUMNS = [
    "id",
    "name",
    "region_id",
    "arch",
    "cpu_allocation_ratio",
    "ram_allocation_ratio",
    "policy",
    "created_at",
]
HOST_COLUMNS = [
    "id",
    "hostname",
    "cluster",
    "state",
    "liveness",
    "vcpus",
    "memory",
    "disk",
    "load",
    "heartbeat",
]

Policy = Literal["spread", "pack"]


def _resolve_region(state: CliState, ref: str) -> str:
    """A region id from an id or a name (people remember ``default``, not ids)."""
    if ref.startswith("region-"):
        return ref
    for region in state.client().list_all(REGIONS):
        if region.get("name") == ref:
            return str(region["id"])
    raise typer.BadParameter(f"no region named {ref!r}", param_hint="--region")


# -- regions ---------------------------------------------------------------------------


@regions.command("list")
def region_list(ctx: typer.Context, output: OutputOption = None) -> None:
    """All regions."""
    state = get_state(ctx, output)
    emit_rows(state, state.client().list_all(REGIONS), REGION_COLUMNS, title="regions")


@regions.command("create")
def region_create(
    ctx: typer.Context,
    name: str,
    description: Annotated[str | None, typer.Option(help="What it is for")] = None,
    output: OutputOption = None,
) -> None:
    """Create a region."""
    state = get_state(ctx, output)
    body: dict[str, Any] = {"name": name}
    if description is not None:
        body["description"] = description
    emit_object(state, state.client().post(REGIONS, body))


@regions.command("delete")
def region_delete(
    ctx: typer.Context, region_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete an empty region."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete region {region_id}?")
    response = state.client().send("DELETE", path_of(REGIONS, region_id))
    settle(state, response, None, done=f"Deleted {region_id}.")


# -- clusters --------------------------------------------------------------------------


@clusters.command("list")
def cluster_list(
    ctx: typer.Context,
    region: Annotated[str | None, typer.Option(help="Only this region's (id or name)")] = None,
    output: OutputOption = None,
) -> None:
    """Clusters, optionally of one region."""
    state = get_state(ctx, output)
    region_id = _resolve_region(state, region) if region else None
    items = state.client().list_all(CLUSTERS, region_id=region_id)
    emit_rows(state, items, CLUSTER_COLUMNS, title="clusters")


@clusters.command("show")
def cluster_show(ctx: typer.Context, cluster_id: str, output: OutputOption = None) -> None:
    """One cluster."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(CLUSTERS, cluster_id)))


@clusters.command("create")
def cluster_create(
    ctx: typer.Context,
    name: str,
    region: Annotated[str, typer.Option(help="Region id or name")],
    arch: Annotated[Literal["x86_64", "aarch64"], typer.Option(help="CPU architecture")] = (
        "x86_64"
    ),
    cpu_ratio: Annotated[
        float | None, typer.Option(help="vCPUs per physical core (API default 4)")
    ] = None,
    ram_ratio: Annotated[
        float | None, typer.Option(help="Memory overcommit (API default 1)")
    ] = None,
    policy: Annotated[Policy | None, typer.Option(help="spread or pack VMs")] = None,
    output: OutputOption = None,
) -> None:
    """Create a cluster in a region."""
    state = get_state(ctx, output)
    body: dict[str, Any] = {"region_id": _resolve_region(state, region), "name": name}
    body["arch"] = arch
    if cpu_ratio is not None:
        body["cpu_allocation_ratio"] = cpu_ratio
    if ram_ratio is not None:
        body["ram_allocation_ratio"] = ram_ratio
    if policy is not None:
        body["policy"] = policy
    emit_object(state, state.client().post(CLUSTERS, body))


@clusters.command("update")
def cluster_update(
    ctx: typer.Context,
    cluster_id: str,
    cpu_ratio: Annotated[float | None, typer.Option(help="Can only go up")] = None,
    ram_ratio: Annotated[float | None, typer.Option(help="Can only go up")] = None,
    policy: Annotated[Policy | None, typer.Option(help="spread or pack VMs")] = None,
    output: OutputOption = None,
) -> None:
    """Change overcommit ratios or the placement policy (ratios can only go up, since
    lowering them could strand running VMs)."""
    state = get_state(ctx, output)
    body: dict[str, Any] = {}
    if cpu_ratio is not None:
        body["cpu_allocation_ratio"] = cpu_ratio
    if ram_ratio is not None:
        body["ram_allocation_ratio"] = ram_ratio
    if policy is not None:
        body["policy"] = policy
    if not body:
        raise typer.BadParameter("give at least one of --cpu-ratio, --ram-ratio, --policy")
    emit_object(state, state.client().patch(path_of(CLUSTERS, cluster_id), body))


@clusters.command("delete")
def cluster_delete(
    ctx: typer.Context, cluster_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete a cluster without hosts."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete cluster {cluster_id}?")
    response = state.client().send("DELETE", path_of(CLUSTERS, cluster_id))
    settle(state, response, None, done=f"Deleted {cluster_id}.")


@clusters.command("join-token")
def cluster_join_token(ctx: typer.Context, cluster_id: str, output: OutputOption = None) -> None:
    """A new token for agents to join the cluster; the previous one stops working."""
    state = get_state(ctx, output)
    issued = state.client().post(path_of(CLUSTERS, cluster_id, "actions", "join-token"), {})
    emit_object(state, issued)
    note(state, "The token is shown once; agents join with: alto agent --join URL --token TOKEN")


# -- hosts -----------------------------------------------------------------------------


def _used(usage: Any, allocatable: Any, key: str) -> str:
    used = (usage or {}).get(key)
    room = (allocatable or {}).get(key)
    return f"{used if used is not None else '-'}/{room if room is not None else '-'}"


def host_row(host: Row) -> Row:
    """A host as a table row: usage against what the scheduler may allocate."""
    usage, room = host.get("usage") or {}, host.get("allocatable") or {}
    memory = f"{human_mib(usage.get('memory_mib'))}/{human_mib(room.get('memory_mib'))}"
    return {
        "id": host.get("id"),
        "hostname": host.get("hostname"),
        "cluster": host.get("cluster_id"),
        "state": host.get("state"),
        "liveness": host.get("liveness"),
        "vcpus": _used(usage, room, "vcpus"),
        "memory": memory,
        "disk": f"{_used(usage, room, 'disk_gib')} GiB",
        "load": host.get("load"),
        "heartbeat": host.get("last_heartbeat_at"),
    }


@hosts.command("list")
def host_list(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Option(help="Only this cluster's (id)")] = None,
    state_: Annotated[
        str | None, typer.Option("--state", help="up, down, maintenance or disabled")
    ] = None,
    limit: LimitOption = 100,
    output: OutputOption = None,
) -> None:
    """Hosts with their usage (used/allocatable vCPUs, memory, disk)."""
    state = get_state(ctx, output)
    items = state.client().list_all(HOSTS, cluster_id=cluster, state=state_, max_items=limit)
    emit_rows(state, items, HOST_COLUMNS, title="hosts", derive=host_row)


@hosts.command("show")
def host_show(ctx: typer.Context, host_id: str, output: OutputOption = None) -> None:
    """One host, with capacity, allocatable and usage."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(HOSTS, host_id)))


def _host_action(ctx: typer.Context, host_id: str, verb: str, output: OutputOption) -> None:
    state = get_state(ctx, output)
    emit_object(state, state.client().post(path_of(HOSTS, host_id, "actions", verb), {}))


@hosts.command("enable")
def host_enable(ctx: typer.Context, host_id: str, output: OutputOption = None) -> None:
    """Let the scheduler place new VMs on the host again."""
    _host_action(ctx, host_id, "enable", output)


@hosts.command("disable")
def host_disable(ctx: typer.Context, host_id: str, output: OutputOption = None) -> None:
    """No new VMs on the host; the running ones stay."""
    _host_action(ctx, host_id, "disable", output)


@hosts.command("maintain")
def host_maintain(ctx: typer.Context, host_id: str, output: OutputOption = None) -> None:
    """Put the host in maintenance: no new VMs."""
    _host_action(ctx, host_id, "maintain", output)


@hosts.command("delete")
def host_delete(
    ctx: typer.Context, host_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Forget a host (refused while it has VMs)."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete host {host_id}?")
    response = state.client().send("DELETE", path_of(HOSTS, host_id))
    settle(state, response, None, done=f"Deleted {host_id}.")
