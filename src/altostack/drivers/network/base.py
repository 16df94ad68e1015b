"""The network driver interface: overlay networks and the ports VMs plug into.

Minimal for now (the SDN work will add routers, security group rules, floating IPs):
enough for the agent to make a VM's NIC reachable on its tenant network. Backends: ``sim``
now, ``linux`` (bridge + VXLAN + nftables) next; both pass
``tests/contract/test_network_contract.py``.

Shared rules: ensures are idempotent and converge an existing object to the spec; deletes
of missing objects succeed; the data plane outlives the driver (a new instance sees every
network and port); errors are those of :mod:`altostack.drivers.errors`.
"""

from __future__ import annotations

import abc
import hashlib
import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkSpec:
    """One L2 overlay segment: VXLAN ``vni``, an IPv4/IPv6 ``cidr`` and its gateway."""

    id: str
    vni: int
    cidr: str
    gateway_ip: str
    mtu: int = 1450
    peers: tuple[str, ...] = ()
    """Underlay addresses of the other hosts that have this network: the VXLAN device
    floods broadcast and unknown traffic to each (head-end replication)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple(sorted(set(self.peers))))
        for peer in self.peers:
            ipaddress.ip_address(peer)  # raises ValueError when malformed
        if not 1 <= self.vni < 2**24:
            raise ValueError("vni must be in 1..16777215")
        if not 576 <= self.mtu <= 9000:
            raise ValueError("mtu must be in 576..9000")
        net = ipaddress.ip_network(self.cidr)  # raises ValueError when malformed
        if ipaddress.ip_address(self.gateway_ip) not in net:
            raise ValueError(f"gateway {self.gateway_ip} is outside {self.cidr}")


@dataclass(frozen=True)
class PortSpec:
    """A VM's attachment to a network, with its addresses and security groups."""

    id: str
    network_id: str
    mac: str
    ip: str
    security_group_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "security_group_ids", tuple(self.security_group_ids))
        ipaddress.ip_address(self.ip)  # raises ValueError when malformed


@dataclass(frozen=True)
class NetworkInfo:
    """A network as the data plane has it."""

    id: str
    vni: int
    cidr: str
    gateway_ip: str
    mtu: int
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortInfo:
    """A port as the data plane has it; ``device`` is the host-side interface (tap) name."""

    id: str
    network_id: str
    mac: str
    ip: str
    security_group_ids: tuple[str, ...]
    device: str


def device_name(prefix: str, ident: str) -> str:
    """A host interface name for ``ident`` within Linux's 15 characters.

    Hashed rather than truncated: ids are time-sortable, so the ids of a batch share their
    first characters and truncated names would collide.
    """
    return prefix + hashlib.blake2b(ident.encode(), digest_size=6).hexdigest()[: 15 - len(prefix)]


class NetworkDriver(abc.ABC):
    """The networking of one host, seen by its agent."""

    @abc.abstractmethod
    async def ensure_network(self, spec: NetworkSpec) -> NetworkInfo:
        """Make the network exist as specified.

        Idempotent. An existing network converges its ``mtu``, ``gateway_ip`` and
        ``peers``; its ``vni``
        and ``cidr`` are fixed (``InvalidSpec`` on change), and a ``vni`` used by another
        network raises ``InvalidSpec``.
        """

    @abc.abstractmethod
    async def delete_network(self, network_id: str) -> None:
        """Remove the network. Delete of a missing network succeeds.

        A network that still has ports raises ``InvalidState`` (delete the ports first).
        """

    @abc.abstractmethod
    async def list_networks(self) -> list[NetworkInfo]:
        """Every network on the host, sorted by id."""

    @abc.abstractmethod
    async def ensure_port(self, spec: PortSpec) -> PortInfo:
        """Make the port exist on its network as specified.

        Idempotent; an existing port converges its security groups. ``NetworkNotFound`` for
        a missing network. ``InvalidSpec`` when the IP is outside the network's CIDR, the IP
        or MAC is already used by another port of the network, or the port would move to
        another network or change its MAC or IP (make a new port instead).
        """

    @abc.abstractmethod
    async def delete_port(self, port_id: str) -> None:
        """Unplug and remove the port. Delete of a missing port succeeds."""

    @abc.abstractmethod
    async def list_ports(self, network_id: str | None = None) -> list[PortInfo]:
        """Every port on the host (or of one network), sorted by id."""
