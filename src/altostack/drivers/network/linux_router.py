"""VPC routers on the ``linux`` backend: one network namespace per VPC router.

A router namespace ``qr-<hash>`` has two legs, each a veth pair whose host end is a port
of a bridge in the host's data-plane namespace:

- ``int0`` on the VPC's bridge (``albr-<vni>``), carrying every subnet's gateway;
- ``ext0`` on the host's external bridge (``external_bridge``, a host setting), carrying
  the router's own address, the elastic IPs and NAT addresses as /32s, and the default
  route to the upstream gateway.

Inside it: IPv4 forwarding, one nftables table (:mod:`linux_nat`), HTB classes on both
legs for rate-limited EIPs, dnsmasq (:mod:`linux_dhcp`) and the metadata address on
loopback, served by the agent (:mod:`linux_metadata`).

The spec of each router is a file under ``state_dir/routers/<id>/`` (written after the
router converged), beside dnsmasq's files; a new driver instance lists routers from those
files and converges them again on ``ensure_router`` without disturbing what is already
right: addresses and routes are changed one by one, the nft table is replaced atomically
(conntrack, and so every established NAT flow, survives), tc is rebuilt only when the
rate limits change and dnsmasq only re-reads its files unless its command line changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute

from altostack.drivers import tools
from altostack.drivers.errors import BackendFailure, InvalidSpec
from altostack.drivers.faults import FaultInjector
from altostack.drivers.network import linux_dhcp, linux_metadata, linux_nat, linux_netns
from altostack.drivers.network.base import (
    DhcpHost,
    DnatRule,
    EipBinding,
    ExternalSpec,
    InstanceMetadata,
    RouterInfo,
    RouterSpec,
    RouterSubnet,
    SnatRule,
    device_name,
)
from altostack.drivers.network.linux_nat import EXTERNAL, INTERNAL
from altostack.drivers.network.linux_netns import (
    converge_addresses,
    ipr,
    link_index,
    remove_links,
)

_TOOL_TIMEOUT = 30.0


def spec_from_dict(data: dict[str, Any]) -> RouterSpec:
    """The inverse of ``dataclasses.asdict`` for a stored :class:`RouterSpec`."""
    external = data.get("external")
    return RouterSpec(
        id=data["id"],
        network_id=data["network_id"],
        subnets=tuple(
            RouterSubnet(**{**s, "dns_servers": tuple(s.get("dns_servers", ()))})
            for s in data.get("subnets", ())
        ),
        external=ExternalSpec(**external) if external else None,
        default_snat=bool(data.get("default_snat")),
        snat=tuple(SnatRule(**r) for r in data.get("snat", ())),
        eips=tuple(EipBinding(**e) for e in data.get("eips", ())),
        dnat=tuple(DnatRule(**d) for d in data.get("dnat", ())),
        dhcp_hosts=tuple(DhcpHost(**h) for h in data.get("dhcp_hosts", ())),
        instances=tuple(
            InstanceMetadata(**{**i, "public_keys": tuple(i.get("public_keys", ()))})
            for i in data.get("instances", ())
        ),
        mtu=int(data.get("mtu", 1450)),
        dns_domain=data.get("dns_domain", "alto.internal"),
    )


class LinuxRouters:
    """The routers of one host; the driver calls it under its lock."""

    def __init__(
        self,
        *,
        state_dir: Path,
        host_netns: str | None,
        external_bridge: str | None,
        faults: FaultInjector,
        scope: str | None = None,
    ) -> None:
        self.faults = faults
        self.directory = Path(state_dir) / "routers"
        self.host_netns = host_netns
        self.scope = host_netns if scope is None else scope
        self.external_bridge = external_bridge
        self._servers: dict[str, asyncio.Server] = {}
        self._instances: dict[str, dict[str, InstanceMetadata]] = {}

    # -- names and files -------------------------------------------------------------------

    def _key(self, router_id: str) -> str:
        # Namespaces are global to the machine while the driver's data plane may live in
        # a namespace of its own (a "host" of the lab): both go into the name, or two
        # hosts of one machine would take (and delete) each other's routers.
        return f"{self.scope or ''}/{router_id}"

    def namespace(self, router_id: str) -> str:
        return device_name("qr-", self._key(router_id))

    def _legs(self, router_id: str) -> tuple[str, str]:
        """Host-side names of the internal and external veths."""
        key = self._key(router_id)
        return device_name("qri", key), device_name("qrx", key)

    def _dir(self, router_id: str) -> Path:
        if not router_id or "/" in router_id or router_id.startswith("."):
            raise InvalidSpec(f"{router_id!r} is not a router id")
        return self.directory / router_id

    def _files(self, router_id: str) -> linux_dhcp.DhcpFiles:
        return linux_dhcp.DhcpFiles(self._dir(router_id))

    def stored(self, router_id: str) -> RouterSpec | None:
        try:
            data = json.loads((self._dir(router_id) / "spec.json").read_text())
        except (OSError, ValueError):
            return None
        return spec_from_dict(data)

    def _store(self, spec: RouterSpec) -> None:
        path = self._dir(spec.id) / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(spec)))
        tmp.replace(path)

    def list(self) -> list[RouterInfo]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.iterdir()):
            spec = self.stored(path.name)
            if spec is None:
                continue
            ns = self.namespace(spec.id)
            found.append(RouterInfo(spec, ns if linux_netns.exists(ns) else None))
        return found

    # -- ensure ----------------------------------------------------------------------------

    async def ensure(self, spec: RouterSpec, vpc_bridge: str) -> RouterInfo:
        if spec.external is not None and self.external_bridge is None:
            raise InvalidSpec(
                f"router {spec.id} has an external network but this host has none "
                "(setting external_bridge)"
            )
        ns = self.namespace(spec.id)
        files = self._files(spec.id)
        previous = self.stored(spec.id)
        if previous == spec and self._healthy(spec, ns, files):
            return RouterInfo(spec, ns)
        files.directory.mkdir(parents=True, exist_ok=True)
        fresh = await linux_netns.create(ns)
        if fresh:  # a reboot (or someone) removed it: what we run still lives in the old
            # one, where no packet reaches it (a SIGHUP would not bring dnsmasq back)
            await self._stop_metadata(spec.id)
            await linux_dhcp.stop(files)
        try:
            await self._plumb(spec, ns, vpc_bridge)
            self.faults.check("ensure_router", spec.id)
            await linux_netns.run_in(ns, linux_netns.write_sysctl("net.ipv4.ip_forward", "1"))
            await _nft(ns, linux_nat.ruleset(spec))
            limits = linux_nat.rate_limited(spec)
            if fresh or previous is None or limits != linux_nat.rate_limited(previous):
                await _apply_rate_limits(ns, limits, replace=not fresh)
            await linux_dhcp.converge(spec, ns, files)
            self._instances[spec.id] = {i.ip: i for i in spec.instances}
            await self._serve_metadata(spec.id, ns)
        except BaseException:
            if previous is None:  # a router that never existed leaves nothing behind
                with contextlib.suppress(Exception):  # the first error is the one to report
                    await self.delete(spec.id)
            raise
        self._store(spec)
        return RouterInfo(spec, ns)

    def _healthy(self, spec: RouterSpec, ns: str, files: linux_dhcp.DhcpFiles) -> bool:
        """Whether an unchanged router still runs (no reboot, no killed dnsmasq)."""
        if not linux_netns.exists(ns) or spec.id not in self._servers:
            return False
        return not linux_dhcp.wanted(spec) or linux_dhcp.running_pid(files) is not None

    async def _plumb(self, spec: RouterSpec, ns: str, vpc_bridge: str) -> None:
        internal, external = self._legs(spec.id)
        async with ipr(self.host_netns) as host, ipr(ns) as inner:
            await self._leg(host, inner, ns, internal, INTERNAL, vpc_bridge, spec.mtu)
            if spec.external is not None:
                assert self.external_bridge is not None
                await self._leg(host, inner, ns, external, EXTERNAL, self.external_bridge, None)
            else:
                await remove_links(inner, EXTERNAL)
            lo = await link_index(inner, "lo")
            assert lo is not None
            await inner.link("set", index=lo, state="up")
            await converge_addresses(inner, lo, {(linux_dhcp.METADATA_IP, 32)}, keep_loopback=True)
            int_index = await link_index(inner, INTERNAL)
            assert int_index is not None
            wanted_int = {
                (s.gateway_ip, ipaddress.ip_network(s.cidr).prefixlen) for s in spec.subnets
            }
            await converge_addresses(inner, int_index, wanted_int)
            if spec.external is not None:
                ext_index = await link_index(inner, EXTERNAL)
                assert ext_index is not None
                prefix = ipaddress.ip_network(spec.external.cidr).prefixlen
                wanted_ext = {(spec.external.router_ip, prefix)}
                wanted_ext |= {(ip, 32) for ip in linux_nat.public_addresses(spec)}
                await converge_addresses(inner, ext_index, wanted_ext)
                await inner.route(
                    "replace", dst="0.0.0.0/0", gateway=spec.external.gateway_ip, oif=ext_index
                )

    async def _leg(
        self,
        host: AsyncIPRoute,
        inner: AsyncIPRoute,
        ns: str,
        host_name: str,
        inner_name: str,
        bridge: str,
        mtu: int | None,
    ) -> None:
        """A veth from ``bridge`` (host side) to ``inner_name`` in the router namespace."""
        bridge_index = await link_index(host, bridge)
        if bridge_index is None:
            raise InvalidSpec(f"bridge {bridge} does not exist on this host")
        if await link_index(inner, inner_name) is None:
            await remove_links(host, host_name)  # a half of an old pair
            await host.link(
                "add", ifname=host_name, kind="veth", peer={"ifname": inner_name, "net_ns_fd": ns}
            )
        host_index = await link_index(host, host_name)
        inner_index = await link_index(inner, inner_name)
        if host_index is None or inner_index is None:
            raise BackendFailure(f"the router leg {host_name} lost its peer {inner_name}")
        size = mtu or int((await host.link("get", index=bridge_index))[0].get("mtu"))
        await host.link("set", index=host_index, master=bridge_index, mtu=size, state="up")
        await inner.link("set", index=inner_index, mtu=size, state="up")

    async def _serve_metadata(self, router_id: str, ns: str) -> None:
        if router_id in self._servers:
            return
        table = self._instances

        def lookup(ip: str) -> InstanceMetadata | None:
            return table.get(router_id, {}).get(ip)

        make = linux_netns.listening_socket(linux_dhcp.METADATA_IP, linux_metadata.PORT)
        try:
            sock = await linux_netns.run_in(ns, make)
        except OSError as exc:
            raise BackendFailure(f"cannot serve metadata in {ns}: {exc}") from exc
        self._servers[router_id] = await linux_metadata.serve(sock, lookup)

    # -- delete ----------------------------------------------------------------------------

    async def delete(self, router_id: str) -> None:
        await self._stop_metadata(router_id)
        directory = self._dir(router_id)
        await linux_dhcp.stop(self._files(router_id))
        ns = self.namespace(router_id)
        # Removing the namespace destroys both inner legs and so their host-side peers.
        await linux_netns.remove(ns)
        async with ipr(self.host_netns) as host:
            await remove_links(host, *self._legs(router_id))
        shutil.rmtree(directory, ignore_errors=True)

    async def _stop_metadata(self, router_id: str) -> None:
        self._instances.pop(router_id, None)
        server = self._servers.pop(router_id, None)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def close(self) -> None:
        """Stop serving metadata (the data plane itself stays)."""
        for router_id in list(self._servers):
            await self._stop_metadata(router_id)


# -- tools ----------------------------------------------------------------------------------


async def _nft(ns: str, document: dict[str, Any]) -> None:
    argv = ["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"]
    result = await tools.run(argv, timeout=_TOOL_TIMEOUT, input=json.dumps(document).encode())
    if result.returncode != 0:
        raise BackendFailure(f"nft refused the router's rules in {ns}: {result.stderr}")


async def _apply_rate_limits(
    ns: str, limits: list[tuple[int, str, int]], *, replace: bool = True
) -> None:
    """One HTB per leg with a class per rate-limited EIP (nft picks the class);
    ``replace=False`` for a new namespace, whose legs have no qdisc to remove yet."""
    for device in (INTERNAL, EXTERNAL) if replace else ():
        # A missing root qdisc is the normal case; tc's complaint about it means nothing.
        await tools.run(["tc", "-n", ns, "qdisc", "del", "dev", device, "root"])
    if not limits:
        return
    lines = []
    for device in (INTERNAL, EXTERNAL):
        lines.append(f"qdisc add dev {device} root handle 1: htb")
        for minor, _ip, mbps in limits:
            rate = f"{mbps}mbit"
            lines.append(
                f"class add dev {device} parent 1: classid 1:{minor:x} htb rate {rate} ceil {rate}"
            )
    result = await tools.run(
        ["tc", "-n", ns, "-batch", "-"], timeout=_TOOL_TIMEOUT, input="\n".join(lines).encode()
    )
    if result.returncode != 0:
        raise BackendFailure(f"tc refused the bandwidth limits in {ns}: {result.stderr}")
