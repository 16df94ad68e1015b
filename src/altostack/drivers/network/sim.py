"""The ``sim`` network backend: networks and ports in memory, checked like the kernel would.

The :class:`SimDataplane` stands for the kernel objects (bridges, VXLAN devices, taps)
that keep forwarding when the agent dies; :class:`SimNetworkDriver` instances come and go
over it. Conflicts a real data plane would hit (two VXLAN devices with one VNI, two ports
with one IP) raise the same typed errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from altostack.drivers.errors import InvalidSpec, InvalidState, NetworkNotFound
from altostack.drivers.faults import FaultInjector
from altostack.drivers.network.base import (
    NetworkDriver,
    NetworkInfo,
    NetworkSpec,
    PortInfo,
    PortSpec,
    RouterInfo,
    RouterSpec,
    SecurityGroupSpec,
    device_name,
)
from altostack.drivers.timings import SimTimings

__all__ = ["SimDataplane", "SimNetworkDriver"]

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class SimDataplane:
    """The host's networks and ports (what ``ip link`` / ``bridge fdb`` would show).

    One lock serialises changes, as uniqueness (VNI, IP, MAC) spans objects.
    """

    networks: dict[str, NetworkInfo] = field(default_factory=dict)
    ports: dict[str, PortInfo] = field(default_factory=dict)
    groups: dict[str, SecurityGroupSpec] = field(default_factory=dict)
    routers: dict[str, RouterInfo] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


def tap_name(port_id: str) -> str:
    """The host-side device name, within Linux's 15-character limit."""
    return device_name("tap", port_id)


class SimNetworkDriver(NetworkDriver):
    """A network driver over a :class:`SimDataplane` (a new one unless given)."""

    def __init__(
        self,
        dataplane: SimDataplane | None = None,
        *,
        timings: SimTimings | None = None,
        faults: FaultInjector | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.dataplane = dataplane or SimDataplane()
        self.timings = timings or SimTimings()
        self.faults = faults or FaultInjector()
        self._sleep = sleep

    async def ensure_network(self, spec: NetworkSpec) -> NetworkInfo:
        async with self.dataplane.lock:
            nets = self.dataplane.networks
            wanted = NetworkInfo(
                spec.id, spec.vni, spec.cidr, spec.gateway_ip, spec.mtu, spec.peers
            )
            current = nets.get(spec.id)
            if current == wanted:
                return wanted
            if current is not None and (current.vni, current.cidr) != (spec.vni, spec.cidr):
                raise InvalidSpec(
                    f"network {spec.id} has vni {current.vni} and cidr {current.cidr}; "
                    "those cannot change (make a new network)"
                )
            clash = next((n for n in nets.values() if n.vni == spec.vni and n.id != spec.id), None)
            if clash is not None:
                raise InvalidSpec(f"vni {spec.vni} is already used by network {clash.id}")
            await self._work("ensure_network", self.timings.ensure_network, spec.id)
            nets[spec.id] = wanted
            return wanted

    async def delete_network(self, network_id: str) -> None:
        async with self.dataplane.lock:
            if network_id not in self.dataplane.networks:
                return
            ports = sorted(
                p.id for p in self.dataplane.ports.values() if p.network_id == network_id
            )
            if ports:
                raise InvalidState(
                    "in use",
                    "without ports",
                    resource_id=network_id,
                    message=f"network {network_id} still has {len(ports)} port(s) "
                    f"({', '.join(ports)}); delete them first",
                )
            await self._work("delete_network", self.timings.delete_network, network_id)
            del self.dataplane.networks[network_id]

    async def list_networks(self) -> list[NetworkInfo]:
        return [n for _, n in sorted(self.dataplane.networks.items())]

    async def ensure_port(self, spec: PortSpec) -> PortInfo:
        async with self.dataplane.lock:
            net = self.dataplane.networks.get(spec.network_id)
            if net is None:
                raise NetworkNotFound(spec.network_id)
            current = self.dataplane.ports.get(spec.id)
            if current is not None:
                fixed = (current.network_id, current.mac, current.ip, current.kind)
                if fixed != (spec.network_id, spec.mac, spec.ip, spec.kind):
                    raise InvalidSpec(
                        f"port {spec.id} is {current.mac}/{current.ip} on {current.network_id}; "
                        "its network, MAC, IP and kind cannot change (make a new port)"
                    )
            self._check_addresses(spec, net)
            wanted = PortInfo(
                spec.id,
                spec.network_id,
                spec.mac,
                spec.ip,
                spec.security_group_ids,
                tap_name(spec.id),
                spec.kind,
            )
            if current == wanted:
                return wanted
            await self._work("ensure_port", self.timings.ensure_port, spec.id)
            self.dataplane.ports[spec.id] = wanted
            return wanted

    def _check_addresses(self, spec: PortSpec, net: NetworkInfo) -> None:
        if ipaddress.ip_address(spec.ip) not in ipaddress.ip_network(net.cidr):
            raise InvalidSpec(f"IP {spec.ip} is outside network {net.id} ({net.cidr})")
        if spec.ip == net.gateway_ip:
            raise InvalidSpec(f"IP {spec.ip} is the gateway of network {net.id}")
        for other in self.dataplane.ports.values():
            if other.network_id != spec.network_id or other.id == spec.id:
                continue
            if other.ip == spec.ip or other.mac.lower() == spec.mac.lower():
                raise InvalidSpec(
                    f"port {other.id} already uses {other.mac}/{other.ip} on {net.id}"
                )

    async def delete_port(self, port_id: str) -> None:
        async with self.dataplane.lock:
            if port_id not in self.dataplane.ports:
                return
            await self._work("delete_port", self.timings.delete_port, port_id)
            del self.dataplane.ports[port_id]

    async def list_ports(self, network_id: str | None = None) -> list[PortInfo]:
        return [
            p for _, p in sorted(self.dataplane.ports.items()) if network_id in (None, p.network_id)
        ]

    async def ensure_security_group(self, spec: SecurityGroupSpec) -> SecurityGroupSpec:
        async with self.dataplane.lock:
            if self.dataplane.groups.get(spec.id) == spec:
                return spec
            await self._work("ensure_security_group", self.timings.ensure_port, spec.id)
            self.dataplane.groups[spec.id] = spec
            return spec

    async def delete_security_group(self, group_id: str) -> None:
        async with self.dataplane.lock:
            if group_id not in self.dataplane.groups:
                return
            await self._work("delete_security_group", self.timings.delete_port, group_id)
            del self.dataplane.groups[group_id]

    async def list_security_groups(self) -> list[SecurityGroupSpec]:
        return [g for _, g in sorted(self.dataplane.groups.items())]

    async def ensure_router(self, spec: RouterSpec) -> RouterInfo:
        async with self.dataplane.lock:
            if spec.network_id not in self.dataplane.networks:
                raise NetworkNotFound(spec.network_id)
            current = self.dataplane.routers.get(spec.id)
            if current is not None and current.spec == spec:
                return current
            await self._work("ensure_router", self.timings.ensure_port, spec.id)
            info = RouterInfo(spec, namespace=f"qr-{spec.id}")
            self.dataplane.routers[spec.id] = info
            return info

    async def delete_router(self, router_id: str) -> None:
        async with self.dataplane.lock:
            if router_id not in self.dataplane.routers:
                return
            await self._work("delete_router", self.timings.delete_port, router_id)
            del self.dataplane.routers[router_id]

    async def list_routers(self) -> list[RouterInfo]:
        return [r for _, r in sorted(self.dataplane.routers.items())]

    async def _work(self, operation: str, seconds: float, resource_id: str) -> None:
        await self._sleep(seconds)
        self.faults.check(operation, resource_id)
