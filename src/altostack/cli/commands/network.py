"""``alto vpc``, ``alto subnet``, ``alto sg``: the virtual network (docs/network.md).

VPC and subnet changes are operations on the server (202): the commands wait for them
with a progress bar by default (``--no-wait`` returns at once). Security groups and their
rules change synchronously.
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from altostack.cli.commands.common import YesOption, confirm, settle
from altostack.cli.commands.compute_common import Row, WaitTimeoutOption, emit_rows
from altostack.cli.output import emit_object
from altostack.cli.state import OutputOption, get_state
from altostack.cli.waiting import NoWaitOption
from altostack.client import path_of

vpcs = typer.Typer(help="VPCs: a tenant's private address space, with a default security group.")
subnets = typer.Typer(help="Subnets of a VPC: ranges VM addresses come from.")
groups = typer.Typer(help="Security groups: stateful packet filtering of VM ports.")

VPCS, SUBNETS, GROUPS = "/v1/vpcs", "/v1/subnets", "/v1/security-groups"
VPC_COLUMNS = ["id", "name", "cidr", "state", "created_at"]
SUBNET_COLUMNS = ["id", "name", "vpc_id", "cidr", "gateway_ip", "state"]
GROUP_COLUMNS = ["id", "name", "vpc_id", "default", "rules"]

TenantOption = Annotated[str | None, typer.Option(help="Another tenant's (admins)")]


def _group_row(group: Row) -> Row:
    return {
        **group,
        "default": "yes" if group.get("is_default") else "",
        "rules": len(group["rules"]),
    }


# -- VPCs ------------------------------------------------------------------------------------


@vpcs.command("list")
def vpc_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Only this name")] = None,
    tenant_id: TenantOption = None,
    output: OutputOption = None,
) -> None:
    """VPCs, newest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(VPCS, name=name, tenant_id=tenant_id)
    emit_rows(state, items, VPC_COLUMNS, title="VPCs", derive=dict)


@vpcs.command("create")
def vpc_create(
    ctx: typer.Context,
    name: str,
    cidr: Annotated[str, typer.Option(help="IPv4, /8 to /28, e.g. 10.0.0.0/16")],
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Create a VPC (CIDRs may overlap other VPCs')."""
    state = get_state(ctx, output)
    response = state.client().send("POST", VPCS, json={"name": name, "cidr": cidr})
    settle(state, response, "vpc", done="", wait=not no_wait, timeout=timeout)


@vpcs.command("show")
def vpc_show(ctx: typer.Context, vpc_id: str, output: OutputOption = None) -> None:
    """One VPC."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(VPCS, vpc_id)))


@vpcs.command("delete")
def vpc_delete(
    ctx: typer.Context,
    vpc_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a VPC without subnets (its security groups go with it)."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete VPC {vpc_id} and its security groups?")
    response = state.client().send("DELETE", path_of(VPCS, vpc_id))
    settle(state, response, "vpc", done=f"Deleted {vpc_id}.", wait=not no_wait, timeout=timeout)


# -- subnets ---------------------------------------------------------------------------------


@subnets.command("list")
def subnet_list(
    ctx: typer.Context,
    vpc: Annotated[str | None, typer.Option(help="Only this VPC's")] = None,
    tenant_id: TenantOption = None,
    output: OutputOption = None,
) -> None:
    """Subnets, newest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(SUBNETS, vpc_id=vpc, tenant_id=tenant_id)
    emit_rows(state, items, SUBNET_COLUMNS, title="subnets", derive=dict)


@subnets.command("create")
def subnet_create(
    ctx: typer.Context,
    name: str,
    vpc: Annotated[str, typer.Option(help="The VPC's id")],
    cidr: Annotated[str, typer.Option(help="Inside the VPC's CIDR")],
    gateway: Annotated[str | None, typer.Option(help="Default: the first address")] = None,
    dns: Annotated[list[str] | None, typer.Option(help="A DNS server (repeatable)")] = None,
    no_dhcp: Annotated[bool, typer.Option("--no-dhcp", help="Addresses set by hand")] = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Create a subnet in a VPC."""
    state = get_state(ctx, output)
    body: dict[str, object] = {"vpc_id": vpc, "name": name, "cidr": cidr, "dns_servers": dns or []}
    body["dhcp"] = not no_dhcp
    if gateway is not None:
        body["gateway_ip"] = gateway
    response = state.client().send("POST", SUBNETS, json=body)
    settle(state, response, "subnet", done="", wait=not no_wait, timeout=timeout)


@subnets.command("show")
def subnet_show(ctx: typer.Context, subnet_id: str, output: OutputOption = None) -> None:
    """One subnet, with how many addresses are free."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(SUBNETS, subnet_id)))


@subnets.command("delete")
def subnet_delete(
    ctx: typer.Context,
    subnet_id: str,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: WaitTimeoutOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a subnet whose addresses are all free."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete subnet {subnet_id}?")
    response = state.client().send("DELETE", path_of(SUBNETS, subnet_id))
    done = f"Deleted {subnet_id}."
    settle(state, response, "subnet", done=done, wait=not no_wait, timeout=timeout)


# -- security groups -------------------------------------------------------------------------


@groups.command("list")
def sg_list(
    ctx: typer.Context,
    vpc: Annotated[str | None, typer.Option(help="Only this VPC's")] = None,
    tenant_id: TenantOption = None,
    output: OutputOption = None,
) -> None:
    """Security groups, newest first."""
    state = get_state(ctx, output)
    items = state.client().list_all(GROUPS, vpc_id=vpc, tenant_id=tenant_id)
    emit_rows(state, items, GROUP_COLUMNS, title="security groups", derive=_group_row)


@groups.command("create")
def sg_create(
    ctx: typer.Context,
    name: str,
    vpc: Annotated[str, typer.Option(help="The VPC's id")],
    description: Annotated[str | None, typer.Option()] = None,
    output: OutputOption = None,
) -> None:
    """Create an empty group (no rule: nothing in, nothing out)."""
    state = get_state(ctx, output)
    body = {"vpc_id": vpc, "name": name, "description": description}
    emit_object(state, state.client().post(GROUPS, body))


@groups.command("show")
def sg_show(ctx: typer.Context, group_id: str, output: OutputOption = None) -> None:
    """One group with its rules."""
    state = get_state(ctx, output)
    emit_object(state, state.client().get(path_of(GROUPS, group_id)))


@groups.command("delete")
def sg_delete(
    ctx: typer.Context, group_id: str, yes: YesOption = False, output: OutputOption = None
) -> None:
    """Delete a group (not a VPC's default one, nor one other groups' rules name)."""
    state = get_state(ctx, output)
    confirm(yes, f"Delete security group {group_id}?")
    response = state.client().send("DELETE", path_of(GROUPS, group_id))
    settle(state, response, None, done=f"Deleted {group_id}.")


@groups.command("rule-add")
def sg_rule_add(
    ctx: typer.Context,
    group_id: str,
    direction: Annotated[Literal["ingress", "egress"], typer.Option()],
    protocol: Annotated[Literal["tcp", "udp", "icmp", "any"], typer.Option()] = "any",
    port: Annotated[
        str | None, typer.Option(help="A port or a range, e.g. 22 or 8000-8080 (tcp/udp)")
    ] = None,
    remote_cidr: Annotated[str | None, typer.Option(help="Default: anywhere")] = None,
    remote_group: Annotated[str | None, typer.Option(help="A group of the same VPC")] = None,
    action: Annotated[Literal["allow", "deny"], typer.Option()] = "allow",
    priority: Annotated[int, typer.Option(min=1, max=1000, help="Lower is tried first")] = 100,
    output: OutputOption = None,
) -> None:
    """Add a rule; rules of all a port's groups are tried by priority, first match wins."""
    state = get_state(ctx, output)
    body: dict[str, object] = {
        "direction": direction,
        "protocol": protocol,
        "action": action,
        "priority": priority,
    }
    if port is not None:
        low, _, high = port.partition("-")
        if not (low.isdigit() and (high or low).isdigit()):
            raise typer.BadParameter(f"{port!r} is not a port or a range like 8000-8080")
        body["port_min"], body["port_max"] = int(low), int(high or low)
    if remote_cidr is not None:
        body["remote_cidr"] = remote_cidr
    if remote_group is not None:
        body["remote_group_id"] = remote_group
    emit_object(state, state.client().post(f"{path_of(GROUPS, group_id)}/rules", body))


@groups.command("rule-delete")
def sg_rule_delete(
    ctx: typer.Context, group_id: str, rule_id: str, output: OutputOption = None
) -> None:
    """Delete one rule of a group."""
    state = get_state(ctx, output)
    response = state.client().send("DELETE", f"{path_of(GROUPS, group_id)}/rules/{rule_id}")
    settle(state, response, None, done=f"Deleted rule {rule_id}.")
