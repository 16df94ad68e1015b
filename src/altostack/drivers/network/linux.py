"""The ``linux`` network backend: real kernel networking programmed over netlink.

One L2 network is a Linux bridge ``albr-<vni>`` with a VXLAN device ``alvx-<vni>`` as a
bridge port (UDP 4789, ``local`` = the host's underlay address). Broadcast and unknown
unicast reach the other hosts of the network by head-end replication: one all-zeros FDB
entry per peer on the VXLAN device; the bridge learns where each MAC lives from then on.
A VM port is a persistent tap ``tap<hash>`` on the bridge, which QEMU opens by name.

Everything the driver needs to know again after a restart lives in the kernel objects
themselves: the network's id, CIDR and gateway in the bridge's alias, the port's id,
network, MAC, IP and security groups in the tap's alias (JSON; ``ip -d link`` shows it).
So a new driver instance (an agent restart) rebuilds its view from ``ip link`` alone, and
devices that carry no such alias are never touched.

Security groups and anti-spoofing are :mod:`linux_firewall`; each VPC's router (gateways,
NAT, elastic IPs, DHCP, metadata) is a namespace of its own, :mod:`linux_router`, with
its legs on the VPC's bridge and on the host's external bridge (``external_bridge``).

Netlink calls go through pyroute2's ``AsyncIPRoute``; ``netns`` selects the namespace the
host's data plane lives in (``None``: the agent's own). A multi-host lab on one machine is
one namespace per "host".
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pwd
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute, IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from altostack.drivers import tools
from altostack.drivers.errors import (
    BackendFailure,
    InvalidSpec,
    InvalidState,
    NetworkNotFound,
)
from altostack.drivers.faults import FaultInjector
from altostack.drivers.network import linux_netns
from altostack.drivers.network.base import (
    NetworkDriver,
    NetworkInfo,
    NetworkSpec,
    PortInfo,
    PortSpec,
    RouterInfo,
    RouterSpec,
    RuleSpec,
    SecurityGroupSpec,
    device_name,
    guest_device,
)
from altostack.drivers.network.linux_firewall import (
    FirewallNetwork,
    FirewallPort,
    conntrack_zone,
    empty_ruleset,
    ruleset,
)
from altostack.drivers.network.linux_router import LinuxRouters

__all__ = ["VXLAN_PORT", "LinuxNetworkDriver", "bridge_name", "vxlan_name"]

VXLAN_PORT = 4789
_ZERO_MAC = "00:00:00:00:00:00"
_ALIAS_MAX = 255  # IFALIASZ - 1
_NO_DEVICE = 19  # ENODEV
_NFT_TIMEOUT = 30.0


def bridge_name(vni: int) -> str:
    return f"albr-{vni}"


def vxlan_name(vni: int) -> str:
    return f"alvx-{vni}"


def port_device(port_id: str) -> str:
    return device_name("tap", port_id)


def _alias(record: dict[str, Any]) -> str:
    text = json.dumps({"alto": 1, **record}, separators=(",", ":"), sort_keys=True)
    if len(text) > _ALIAS_MAX:
        raise InvalidSpec(
            f"{record.get('kind')} {record.get('id')} describes more than the kernel can keep "
            f"with the device ({len(text)} > {_ALIAS_MAX} characters); use fewer or shorter "
            "security group ids"
        )
    return text


def _record(link: Any) -> dict[str, Any] | None:
    """The alias record of an altostack device, or None for anyone else's device."""
    alias = link.get("ifalias")
    if not alias or not alias.startswith('{"alto":'):
        return None
    try:
        record = json.loads(alias)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _vni_of(link: Any) -> int | None:
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    vni = data.get_attr("IFLA_VXLAN_ID") if data is not None else None
    return int(vni) if vni is not None else None


class LinuxNetworkDriver(NetworkDriver):
    """The data plane of one host: bridges, VXLAN devices and taps in ``netns``."""

    def __init__(
        self,
        *,
        state_dir: Path,
        underlay_ip: str | None = None,
        netns: str | None = None,
        external_bridge: str | None = None,
        tap_user: str | None = None,
        faults: FaultInjector | None = None,
        scope: str | None = None,
    ) -> None:
        """``scope`` names this host among several on one machine (default: ``netns``):
        an agent started with ``--netns`` already lives in its host's namespace
        (``netns=None``) but must still name its routers apart from the other hosts'."""
        if underlay_ip is not None:
            ipaddress.ip_address(underlay_ip)
        self.underlay_ip = underlay_ip
        self.netns = netns
        # Security groups have no kernel object to carry them whole (nft comments are
        # 128 bytes), so their specs are files; the ruleset is always derived from them.
        self.groups_dir = Path(state_dir) / "security-groups"
        self.faults = faults or FaultInjector()
        self.external_bridge = external_bridge
        # QEMU under -runas opens taps it hot-plugs as that user: the tap must be its own.
        self._tap_owner: dict[str, int] = {}
        if tap_user is not None:
            entry = pwd.getpwnam(tap_user)  # KeyError for an unknown user, at construction
            self._tap_owner = {"uid": entry.pw_uid, "gid": entry.pw_gid}
        self._routers = LinuxRouters(
            state_dir=Path(state_dir),
            host_netns=netns,
            external_bridge=external_bridge,
            faults=self.faults,
            scope=scope,
        )
        # Uniqueness (VNI, IP, MAC) spans objects, so changes are serialised per driver.
        self._lock = asyncio.Lock()

    # -- netlink plumbing ------------------------------------------------------------------

    @asynccontextmanager
    async def _ipr(self) -> AsyncIterator[AsyncIPRoute]:
        try:
            async with linux_netns.netlink(self.netns) as ipr:
                yield ipr
        except NetlinkError as exc:
            raise BackendFailure(f"netlink refused the change: {exc}") from exc

    async def _links(self, ipr: AsyncIPRoute) -> list[Any]:
        return [link async for link in await ipr.get_links()]

    async def _state(
        self, ipr: AsyncIPRoute
    ) -> tuple[dict[str, tuple[NetworkInfo, Any]], dict[str, tuple[PortInfo, Any]]]:
        """Networks and ports as the kernel has them, each with its link."""
        links = await self._links(ipr)
        by_index = {link.get("index"): link for link in links}
        vxlans = {
            vni: link
            for link in links
            if (vni := _vni_of(link)) is not None and link.get("ifname") == vxlan_name(vni)
        }
        networks: dict[str, tuple[NetworkInfo, Any]] = {}
        bridge_net: dict[int, str] = {}
        for link in links:
            record = _record(link)
            if record is None or record.get("kind") != "net":
                continue
            vni = int(record["vni"])
            vxlan = vxlans.get(vni)
            peers = await self._peers(ipr, vxlan) if vxlan is not None else ()
            info = NetworkInfo(
                record["id"], vni, record["cidr"], record["gw"] or None, int(link.get("mtu")), peers
            )
            networks[info.id] = (info, link)
            bridge_net[link.get("index")] = info.id
        ports: dict[str, tuple[PortInfo, Any]] = {}
        for link in links:
            record = _record(link)
            if record is None or record.get("kind") != "port":
                continue
            master = by_index.get(link.get_attr("IFLA_MASTER"))
            network_id = bridge_net.get(master.get("index")) if master is not None else None
            port = PortInfo(
                record["id"],
                network_id or record["net"],
                record["mac"],
                record["ip"],
                tuple(record.get("sg", ())),
                link.get("ifname"),
                record.get("type", "tap"),
            )
            ports[port.id] = (port, link)
        return networks, ports

    async def _peers(self, ipr: AsyncIPRoute, vxlan: Any) -> tuple[str, ...]:
        found = set()
        async for entry in await ipr.fdb("dump", ifindex=vxlan.get("index")):
            if entry.get("lladdr") == _ZERO_MAC and entry.get("dst"):
                found.add(entry.get("dst"))
        return tuple(sorted(found))

    # -- networks --------------------------------------------------------------------------

    async def ensure_network(self, spec: NetworkSpec) -> NetworkInfo:
        async with self._lock, self._ipr() as ipr:
            networks, _ = await self._state(ipr)
            current = networks.get(spec.id)
            if current is not None and (current[0].vni, current[0].cidr) != (spec.vni, spec.cidr):
                raise InvalidSpec(
                    f"network {spec.id} has vni {current[0].vni} and cidr {current[0].cidr}; "
                    "those cannot change (make a new network)"
                )
            clash = next(
                (n for n, _ in networks.values() if n.vni == spec.vni and n.id != spec.id), None
            )
            if clash is not None:
                raise InvalidSpec(f"vni {spec.vni} is already used by network {clash.id}")
            wanted = NetworkInfo(
                spec.id, spec.vni, spec.cidr, spec.gateway_ip, spec.mtu, spec.peers
            )
            if current is not None and current[0] == wanted:
                return wanted
            self.faults.check("ensure_network", spec.id)
            if current is None:
                await self._create_network(ipr, spec)
            await self._converge_network(ipr, spec)
            if current is None:
                await self._sync_firewall(ipr)  # its conntrack zone
            return wanted

    async def _create_network(self, ipr: AsyncIPRoute, spec: NetworkSpec) -> None:
        bridge, vxlan = bridge_name(spec.vni), vxlan_name(spec.vni)
        for name in (bridge, vxlan):
            if await self._index(ipr, name) is not None:
                raise InvalidSpec(
                    f"device {name} for vni {spec.vni} exists but altostack did not make it "
                    "(or its record is gone); remove it or choose another vni"
                )
        try:
            await ipr.link("add", ifname=bridge, kind="bridge")
            options: dict[str, Any] = {"vxlan_id": spec.vni, "vxlan_port": VXLAN_PORT}
            if self.underlay_ip is not None:
                options["vxlan_local"] = self.underlay_ip
            await ipr.link("add", ifname=vxlan, kind="vxlan", **options)
            bridge_index = await self._index(ipr, bridge)
            vxlan_index = await self._index(ipr, vxlan)
            await ipr.link("set", index=vxlan_index, master=bridge_index)
            # The alias is written last: a bridge without it is not a network yet, so a
            # crash in between leaves devices the next ensure reports instead of trusting.
            record = {"kind": "net", "id": spec.id, "vni": spec.vni, "cidr": spec.cidr}
            await ipr.link("set", index=bridge_index, ifalias=_alias({**record, "gw": None}))
        except BaseException:
            await self._remove(ipr, vxlan, bridge)
            raise

    async def _converge_network(self, ipr: AsyncIPRoute, spec: NetworkSpec) -> None:
        bridge_index = await self._index(ipr, bridge_name(spec.vni))
        vxlan_index = await self._index(ipr, vxlan_name(spec.vni))
        if bridge_index is None or vxlan_index is None:
            raise BackendFailure(f"network {spec.id} lost its devices while being changed")
        record = {
            "kind": "net",
            "id": spec.id,
            "vni": spec.vni,
            "cidr": spec.cidr,
            "gw": spec.gateway_ip,
        }
        await ipr.link("set", index=vxlan_index, mtu=spec.mtu, state="up")
        for link in await self._links(ipr):
            if link.get_attr("IFLA_MASTER") == bridge_index and _record(link) is not None:
                await ipr.link("set", index=link.get("index"), mtu=spec.mtu)
        await ipr.link("set", index=bridge_index, mtu=spec.mtu, state="up", ifalias=_alias(record))
        vxlan = (await ipr.link("get", index=vxlan_index))[0]
        have = set(await self._peers(ipr, vxlan))
        for peer in sorted(set(spec.peers) - have):
            await ipr.fdb("append", ifindex=vxlan_index, lladdr=_ZERO_MAC, dst=peer)
        for peer in sorted(have - set(spec.peers)):
            await ipr.fdb("del", ifindex=vxlan_index, lladdr=_ZERO_MAC, dst=peer)

    async def delete_network(self, network_id: str) -> None:
        async with self._lock, self._ipr() as ipr:
            networks, ports = await self._state(ipr)
            current = networks.get(network_id)
            if current is None:
                return
            using = sorted(p.id for p, _ in ports.values() if p.network_id == network_id)
            if using:
                raise InvalidState(
                    "in use",
                    "without ports",
                    resource_id=network_id,
                    message=f"network {network_id} still has {len(using)} port(s) "
                    f"({', '.join(using)}); delete them first",
                )
            self.faults.check("delete_network", network_id)
            await self._remove(ipr, vxlan_name(current[0].vni), bridge_name(current[0].vni))
            await self._sync_firewall(ipr)

    async def list_networks(self) -> list[NetworkInfo]:
        async with self._ipr() as ipr:
            networks, _ = await self._state(ipr)
        return [info for _, (info, _link) in sorted(networks.items())]

    # -- routers ---------------------------------------------------------------------------

    async def ensure_router(self, spec: RouterSpec) -> RouterInfo:
        async with self._lock, self._ipr() as ipr:
            networks, _ = await self._state(ipr)
            found = networks.get(spec.network_id)
            if found is None:
                raise NetworkNotFound(spec.network_id)
            return await self._routers.ensure(spec, bridge_name(found[0].vni))

    async def delete_router(self, router_id: str) -> None:
        async with self._lock:
            known = self._routers.stored(router_id) is not None
            if not known and not linux_netns.exists(self._routers.namespace(router_id)):
                return
            self.faults.check("delete_router", router_id)
            await self._routers.delete(router_id)

    async def list_routers(self) -> list[RouterInfo]:
        return self._routers.list()

    async def close(self) -> None:
        """Stop what the driver serves from this process (metadata); the data plane stays.

        Routers' metadata is served by the process that owns the driver: keep the driver
        alive while VMs should reach it, and call this when the agent stops.
        """
        await self._routers.close()

    # -- ports -----------------------------------------------------------------------------

    async def ensure_port(self, spec: PortSpec) -> PortInfo:
        async with self._lock, self._ipr() as ipr:
            networks, ports = await self._state(ipr)
            found = networks.get(spec.network_id)
            if found is None:
                raise NetworkNotFound(spec.network_id)
            net, bridge = found
            current = ports.get(spec.id)
            if current is not None:
                info = current[0]
                fixed = (info.network_id, info.mac, info.ip, info.kind)
                if fixed != (spec.network_id, spec.mac, spec.ip, spec.kind):
                    raise InvalidSpec(
                        f"port {spec.id} is a {info.kind} {info.mac}/{info.ip} on "
                        f"{info.network_id}; its network, MAC, IP and kind cannot change "
                        "(make a new port)"
                    )
            _check_addresses(spec, net, [p for p, _ in ports.values()])
            device = port_device(spec.id)
            wanted = PortInfo(
                spec.id,
                spec.network_id,
                spec.mac,
                spec.ip,
                spec.security_group_ids,
                device,
                spec.kind,
            )
            if current is not None and current[0] == wanted:
                return wanted
            self.faults.check("ensure_port", spec.id)
            record = {
                "kind": "port",
                "id": spec.id,
                "net": spec.network_id,
                "mac": spec.mac,
                "ip": spec.ip,
                "sg": list(spec.security_group_ids),
                "type": spec.kind,
            }
            alias = _alias(record)
            created = False
            try:
                if await self._index(ipr, device) is None:
                    if spec.kind == "veth":
                        peer = guest_device(spec.id)
                        await ipr.link("add", ifname=device, kind="veth", peer=peer)
                        peer_index = await self._index(ipr, peer)
                        await ipr.link("set", index=peer_index, mtu=net.mtu, address=spec.mac)
                    else:
                        await linux_netns.run_in(self.netns, _tap_maker(device, self._tap_owner))
                    created = True
                index = await self._index(ipr, device)
                await ipr.link(
                    "set",
                    index=index,
                    master=bridge.get("index"),
                    mtu=net.mtu,
                    state="up",
                    ifalias=alias,
                )
                await self._sync_firewall(ipr)
            except BaseException:
                if created:
                    await self._remove(ipr, device)
                    await self._sync_firewall(ipr)
                raise
            return wanted

    async def delete_port(self, port_id: str) -> None:
        async with self._lock, self._ipr() as ipr:
            _, ports = await self._state(ipr)
            current = ports.get(port_id)
            if current is None:
                return
            self.faults.check("delete_port", port_id)
            await self._remove(ipr, current[0].device)
            await self._sync_firewall(ipr)

    async def list_ports(self, network_id: str | None = None) -> list[PortInfo]:
        async with self._ipr() as ipr:
            _, ports = await self._state(ipr)
        return [
            info
            for _, (info, _link) in sorted(ports.items())
            if network_id in (None, info.network_id)
        ]

    # -- security groups -------------------------------------------------------------------

    async def ensure_security_group(self, spec: SecurityGroupSpec) -> SecurityGroupSpec:
        async with self._lock, self._ipr() as ipr:
            previous = self._groups().get(spec.id)
            if previous == spec:
                return spec
            self.faults.check("ensure_security_group", spec.id)
            self._write_group(spec)
            try:
                await self._sync_firewall(ipr)
            except BaseException:
                if previous is None:
                    self._group_path(spec.id).unlink(missing_ok=True)
                else:
                    self._write_group(previous)
                raise
            return spec

    async def delete_security_group(self, group_id: str) -> None:
        async with self._lock, self._ipr() as ipr:
            path = self._group_path(group_id)
            if not path.exists():
                return
            self.faults.check("delete_security_group", group_id)
            path.unlink()
            await self._sync_firewall(ipr)

    async def list_security_groups(self) -> list[SecurityGroupSpec]:
        return [group for _, group in sorted(self._groups().items())]

    def _group_path(self, group_id: str) -> Path:
        if not group_id or "/" in group_id or group_id.startswith("."):
            raise InvalidSpec(f"{group_id!r} is not a security group id")
        return self.groups_dir / f"{group_id}.json"

    def _write_group(self, spec: SecurityGroupSpec) -> None:
        self.groups_dir.mkdir(parents=True, exist_ok=True)
        path = self._group_path(spec.id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(spec)))
        os.replace(tmp, path)

    def _groups(self) -> dict[str, SecurityGroupSpec]:
        found: dict[str, SecurityGroupSpec] = {}
        if not self.groups_dir.is_dir():
            return found
        for path in self.groups_dir.glob("*.json"):
            data = json.loads(path.read_text())
            rules = []
            for rule in data.get("rules", []):
                if rule.get("remote_ips") is not None:
                    rule["remote_ips"] = tuple(rule["remote_ips"])
                rules.append(RuleSpec(**rule))
            found[data["id"]] = SecurityGroupSpec(data["id"], tuple(rules))
        return found

    async def _sync_firewall(self, ipr: AsyncIPRoute) -> None:
        """Replace the host's whole filter with what ports and groups say, atomically."""
        networks, ports = await self._state(ipr)
        fw_ports = [
            FirewallPort(
                info.device, int(link.get("index")), info.mac, info.ip, info.security_group_ids
            )
            for _, (info, link) in sorted(ports.items())
        ]
        fw_nets = [
            FirewallNetwork(bridge_name(info.vni), conntrack_zone(info.vni))
            for _, (info, _link) in sorted(networks.items())
        ]
        document = (
            ruleset(fw_nets, fw_ports, self._groups()) if fw_ports or fw_nets else empty_ruleset()
        )
        await self._nft(document)

    async def _nft(self, document: dict[str, Any]) -> None:
        nft = shutil.which("nft")
        if nft is None:
            raise BackendFailure("nft is not installed (scripts/install-system-deps)")
        argv = [nft, "-j", "-f", "-"]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        result = await tools.run(argv, timeout=_NFT_TIMEOUT, input=json.dumps(document).encode())
        if result.returncode != 0:
            raise BackendFailure(f"nft refused the ruleset: {result.stderr}")

    # -- helpers ---------------------------------------------------------------------------

    async def _index(self, ipr: AsyncIPRoute, name: str) -> int | None:
        try:
            found = await ipr.link_lookup(ifname=name)
        except NetlinkError as exc:
            if exc.code == _NO_DEVICE:
                return None
            raise
        return int(found[0]) if found else None

    async def _remove(self, ipr: AsyncIPRoute, *names: str) -> None:
        for name in names:
            index = await self._index(ipr, name)
            if index is None:
                continue
            try:
                await ipr.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != _NO_DEVICE:
                    raise


def _tap_maker(name: str, owner: dict[str, int]) -> Callable[[], None]:
    """A ``run_in`` work item: a persistent tap. Not netlink but an ioctl, which acts in
    the calling thread's namespace: it runs in a thread inside the host's."""

    def work() -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="tuntap", mode="tap", **owner)

    return work


def _check_addresses(spec: PortSpec, net: NetworkInfo, ports: list[PortInfo]) -> None:
    if ipaddress.ip_address(spec.ip) not in ipaddress.ip_network(net.cidr):
        raise InvalidSpec(f"IP {spec.ip} is outside network {net.id} ({net.cidr})")
    if spec.ip == net.gateway_ip:
        raise InvalidSpec(f"IP {spec.ip} is the gateway of network {net.id}")
    for other in ports:
        if other.network_id != spec.network_id or other.id == spec.id:
            continue
        if other.ip == spec.ip or other.mac.lower() == spec.mac.lower():
            raise InvalidSpec(f"port {other.id} already uses {other.mac}/{other.ip} on {net.id}")
