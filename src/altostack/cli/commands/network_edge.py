"""``alto nic``, ``alto eip``, ``alto ip-pool``, ``alto natgw`` (docs/network.md).

What the hosts must apply (attach, detach, bind, unbind, NAT gateways) is an operation on
the server: the commands wait for it by default (``--no-wait`` returns at once).
Bookkeeping (creating a NIC, rules, pools) answers at once.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from altostack.cli.commands.common import YesOption, confirm, settle
from altostack.cli.commands.compute_common import Row, WaitTimeoutOption, emit_rows
from altostack.cli.output import emit_object
from altostack.cli.state import OutputFormat, OutputOption, get_state
from altostack.cli.waiting import NoWaitOption, follow_operation
from altostack.client import path_of

nics = typer.Typer(help="NICs: a VM's primary NIC and elastic NICs you attach and move.")
eips = typer.Typer(help="Elastic IPs: public addresses bound to a VM, a NIC or a NAT gateway.")
pools = typer.Typer(help="Public IP pools of the region (platform administrators).")
natgws = typer.Typer(help="NAT gateways: SNAT for subnets or VMs, DNAT port mappings.")

NICS, EIPS, POOLS, NATGWS = "/v1/nics", "/v1/eips", "/v1/ip-pools", "/v1/nat-gateways"
NIC_COLUMNS = ["id", "private_ip", "mac", "subnet_id", "vm_id", "primary", "state"]
EIP_COLUMNS = ["id", "address", "state", "target", "bandwidth_mbps"]
POOL_COLUMNS = ["id", "name", "cidr", "gateway_ip", "range_start", "range_end"]
NATGW_COLUMNS = ["id", "name", "vpc_id", "public_ip", "state", "snat", "dnat"]

TenantOption = Annotated[str | None, typer.Option(help="Another tenant's (admins)")]


def _eip_row(eip: Row) -> Row:
    return {**eip, "target": eip.get("nic_id") or eip.get("nat_gateway_id") or ""}


def _natgw_row(nat: Row) -> Row:
    return {**nat, "snat": len(nat["snat_rules"]), "dnat": len(nat["dnat_rules"])}


# -- NICs ------------------------------------------------------------------------------------


@nics.command("list")
def nic_list(
    ctx: typer.Context,
    vm: Annotated[str | None, typer.Option(help="Only this VM's")] = None,
    subnet: Annotated[str | None, typer.Option(help="Only this subnet's")] = None,
    vpc: Annotated[str | None, typer.Option(help="Only this VPC's")] = None,
    tenant_id: TenantOption = None,
    output: OutputOption = None,
) -> None:
    """NICs, newest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(
        NICS, vm_id=vm, subnet_id=subnet, vpc_id=vpc, tenant_id=tenant_id
    )
    emit_rows(state, items, NIC_COLUMNS, title="NICs", derive=dict)


@nics.command("create")
def nic_create(
    ctx: typer.Context,
    subnet: Annotated[str, typer.Option(help="The subnet's id")],
    name: Annotated[str | None, typer.Option()] = None,
    ip: Annotated[str | None, typer.Option(help="A fixed address (default: the next free)")] = None,
    sg: Annotated[
        list[str] | None, typer.Option(help="A security group (repeatable; default: VPC's)")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Create an elastic NIC (attach it to a VM with ``alto nic attach``)."""
    state = get_state(ctx, output)
    body: dict[str, object] = {"subnet_id": subnet, "security_group_ids": sg or []}
    if name is not None:
        body["name"] = name
    if ip is not None:
        body["private_ip"] = ip
    emit_object(state, state.client().post(NICS, body))


@nics.command("show")
def nic_show(ctx: typer.Context, nic_id: str, output: OutputOption = None) -> None:
    """One NIC."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(NICS, nic_id)))


@nics.command("set-groups")
def nic_set_groups(
    ctx: typer.Context,
    nic_id: str,
    sg: Annotated[
        list[str] | None, typer.Option(help="A security group (repeatable; none: VPC default)")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Replace the NIC's security groups (applied to a running VM at once)."""
    state = get_state(ctx, output)
    response = state.client().send(
        "PATCH", path_of(NICS, nic_id), json={"security_group_ids": sg or []}
    )
    settle(state, response, None, done="")


@nics.command("delete")
def nic_delete(
    ctx: typer.Context, nic_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete an unbound elastic NIC (its address is freed)."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete NIC {nic_id}?")
    response = state.client().send("DELETE", path_of(NICS, nic_id))
    settle(state, response, None, done=f"Deleted {nic_id}.")


def _act(
    ctx: typer.Context,
    base: str,
    ident: str,
    verb: str,
    body: dict[str, object],
    thing: str,
    no_wait: bool,
    timeout: float | None,
    output: OutputFormat | None,
) -> None:
    state = get_state(ctx, output)
    path = path_of(base, ident)
    response = state.client().send("POST", f"{path}/actions/{verb}", json=body)
    follow_operation(state, response, thing, wait=not no_wait, timeout=timeout, resource_path=path)


@nics.command("attach")
def nic_attach(
    ctx: typer.Context,
    nic_id: str,
    vm: Annotated[str, typer.Option(help="A running or stopped VM")],
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Attach an elastic NIC to a VM (at most 6 NICs per VM)."""
    _act(ctx, NICS, nic_id, "attach", {"vm_id": vm}, "nic", no_wait, timeout, output)


@nics.command("detach")
def nic_detach(
    ctx: typer.Context,
    nic_id: str,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Detach an elastic NIC (it keeps its MAC and address; attach it elsewhere)."""
    _act(ctx, NICS, nic_id, "detach", {}, "nic", no_wait, timeout, output)


# -- elastic IPs -----------------------------------------------------------------------------


@eips.command("list")
def eip_list(
    ctx: typer.Context,
    state_filter: Annotated[str | None, typer.Option("--state", help="bound or unbound")] = None,
    tenant_id: TenantOption = None,
    output: OutputOption = None,
) -> None:
    """Elastic IPs, newest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(EIPS, state=state_filter, tenant_id=tenant_id)
    emit_rows(state, items, EIP_COLUMNS, title="elastic IPs", derive=_eip_row)


@eips.command("allocate")
def eip_allocate(
    ctx: typer.Context,
    bandwidth: Annotated[int | None, typer.Option(help="Limit in Mbit/s (1-10000)")] = None,
    pool: Annotated[str | None, typer.Option(help="Default: the region's first pool")] = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Allocate an elastic IP."""
    state = get_state(ctx, output)
    body: dict[str, object] = {}
    if bandwidth is not None:
        body["bandwidth_mbps"] = bandwidth
    if pool is not None:
        body["pool_id"] = pool
    response = state.client().send("POST", EIPS, json=body)
    settle(state, response, "eip", done="", wait=not no_wait, timeout=timeout)


@eips.command("show")
def eip_show(ctx: typer.Context, eip_id: str, output: OutputOption = None) -> None:
    """One elastic IP."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(EIPS, eip_id)))


@eips.command("bind")
def eip_bind(
    ctx: typer.Context,
    eip_id: str,
    vm: Annotated[str | None, typer.Option(help="A VM (its primary NIC)")] = None,
    nic: Annotated[str | None, typer.Option(help="A NIC")] = None,
    natgw: Annotated[str | None, typer.Option(help="A NAT gateway")] = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Bind an unbound elastic IP to one target."""
    body = {k: v for k, v in (("vm_id", vm), ("nic_id", nic), ("nat_gateway_id", natgw)) if v}
    if len(body) != 1:
        raise typer.BadParameter("give exactly one of --vm, --nic, --natgw")
    _act(ctx, EIPS, eip_id, "bind", dict(body), "eip", no_wait, timeout, output)


@eips.command("unbind")
def eip_unbind(
    ctx: typer.Context,
    eip_id: str,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Unbind an elastic IP from its target."""
    _act(ctx, EIPS, eip_id, "unbind", {}, "eip", no_wait, timeout, output)


@eips.command("set-bandwidth")
def eip_set_bandwidth(
    ctx: typer.Context,
    eip_id: str,
    mbps: Annotated[int | None, typer.Argument(help="Mbit/s; omit for unlimited")] = None,
    output: OutputOption = None,
) -> None:
    """Change the bandwidth limit (online)."""
    state = get_state(ctx, output)
    response = state.client().send("PATCH", path_of(EIPS, eip_id), json={"bandwidth_mbps": mbps})
    settle(state, response, None, done="")


@eips.command("release")
def eip_release(
    ctx: typer.Context, eip_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Release an unbound elastic IP."""
    state = get_state(ctx, output)
    confirm(yes, f"Release elastic IP {eip_id}?")
    response = state.client().send("DELETE", path_of(EIPS, eip_id))
    settle(state, response, None, done=f"Released {eip_id}.")


# -- public IP pools -------------------------------------------------------------------------


@pools.command("list")
def pool_list(ctx: typer.Context, output: OutputOption = None) -> None:
    """The region's public IP pools."""
    state = get_state(ctx, output)
    emit_rows(state, state.client().list_all(POOLS), POOL_COLUMNS, title="IP pools", derive=dict)


@pools.command("create")
def pool_create(
    ctx: typer.Context,
    name: str,
    cidr: Annotated[str, typer.Option(help="The external network, e.g. 203.0.113.0/24")],
    gateway: Annotated[str | None, typer.Option(help="Default: the first address")] = None,
    start: Annotated[str | None, typer.Option(help="First address handed out")] = None,
    end: Annotated[str | None, typer.Option(help="Last address handed out")] = None,
    output: OutputOption = None,
) -> None:
    """Define a public IP pool."""
    state = get_state(ctx, output)
    body = {
        "name": name, "cidr": cidr, "gateway_ip": gateway, "range_start": start, "range_end": end,
    }  # fmt: skip
    emit_object(state, state.client().post(POOLS, body))


@pools.command("delete")
def pool_delete(
    ctx: typer.Context, pool_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete a pool none of whose addresses is in use."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete IP pool {pool_id}?")
    response = state.client().send("DELETE", path_of(POOLS, pool_id))
    settle(state, response, None, done=f"Deleted {pool_id}.")


# -- NAT gateways ----------------------------------------------------------------------------


@natgws.command("list")
def natgw_list(
    ctx: typer.Context,
    vpc: Annotated[str | None, typer.Option(help="Only this VPC's")] = None,
    tenant_id: TenantOption = None,
    output: OutputOption = None,
) -> None:
    """NAT gateways, newest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(NATGWS, vpc_id=vpc, tenant_id=tenant_id)
    emit_rows(state, items, NATGW_COLUMNS, title="NAT gateways", derive=_natgw_row)


@natgws.command("create")
def natgw_create(
    ctx: typer.Context,
    name: str,
    vpc: Annotated[str, typer.Option(help="The VPC's id")],
    eip: Annotated[str | None, typer.Option(help="An unbound elastic IP to use")] = None,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Create a NAT gateway in a VPC."""
    state = get_state(ctx, output)
    response = state.client().send(
        "POST", NATGWS, json={"vpc_id": vpc, "name": name, "eip_id": eip}
    )
    settle(state, response, "nat_gateway", done="", wait=not no_wait, timeout=timeout)


@natgws.command("show")
def natgw_show(ctx: typer.Context, natgw_id: str, output: OutputOption = None) -> None:
    """One NAT gateway with its rules."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(NATGWS, natgw_id)))


@natgws.command("delete")
def natgw_delete(
    ctx: typer.Context,
    natgw_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a NAT gateway (its rules go, its elastic IP is unbound)."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete NAT gateway {natgw_id}?")
    response = state.client().send("DELETE", path_of(NATGWS, natgw_id))
    done = f"Deleted {natgw_id}."
    settle(state, response, "nat_gateway", done=done, wait=not no_wait, timeout=timeout)


@natgws.command("snat-add")
def natgw_snat_add(
    ctx: typer.Context,
    natgw_id: str,
    subnet: Annotated[str | None, typer.Option(help="A whole subnet")] = None,
    vm: Annotated[str | None, typer.Option(help="One VM (whitelist)")] = None,
    output: OutputOption = None,
) -> None:
    """Egress through the gateway's elastic IP for a subnet or one VM."""
    if bool(subnet) == bool(vm):
        raise typer.BadParameter("give --subnet or --vm")
    state = get_state(ctx, output)
    body = {"subnet_id": subnet, "vm_id": vm}
    emit_object(state, state.client().post(f"{path_of(NATGWS, natgw_id)}/snat-rules", body))


@natgws.command("dnat-add")
def natgw_dnat_add(
    ctx: typer.Context,
    natgw_id: str,
    public_port: Annotated[int, typer.Option(min=1, max=65535)],
    vm: Annotated[str, typer.Option(help="The VM traffic goes to")],
    private_port: Annotated[int, typer.Option(min=1, max=65535)],
    protocol: Annotated[Literal["tcp", "udp"], typer.Option()] = "tcp",
    output: OutputOption = None,
) -> None:
    """Map ``public_port`` of the gateway's elastic IP to a VM's port."""
    state = get_state(ctx, output)
    body = {
        "protocol": protocol, "public_port": public_port, "vm_id": vm,
        "private_port": private_port,
    }  # fmt: skip
    emit_object(state, state.client().post(f"{path_of(NATGWS, natgw_id)}/dnat-rules", body))


@natgws.command("rule-delete")
def natgw_rule_delete(
    ctx: typer.Context, natgw_id: str, rule_id: str, output: OutputOption = None
) -> None:
    """Delete a SNAT or DNAT rule."""
    state = get_state(ctx, output)
    response = state.client().send("DELETE", f"{path_of(NATGWS, natgw_id)}/rules/{rule_id}")
    settle(state, response, None, done=f"Deleted rule {rule_id}.")
