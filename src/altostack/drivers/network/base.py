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
from typing import Literal


@dataclass(frozen=True)
class NetworkSpec:
    """One L2 overlay segment: a VPC on one host (VXLAN ``vni``, the VPC's ``cidr``).

    One network per VPC, not per subnet: every subnet of the VPC shares the bridge, and
    the VPC's router (:class:`RouterSpec`) holds each subnet's gateway. ``gateway_ip`` is
    for a single-subnet network that has no router; ports may not take it.
    """

    id: str
    vni: int
    cidr: str
    gateway_ip: str | None = None
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
        if self.gateway_ip is not None and ipaddress.ip_address(self.gateway_ip) not in net:
            raise ValueError(f"gateway {self.gateway_ip} is outside {self.cidr}")


PortKind = Literal["tap", "veth"]


@dataclass(frozen=True)
class PortSpec:
    """A VM's attachment to a network, with its addresses and security groups.

    ``kind="tap"`` is what QEMU opens; ``kind="veth"`` leaves the other end of a veth pair
    (named by :func:`guest_device`) for the caller to move into a namespace that stands
    in for a guest (the lab and the fast packet tests).
    """

    id: str
    network_id: str
    mac: str
    ip: str
    security_group_ids: tuple[str, ...] = ()
    kind: PortKind = "tap"

    def __post_init__(self) -> None:
        object.__setattr__(self, "security_group_ids", tuple(self.security_group_ids))
        ipaddress.ip_address(self.ip)  # raises ValueError when malformed
        if self.kind not in ("tap", "veth"):
            raise ValueError(f"kind must be tap or veth, not {self.kind!r}")


Direction = Literal["ingress", "egress"]
Protocol = Literal["tcp", "udp", "icmp", "any"]
Action = Literal["allow", "deny"]


@dataclass(frozen=True)
class RuleSpec:
    """One security group rule; ``remote_ips`` is a remote group resolved to its members.

    The remote is the source of ingress traffic and the destination of egress traffic.
    ``remote_cidr=None`` and ``remote_ips=None`` mean anywhere; ports apply to tcp/udp.
    Rules of all the groups of a port are tried by ``priority`` (lower first; deny before
    allow at one priority); the first match decides; nothing matching means drop.
    """

    direction: Direction
    protocol: Protocol = "any"
    port_min: int | None = None
    port_max: int | None = None
    remote_cidr: str | None = None
    remote_ips: tuple[str, ...] | None = None
    action: Action = "allow"
    priority: int = 100

    def __post_init__(self) -> None:
        if self.direction not in ("ingress", "egress"):
            raise ValueError(f"direction must be ingress or egress, not {self.direction!r}")
        if self.protocol not in ("tcp", "udp", "icmp", "any"):
            raise ValueError(f"protocol must be tcp, udp, icmp or any, not {self.protocol!r}")
        if self.action not in ("allow", "deny"):
            raise ValueError(f"action must be allow or deny, not {self.action!r}")
        if (self.port_min, self.port_max) != (None, None):
            if self.protocol not in ("tcp", "udp"):
                raise ValueError("ports apply to tcp and udp rules only")
            low = self.port_min if self.port_min is not None else self.port_max
            high = self.port_max if self.port_max is not None else self.port_min
            assert low is not None and high is not None
            if not 1 <= low <= high <= 65535:
                raise ValueError("ports must satisfy 1 <= port_min <= port_max <= 65535")
            object.__setattr__(self, "port_min", low)
            object.__setattr__(self, "port_max", high)
        if self.remote_cidr is not None:
            net = ipaddress.ip_network(self.remote_cidr, strict=False)
            object.__setattr__(self, "remote_cidr", str(net))
        if self.remote_ips is not None:
            ips = tuple(sorted({str(ipaddress.ip_address(ip)) for ip in self.remote_ips}))
            object.__setattr__(self, "remote_ips", ips)
        if not 1 <= self.priority <= 1000:
            raise ValueError("priority must be in 1..1000")


@dataclass(frozen=True)
class SecurityGroupSpec:
    """A security group as the data plane applies it to the ports that name it."""

    id: str
    rules: tuple[RuleSpec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))


# -- the VPC router: gateways, DHCP, metadata, NAT and elastic IPs ---------------------------


@dataclass(frozen=True)
class RouterSubnet:
    """A subnet of the VPC as its router serves it: the gateway address and DHCP."""

    id: str
    cidr: str
    gateway_ip: str
    dhcp: bool = True
    dns_servers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dns_servers", tuple(self.dns_servers))
        net = ipaddress.ip_network(self.cidr)
        if ipaddress.ip_address(self.gateway_ip) not in net:
            raise ValueError(f"gateway {self.gateway_ip} is outside {self.cidr}")


@dataclass(frozen=True)
class DhcpHost:
    """A static DHCP reservation from IPAM (``--dhcp-host=MAC,IP,name``)."""

    mac: str
    ip: str
    hostname: str


@dataclass(frozen=True)
class InstanceMetadata:
    """What the metadata service answers to the VM whose NIC has ``ip`` in this VPC."""

    ip: str
    instance_id: str
    hostname: str
    public_keys: tuple[str, ...] = ()
    user_data: str | None = None
    public_ip: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_keys", tuple(self.public_keys))


@dataclass(frozen=True)
class SnatRule:
    """Source NAT of ``source_cidr`` (a subnet, or one VM as a /32) to ``public_ip``."""

    source_cidr: str
    public_ip: str

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.source_cidr, strict=False)
        object.__setattr__(self, "source_cidr", str(net))
        ipaddress.ip_address(self.public_ip)


@dataclass(frozen=True)
class EipBinding:
    """1:1 NAT between an elastic IP and a private address, optionally rate limited."""

    public_ip: str
    private_ip: str
    bandwidth_mbps: int | None = None

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.public_ip)
        ipaddress.ip_address(self.private_ip)
        if self.bandwidth_mbps is not None and self.bandwidth_mbps < 1:
            raise ValueError("bandwidth_mbps must be positive")


@dataclass(frozen=True)
class DnatRule:
    """A port mapping: ``public_ip:public_port`` to ``private_ip:private_port``."""

    public_ip: str
    protocol: Literal["tcp", "udp"]
    public_port: int
    private_ip: str
    private_port: int

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be tcp or udp, not {self.protocol!r}")
        for port in (self.public_port, self.private_port):
            if not 1 <= port <= 65535:
                raise ValueError("ports must be in 1..65535")


@dataclass(frozen=True)
class ExternalSpec:
    """The router's leg on the external (public) network.

    ``router_ip`` is the router's own address there (the source of default egress when
    ``RouterSpec.default_snat`` is on); ``gateway_ip`` is the upstream router.
    """

    cidr: str
    gateway_ip: str
    router_ip: str

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.cidr)
        for address in (self.gateway_ip, self.router_ip):
            if ipaddress.ip_address(address) not in net:
                raise ValueError(f"{address} is outside the external network {self.cidr}")


@dataclass(frozen=True)
class RouterSpec:
    """A VPC's router on the network host: everything between the VPC and the outside.

    ``id`` is the VPC's id and ``network_id`` the VPC's network on this host (it must
    exist). The router has a leg on that network with every subnet's gateway, and, when
    ``external`` is set, a leg on the external network carrying the elastic IPs (as /32s)
    and NAT addresses. It serves DHCP for ``dhcp_hosts`` on subnets with DHCP on, and the
    metadata service at 169.254.169.254 for ``instances``. NAT precedence: an EIP's 1:1
    mapping, then the first matching ``snat`` rule (most specific source first), then
    ``default_snat`` through ``external.router_ip``; otherwise no egress.
    """

    id: str
    network_id: str
    subnets: tuple[RouterSubnet, ...] = ()
    external: ExternalSpec | None = None
    default_snat: bool = False
    snat: tuple[SnatRule, ...] = ()
    eips: tuple[EipBinding, ...] = ()
    dnat: tuple[DnatRule, ...] = ()
    dhcp_hosts: tuple[DhcpHost, ...] = ()
    instances: tuple[InstanceMetadata, ...] = ()
    mtu: int = 1450
    dns_domain: str = "alto.internal"

    def __post_init__(self) -> None:
        for name in ("subnets", "snat", "eips", "dnat", "dhcp_hosts", "instances"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(
            self,
            "snat",
            tuple(sorted(self.snat, key=lambda r: -ipaddress.ip_network(r.source_cidr).prefixlen)),
        )
        if self.external is None and (self.default_snat or self.snat or self.eips or self.dnat):
            raise ValueError("NAT, elastic IPs and port mappings need an external network")


@dataclass(frozen=True)
class RouterInfo:
    """A router as the data plane has it; ``namespace`` is where it lives (if anywhere)."""

    spec: RouterSpec
    namespace: str | None = None


@dataclass(frozen=True)
class NetworkInfo:
    """A network as the data plane has it."""

    id: str
    vni: int
    cidr: str
    gateway_ip: str | None
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
    kind: PortKind = "tap"


def guest_device(port_id: str) -> str:
    """The far end of a ``veth`` port, for the caller to move into a guest namespace."""
    return device_name("gst", port_id)


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

    # -- security groups -------------------------------------------------------------------

    @abc.abstractmethod
    async def ensure_security_group(self, spec: SecurityGroupSpec) -> SecurityGroupSpec:
        """Make the group's rules what the spec says, on every port naming it, at once.

        Idempotent. Stateful: replies of allowed connections pass, and connections already
        established stay up when rules change. A port naming a group the host does not
        have yet allows nothing new until the group arrives.
        """

    @abc.abstractmethod
    async def delete_security_group(self, group_id: str) -> None:
        """Forget the group; ports naming it lose its rules. A missing group succeeds."""

    @abc.abstractmethod
    async def list_security_groups(self) -> list[SecurityGroupSpec]:
        """Every group on the host, sorted by id."""

    # -- routers ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def ensure_router(self, spec: RouterSpec) -> RouterInfo:
        """Make the VPC's router exactly what the spec says (legs, DHCP, metadata, NAT).

        Idempotent; a changed spec converges in place (DHCP reservations, NAT rules and
        EIPs change without restarting what need not restart). ``NetworkNotFound`` when
        ``network_id`` is not on this host.
        """

    @abc.abstractmethod
    async def delete_router(self, router_id: str) -> None:
        """Remove the router and everything it runs. A missing router succeeds."""

    @abc.abstractmethod
    async def list_routers(self) -> list[RouterInfo]:
        """Every router on the host, sorted by id."""

    async def close(self) -> None:  # noqa: B027 (a no-op is the right default)
        """Stop what this driver instance serves from its own process; the data plane stays.

        The ``linux`` backend serves routers' metadata from the agent's event loop; an
        agent that stops (or a test that replaces the instance) closes the old one first.
        """
