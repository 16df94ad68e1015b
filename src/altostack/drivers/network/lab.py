"""The all-in-one lab's external ("public") network: a stand-in for the upstream router.

On a production host the external network is a real bridge named in the host's config
(``external_bridge``) with the provider's router behind it. In the lab both are made
here, and nothing reaches the host's real uplink:

- an external bridge in the host's data-plane namespace (routers plug their ``ext0`` leg
  into it);
- a namespace (``alto-ext`` by default) holding the upstream gateway address on a veth
  into that bridge. Clients that play "the internet" run in it:
  ``ip netns exec alto-ext curl http://<eip>/``.

The public pool (default 203.0.113.0/24, TEST-NET-3) is the external network: the
upstream namespace reaches every address of it directly. The lab refuses a pool that
overlaps an address the host already has.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from altostack.drivers.errors import InvalidSpec
from altostack.drivers.network import linux_netns
from altostack.drivers.network.base import ExternalSpec, device_name
from altostack.drivers.network.linux_netns import (
    converge_addresses,
    ipr,
    link_index,
    remove_links,
)

UPLINK = "up0"
"""The upstream end's name inside the lab namespace."""


@dataclass(frozen=True)
class ExternalLab:
    """Where the lab's external network lives and which addresses it has."""

    namespace: str = "alto-ext"
    bridge: str = "alto-ext0"
    cidr: str = "203.0.113.0/24"
    gateway_ip: str = "203.0.113.1"
    host_netns: str | None = None
    """The namespace of the host's data plane (None: the agent's own)."""

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.cidr)
        if ipaddress.ip_address(self.gateway_ip) not in net:
            raise ValueError(f"gateway {self.gateway_ip} is outside {self.cidr}")
        if len(self.bridge) > 15:
            raise ValueError(f"bridge name {self.bridge!r} is longer than 15 characters")

    @property
    def veth(self) -> str:
        """The host-side end of the upstream veth (a port of the external bridge)."""
        return device_name("aev", f"{self.host_netns or ''}/{self.namespace}")

    def external(self, router_ip: str) -> ExternalSpec:
        """The router leg a VPC gets on this network, with ``router_ip`` from the pool."""
        return ExternalSpec(self.cidr, self.gateway_ip, router_ip)


async def _host_networks(netns: str | None) -> list[ipaddress.IPv4Interface]:
    found = []
    async with ipr(netns) as conn:
        async for msg in await conn.get_addr(family=2):
            address = f"{msg.get_attr('IFA_ADDRESS')}/{msg.get('prefixlen')}"
            found.append(ipaddress.IPv4Interface(address))
    return found


async def ensure_external_lab(lab: ExternalLab) -> ExternalLab:
    """Make the lab's external network; idempotent. ``InvalidSpec`` when the pool
    overlaps an address of the host (its data-plane namespace or the agent's own)."""
    pool = ipaddress.ip_network(lab.cidr)
    for netns in {lab.host_netns, None}:
        for interface in await _host_networks(netns):
            if interface.ip.is_loopback:
                continue
            if interface.network.overlaps(pool):
                where = netns or "the host"
                raise InvalidSpec(
                    f"the public pool {lab.cidr} overlaps {interface} of {where}; "
                    "choose another pool"
                )
    await linux_netns.create(lab.namespace)
    async with ipr(lab.host_netns) as host, ipr(lab.namespace) as upstream:
        bridge = await link_index(host, lab.bridge)
        if bridge is None:
            await host.link("add", ifname=lab.bridge, kind="bridge")
            bridge = await link_index(host, lab.bridge)
            assert bridge is not None
        await host.link("set", index=bridge, state="up")
        if await link_index(upstream, UPLINK) is None:
            await remove_links(host, lab.veth)
            await host.link(
                "add",
                ifname=lab.veth,
                kind="veth",
                peer={"ifname": UPLINK, "net_ns_fd": lab.namespace},
            )
        veth = await link_index(host, lab.veth)
        uplink = await link_index(upstream, UPLINK)
        lo = await link_index(upstream, "lo")
        assert veth is not None and uplink is not None and lo is not None
        await host.link("set", index=veth, master=bridge, state="up")
        await upstream.link("set", index=uplink, state="up")
        await upstream.link("set", index=lo, state="up")
        await converge_addresses(upstream, uplink, {(lab.gateway_ip, pool.prefixlen)})
    return lab


async def remove_external_lab(lab: ExternalLab) -> None:
    """Remove the lab's namespace, veth and bridge (routers should be gone first)."""
    await linux_netns.remove(lab.namespace)
    async with ipr(lab.host_netns) as host:
        await remove_links(host, lab.veth, lab.bridge)
