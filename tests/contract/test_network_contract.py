"""The network driver contract: one test per promise in ``drivers/network/base.py``."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from altostack.domain.ids import new_id
from altostack.drivers.errors import BackendFailure, InvalidSpec, InvalidState, NetworkNotFound
from altostack.drivers.network.base import (
    DhcpHost,
    DnatRule,
    EipBinding,
    ExternalSpec,
    InstanceMetadata,
    NetworkSpec,
    PortSpec,
    RouterSpec,
    RouterSubnet,
    RuleSpec,
    SecurityGroupSpec,
    SnatRule,
)
from tests.contract.conftest import NetworkHarness

_vni = iter(range(5000, 6000))


def _net(**changes: object) -> NetworkSpec:
    spec = NetworkSpec(new_id("subnet"), next(_vni), "10.20.0.0/24", "10.20.0.1")
    return replace(spec, **changes)  # type: ignore[arg-type]


def _port(network_id: str, host: int, **changes: object) -> PortSpec:
    spec = PortSpec(
        new_id("nic"), network_id, f"02:00:00:00:00:{host:02x}", f"10.20.0.{host}", ("sg-a",)
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


async def test_ensure_network_is_idempotent(network: NetworkHarness) -> None:
    spec = _net()
    first = await network.driver.ensure_network(spec)
    assert (first.id, first.vni, first.cidr, first.mtu) == (spec.id, spec.vni, spec.cidr, 1450)
    assert await network.driver.ensure_network(spec) == first
    await asyncio.gather(*(network.driver.ensure_network(spec) for _ in range(3)))
    assert await network.driver.list_networks() == [first]


async def test_ensure_network_converges_the_mtu(network: NetworkHarness) -> None:
    spec = _net()
    await network.driver.ensure_network(spec)
    assert (await network.driver.ensure_network(replace(spec, mtu=1400))).mtu == 1400
    assert [n.mtu for n in await network.driver.list_networks()] == [1400]


async def test_vni_and_cidr_are_fixed_and_unique(network: NetworkHarness) -> None:
    spec = _net()
    await network.driver.ensure_network(spec)
    with pytest.raises(InvalidSpec):
        await network.driver.ensure_network(replace(spec, vni=spec.vni + 500))
    with pytest.raises(InvalidSpec):
        await network.driver.ensure_network(
            replace(spec, cidr="10.30.0.0/24", gateway_ip="10.30.0.1")
        )
    with pytest.raises(InvalidSpec):
        await network.driver.ensure_network(_net(vni=spec.vni))
    assert [n.id for n in await network.driver.list_networks()] == [spec.id]


async def test_delete_network_and_missing_deletes_succeed(network: NetworkHarness) -> None:
    spec = _net()
    await network.driver.ensure_network(spec)
    await network.driver.delete_network(spec.id)
    await network.driver.delete_network(spec.id)
    await network.driver.delete_network("subnet-missing")
    assert await network.driver.list_networks() == []


async def test_a_network_with_ports_cannot_be_deleted(network: NetworkHarness) -> None:
    net = _net()
    await network.driver.ensure_network(net)
    port = _port(net.id, 10)
    await network.driver.ensure_port(port)
    with pytest.raises(InvalidState) as exc:
        await network.driver.delete_network(net.id)
    assert port.id in str(exc.value)
    await network.driver.delete_port(port.id)
    await network.driver.delete_network(net.id)


async def test_ensure_port_is_idempotent_and_converges_groups(network: NetworkHarness) -> None:
    net = _net()
    await network.driver.ensure_network(net)
    spec = _port(net.id, 10)
    first = await network.driver.ensure_port(spec)
    assert (first.network_id, first.mac, first.ip) == (net.id, spec.mac, spec.ip)
    assert first.device
    assert await network.driver.ensure_port(spec) == first
    changed = await network.driver.ensure_port(replace(spec, security_group_ids=("sg-b",)))
    assert changed.security_group_ids == ("sg-b",)
    assert await network.driver.list_ports() == [changed]


async def test_ports_need_their_network(network: NetworkHarness) -> None:
    with pytest.raises(NetworkNotFound):
        await network.driver.ensure_port(_port("subnet-missing", 10))
    assert await network.driver.list_ports() == []


async def test_port_addresses_are_checked(network: NetworkHarness) -> None:
    net = _net()
    await network.driver.ensure_network(net)
    taken = _port(net.id, 10)
    await network.driver.ensure_port(taken)
    bad = [
        _port(net.id, 11, ip="10.99.0.11"),  # outside the CIDR
        _port(net.id, 12, ip=taken.ip),  # IP in use
        _port(net.id, 13, mac=taken.mac),  # MAC in use
        replace(taken, ip="10.20.0.99"),  # an existing port cannot change its IP
    ]
    for spec in bad:
        with pytest.raises(InvalidSpec):
            await network.driver.ensure_port(spec)
    assert await network.driver.list_ports() == [await network.driver.ensure_port(taken)]


async def test_list_ports_by_network(network: NetworkHarness) -> None:
    a, b = _net(), _net(cidr="10.21.0.0/24", gateway_ip="10.21.0.1")
    await network.driver.ensure_network(a)
    await network.driver.ensure_network(b)
    pa = await network.driver.ensure_port(_port(a.id, 10))
    pb = await network.driver.ensure_port(_port(b.id, 10, ip="10.21.0.10"))
    assert await network.driver.list_ports(a.id) == [pa]
    assert await network.driver.list_ports(b.id) == [pb]


async def test_delete_port_and_missing_deletes_succeed(network: NetworkHarness) -> None:
    net = _net()
    await network.driver.ensure_network(net)
    port = _port(net.id, 10)
    await network.driver.ensure_port(port)
    await network.driver.delete_port(port.id)
    await network.driver.delete_port(port.id)
    await network.driver.delete_port("nic-missing")
    assert await network.driver.list_ports() == []


async def test_an_agent_restart_keeps_the_data_plane(network: NetworkHarness) -> None:
    net = _net()
    info = await network.driver.ensure_network(net)
    port = await network.driver.ensure_port(_port(net.id, 10))
    await network.restart()
    assert await network.driver.list_networks() == [info]
    assert await network.driver.list_ports() == [port]


async def test_a_failed_ensure_leaves_nothing(network: NetworkHarness) -> None:
    net = _net()
    network.faults.inject("ensure_network", resource_id=net.id)
    with pytest.raises(BackendFailure, match="injected"):
        await network.driver.ensure_network(net)
    assert await network.driver.list_networks() == []
    await network.driver.ensure_network(net)
    port = _port(net.id, 10)
    network.faults.inject("ensure_port")
    with pytest.raises(BackendFailure):
        await network.driver.ensure_port(port)
    assert await network.driver.list_ports() == []


def _group(**changes: object) -> SecurityGroupSpec:
    spec = SecurityGroupSpec(
        new_id("sg"),
        (
            RuleSpec("ingress", "tcp", 22, 22, remote_cidr="10.0.0.0/8"),
            RuleSpec("ingress", "icmp", remote_ips=("10.20.0.7",), priority=50),
            RuleSpec("egress", action="allow"),
        ),
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


async def test_security_groups_are_idempotent_converge_and_delete(
    network: NetworkHarness,
) -> None:
    net = _net()
    await network.driver.ensure_network(net)
    group = _group()
    await network.driver.ensure_port(_port(net.id, 10, security_group_ids=(group.id,)))
    assert await network.driver.ensure_security_group(group) == group
    assert await network.driver.ensure_security_group(group) == group
    assert await network.driver.list_security_groups() == [group]
    changed = replace(group, rules=(RuleSpec("ingress", "udp", 53, 53, action="deny"),))
    assert await network.driver.ensure_security_group(changed) == changed
    assert await network.driver.list_security_groups() == [changed]
    await network.restart()
    assert await network.driver.list_security_groups() == [changed]
    await network.driver.delete_security_group(group.id)
    await network.driver.delete_security_group(group.id)
    await network.driver.delete_security_group("sg-missing")
    assert await network.driver.list_security_groups() == []


async def test_a_failed_group_change_keeps_the_previous_rules(network: NetworkHarness) -> None:
    group = _group()
    await network.driver.ensure_security_group(group)
    network.faults.inject("ensure_security_group", resource_id=group.id)
    with pytest.raises(BackendFailure):
        await network.driver.ensure_security_group(replace(group, rules=()))
    assert await network.driver.list_security_groups() == [group]


def test_rule_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="ports apply"):
        RuleSpec("ingress", "icmp", 1, 2)
    with pytest.raises(ValueError, match="port_min <= port_max"):
        RuleSpec("ingress", "tcp", 90, 80)
    with pytest.raises(ValueError, match="direction"):
        RuleSpec("sideways")  # type: ignore[arg-type]
    assert RuleSpec("ingress", "tcp", 80).port_max == 80
    assert RuleSpec("ingress", remote_cidr="10.1.2.3/8").remote_cidr == "10.0.0.0/8"


# -- routers -----------------------------------------------------------------------------------


def _router(network_id: str, **changes: object) -> RouterSpec:
    spec = RouterSpec(
        id=new_id("vpc"),
        network_id=network_id,
        subnets=(
            RouterSubnet(new_id("subnet"), "10.20.0.0/25", "10.20.0.1"),
            RouterSubnet(new_id("subnet"), "10.20.0.128/25", "10.20.0.129", dhcp=False),
        ),
        external=ExternalSpec("203.0.113.0/24", "203.0.113.1", "203.0.113.10"),
        default_snat=True,
        snat=(SnatRule("10.20.0.0/25", "203.0.113.11"),),
        eips=(EipBinding("203.0.113.20", "10.20.0.5", bandwidth_mbps=10),),
        dnat=(DnatRule("203.0.113.11", "tcp", 2222, "10.20.0.6", 22),),
        dhcp_hosts=(DhcpHost("02:00:00:00:00:05", "10.20.0.5", "web"),),
        instances=(InstanceMetadata("10.20.0.5", "vm-web", "web", ("ssh-ed25519 AAAA k",)),),
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


async def test_ensure_router_is_idempotent_converges_and_survives_a_restart(
    network: NetworkHarness,
) -> None:
    net = _net(cidr="10.20.0.0/24", gateway_ip=None)
    await network.driver.ensure_network(net)
    spec = _router(net.id)
    first = await network.driver.ensure_router(spec)
    assert first.spec == spec
    assert await network.driver.ensure_router(spec) == first
    assert await network.driver.list_routers() == [first]
    changed = replace(
        spec,
        eips=(),
        dnat=(),
        dhcp_hosts=(*spec.dhcp_hosts, DhcpHost("02:00:00:00:00:07", "10.20.0.7", "db")),
        instances=(),
    )
    second = await network.driver.ensure_router(changed)
    assert second.spec == changed
    assert await network.driver.list_routers() == [second]
    await network.restart()
    assert await network.driver.list_routers() == [second]
    assert await network.driver.ensure_router(changed) == second


async def test_a_router_without_external_network_and_delete(network: NetworkHarness) -> None:
    net = _net(cidr="10.20.0.0/24", gateway_ip=None)
    await network.driver.ensure_network(net)
    inside = _router(net.id, external=None, default_snat=False, snat=(), eips=(), dnat=())
    info = await network.driver.ensure_router(inside)
    assert await network.driver.list_routers() == [info]
    await network.driver.delete_router(inside.id)
    await network.driver.delete_router(inside.id)
    await network.driver.delete_router("vpc-missing")
    assert await network.driver.list_routers() == []


async def test_routers_need_their_network_and_a_failed_one_leaves_nothing(
    network: NetworkHarness,
) -> None:
    with pytest.raises(NetworkNotFound):
        await network.driver.ensure_router(_router("subnet-missing"))
    net = _net(cidr="10.20.0.0/24", gateway_ip=None)
    await network.driver.ensure_network(net)
    spec = _router(net.id)
    network.faults.inject("ensure_router", resource_id=spec.id)
    with pytest.raises(BackendFailure):
        await network.driver.ensure_router(spec)
    assert await network.driver.list_routers() == []


def test_router_specs_are_checked() -> None:
    with pytest.raises(ValueError, match="external network"):
        RouterSpec("vpc-1", "net-1", default_snat=True)
    with pytest.raises(ValueError, match="outside"):
        RouterSubnet("subnet-1", "10.0.0.0/24", "10.0.1.1")
    ordered = RouterSpec(
        "vpc-1",
        "net-1",
        external=ExternalSpec("203.0.113.0/24", "203.0.113.1", "203.0.113.2"),
        snat=(SnatRule("10.0.0.0/16", "203.0.113.3"), SnatRule("10.0.0.7/32", "203.0.113.4")),
    )
    assert [r.source_cidr for r in ordered.snat] == ["10.0.0.7/32", "10.0.0.0/16"]
