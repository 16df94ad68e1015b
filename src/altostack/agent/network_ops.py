"""The agent's network commands: apply or remove one VPC's desired state on this host.

``network_apply`` carries everything the host must have of a VPC (network, ports,
security groups, the router on the network host) and converges the driver to it: ensure
what is listed, delete this VPC's ports and router that are not, forget groups no port
uses any more. ``network_remove`` takes the VPC off the host. Both are idempotent and
carry the VPC's generation; one older than the generation already applied here is
acknowledged without touching anything (a late retry must not undo a newer push).
Commands run one at a time per host, so two VPCs' pruning never interleave; each has a
time limit (``timeout``), so one that hangs (a tool that never returns) fails visibly and
frees the host's network commands instead of holding them all behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from altostack.drivers.errors import BackendFailure
from altostack.drivers.network.base import (
    DhcpHost,
    DnatRule,
    EipBinding,
    ExternalSpec,
    InstanceMetadata,
    NetworkDriver,
    NetworkSpec,
    PortSpec,
    RouterSpec,
    RouterSubnet,
    RuleSpec,
    SecurityGroupSpec,
    SnatRule,
)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def network_from_dict(d: dict[str, Any]) -> NetworkSpec:
    return NetworkSpec(**{**d, "peers": tuple(d.get("peers") or ())})


def port_from_dict(d: dict[str, Any]) -> PortSpec:
    return PortSpec(**{**d, "security_group_ids": tuple(d.get("security_group_ids") or ())})


def group_from_dict(d: dict[str, Any]) -> SecurityGroupSpec:
    rules = []
    for r in d.get("rules") or ():
        ips = r.get("remote_ips")
        rules.append(RuleSpec(**{**r, "remote_ips": tuple(ips) if ips is not None else None}))
    return SecurityGroupSpec(d["id"], tuple(rules))


def router_from_dict(d: dict[str, Any]) -> RouterSpec:
    ext = d.get("external")
    return RouterSpec(
        id=d["id"],
        network_id=d["network_id"],
        subnets=tuple(
            RouterSubnet(**{**s, "dns_servers": tuple(s.get("dns_servers") or ())})
            for s in d.get("subnets") or ()
        ),
        external=ExternalSpec(**ext) if ext else None,
        default_snat=bool(d.get("default_snat")),
        snat=tuple(SnatRule(**r) for r in d.get("snat") or ()),
        eips=tuple(EipBinding(**e) for e in d.get("eips") or ()),
        dnat=tuple(DnatRule(**r) for r in d.get("dnat") or ()),
        dhcp_hosts=tuple(DhcpHost(**h) for h in d.get("dhcp_hosts") or ()),
        instances=tuple(
            InstanceMetadata(**{**i, "public_keys": tuple(i.get("public_keys") or ())})
            for i in d.get("instances") or ()
        ),
        mtu=int(d.get("mtu", 1450)),
        dns_domain=str(d.get("dns_domain", "alto.internal")),
    )


class NetworkOps:
    """The handlers, over one host's network driver."""

    def __init__(self, driver: NetworkDriver, *, timeout: float = 60.0) -> None:
        self.driver = driver
        self.timeout = timeout
        self.generations: dict[str, int] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _limited(self, action: str, vpc_id: str) -> AsyncIterator[None]:
        """The host's network lock, held ``timeout`` seconds at most."""
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    yield
            except TimeoutError:
                raise BackendFailure(
                    f"{action} of VPC {vpc_id} did not finish in {self.timeout:g} s"
                ) from None

    def handlers(self) -> dict[str, Handler]:
        return {
            "network_apply": self.apply,
            "network_remove": self.remove,
            "network_state": self.state,
        }

    def _stale(self, vpc_id: str, generation: int) -> bool:
        return generation < self.generations.get(vpc_id, 0)

    async def apply(self, d: dict[str, Any]) -> dict[str, Any]:
        vpc_id, generation = str(d["vpc_id"]), int(d["generation"])
        network = network_from_dict(d["network"])
        ports = [port_from_dict(p) for p in d.get("ports") or ()]
        groups = [group_from_dict(g) for g in d.get("groups") or ()]
        router = router_from_dict(d["router"]) if d.get("router") else None
        async with self._limited("network_apply", vpc_id):
            if self._stale(vpc_id, generation):
                return {"generation": self.generations[vpc_id], "applied": False}
            drv = self.driver
            await drv.ensure_network(network)
            for group in groups:
                await drv.ensure_security_group(group)
            wanted = {p.id for p in ports}
            for existing in await drv.list_ports(network.id):
                if existing.id not in wanted:
                    await drv.delete_port(existing.id)
            for port in ports:
                await drv.ensure_port(port)
            if router is not None:
                await drv.ensure_router(router)
            else:
                await drv.delete_router(vpc_id)
            await self._prune_groups()
            self.generations[vpc_id] = generation
        return {"generation": generation, "applied": True}

    async def remove(self, d: dict[str, Any]) -> dict[str, Any]:
        vpc_id, generation = str(d["vpc_id"]), int(d["generation"])
        async with self._limited("network_remove", vpc_id):
            if self._stale(vpc_id, generation):
                return {"generation": self.generations[vpc_id], "applied": False}
            drv = self.driver
            await drv.delete_router(vpc_id)
            for port in await drv.list_ports(vpc_id):
                await drv.delete_port(port.id)
            await drv.delete_network(vpc_id)
            await self._prune_groups()
            self.generations[vpc_id] = generation
        return {"generation": generation, "applied": True}

    async def _prune_groups(self) -> None:
        """Groups no port of this host names are forgotten (they come back with a port)."""
        used = {g for p in await self.driver.list_ports() for g in p.security_group_ids}
        for group in await self.driver.list_security_groups():
            if group.id not in used:
                await self.driver.delete_security_group(group.id)

    async def state(self, _d: dict[str, Any]) -> dict[str, Any]:
        """What the host has (for operators and tests): networks, ports, routers."""
        return {
            "networks": [n.id for n in await self.driver.list_networks()],
            "ports": [p.id for p in await self.driver.list_ports()],
            "routers": [r.spec.id for r in await self.driver.list_routers()],
            "generations": dict(self.generations),
        }
