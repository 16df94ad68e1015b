"""Network benchmark: VM-to-VM throughput across VXLAN vs raw veth, and VPC bring-up time.

Everything runs in network namespaces made here (removed at the end, also on failure):

- **vxlan**: two "hosts" (namespaces joined by an underlay veth, MTU 1500), each
  programmed by its own ``LinuxNetworkDriver``; a VPC network (bridge + VXLAN, MTU 1450)
  on both, with one guest namespace on a ``veth`` port per host, both ports under a
  security group that allows everything (so the packet filter is in the path, as for a
  real VM). ``iperf3`` from the guest on host 1 to the guest on host 2.
- **raw veth**: two namespaces joined by one veth pair, same ``iperf3`` run: the ceiling
  of this machine for namespace-to-namespace TCP.
- **bring-up**: on a host with the lab's external network, the time from nothing to a
  VPC with its network, a security group, a router (two subnets, DHCP, metadata, default
  SNAT, one rate-limited EIP) and two ports; then the same VPC torn down.

    .venv/bin/python bench/network.py [--seconds 3] [--rounds 5] [--json]

Needs root, iproute2, nftables, tc, dnsmasq and iperf3 (scripts/install-system-deps).
Exit status: 0 when it ran, 2 when it could not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from altostack.drivers.network import linux_netns
from altostack.drivers.network.base import (
    DhcpHost,
    EipBinding,
    InstanceMetadata,
    NetworkSpec,
    PortSpec,
    RouterSpec,
    RouterSubnet,
    RuleSpec,
    SecurityGroupSpec,
    guest_device,
)
from altostack.drivers.network.lab import ExternalLab, ensure_external_lab, remove_external_lab
from altostack.drivers.network.linux import LinuxNetworkDriver

OPEN = SecurityGroupSpec("sg-open", (RuleSpec("ingress"), RuleSpec("egress")))
IPERF_PORT = 5201


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Namespaces:
    """Namespaces made by this run, removed by :meth:`remove_all`."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.made: list[str] = []

    async def make(self, name: str) -> str:
        full = f"alto-b{name}-{self.tag}"
        await linux_netns.create(full)
        self.made.append(full)
        _ip("-n", full, "link", "set", "lo", "up")
        return full

    async def remove_all(self) -> None:
        for name in reversed(self.made):
            await linux_netns.remove(name)


def _iperf(server_ns: str, client_ns: str, server_ip: str, seconds: float) -> float:
    """Gbit/s received by the server, one TCP stream."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip,
         "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        argv = ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip]
        argv += ["-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
        for _ in range(50):  # the server needs a moment to listen
            done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
            with contextlib.suppress(ValueError):
                result = json.loads(done.stdout)
                if done.returncode == 0 and "sum_received" in result.get("end", {}):
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"iperf3 failed: {done.stdout[-500:]} {done.stderr[-500:]}")
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


async def _plug(driver: LinuxNetworkDriver, host_ns: str, guest_ns: str, port: PortSpec) -> None:
    await driver.ensure_port(port)
    far = guest_device(port.id)
    _ip("-n", host_ns, "link", "set", far, "netns", guest_ns)
    _ip("-n", guest_ns, "link", "set", far, "name", "eth0")
    _ip("-n", guest_ns, "addr", "add", f"{port.ip}/24", "dev", "eth0")
    _ip("-n", guest_ns, "link", "set", "eth0", "up")


async def throughput(spaces: Namespaces, state: Path, seconds: float) -> dict[str, float]:
    h1, h2, g1, g2 = [await spaces.make(n) for n in ("h1", "h2", "g1", "g2")]
    _ip("link", "add", "ul0", "netns", h1, "type", "veth", "peer", "ul0", "netns", h2)
    for ns, ip in ((h1, "10.98.0.1"), (h2, "10.98.0.2")):
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "ul0")
        _ip("-n", ns, "link", "set", "ul0", "up")
    drivers = {
        h1: LinuxNetworkDriver(state_dir=state / "h1", netns=h1, underlay_ip="10.98.0.1"),
        h2: LinuxNetworkDriver(state_dir=state / "h2", netns=h2, underlay_ip="10.98.0.2"),
    }
    peers = {h1: "10.98.0.2", h2: "10.98.0.1"}
    for host, driver in drivers.items():
        await driver.ensure_network(
            NetworkSpec("vpc-bench", 7601, "10.40.0.0/16", peers=(peers[host],))
        )
        await driver.ensure_security_group(OPEN)
    for n, (host, guest) in enumerate(((h1, g1), (h2, g2)), start=1):
        mac, ip = f"02:00:00:00:0c:{n:02x}", f"10.40.0.{10 + n}"
        port = PortSpec(f"nic-g{n}", "vpc-bench", mac, ip, (OPEN.id,), "veth")
        await _plug(drivers[host], host, guest, port)
    r1, r2 = await spaces.make("r1"), await spaces.make("r2")
    _ip("link", "add", "eth0", "netns", r1, "type", "veth", "peer", "eth0", "netns", r2)
    for ns, ip in ((r1, "10.97.0.1"), (r2, "10.97.0.2")):
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
    vxlan = await asyncio.to_thread(_iperf, g2, g1, "10.40.0.12", seconds)
    raw = await asyncio.to_thread(_iperf, r2, r1, "10.97.0.2", seconds)
    return {"vxlan_gbps": vxlan, "raw_veth_gbps": raw, "ratio": vxlan / raw}


def _vpc(n: int, external: ExternalLab) -> tuple[NetworkSpec, RouterSpec, list[PortSpec]]:
    vpc = f"vpc-up{n}"
    net = NetworkSpec(vpc, 7700 + n, "10.50.0.0/16")
    ports = [
        PortSpec(f"nic-up{n}-{i}", vpc, f"02:00:00:00:{n:02x}:{i:02x}", f"10.50.1.{10 + i}",
                 (OPEN.id,))
        for i in (1, 2)
    ]  # fmt: skip
    router = RouterSpec(
        vpc,
        vpc,
        subnets=(
            RouterSubnet(f"subnet-{n}a", "10.50.1.0/24", "10.50.1.1"),
            RouterSubnet(f"subnet-{n}b", "10.50.2.0/24", "10.50.2.1"),
        ),
        external=external.external(f"203.0.113.{10 + n}"),
        default_snat=True,
        eips=(EipBinding(f"203.0.113.{100 + n}", ports[0].ip, bandwidth_mbps=100),),
        dhcp_hosts=tuple(DhcpHost(p.mac, p.ip, p.id) for p in ports),
        instances=tuple(InstanceMetadata(p.ip, f"vm-{p.id}", p.id) for p in ports),
    )
    return net, router, ports


async def bring_up(spaces: Namespaces, state: Path, rounds: int) -> dict[str, Any]:
    host = await spaces.make("up")
    external = ExternalLab(namespace=f"alto-bext-{spaces.tag}", bridge="alext0", host_netns=host)
    await ensure_external_lab(external)
    driver = LinuxNetworkDriver(state_dir=state / "up", netns=host, external_bridge="alext0")
    up, down = [], []
    try:
        for n in range(rounds):
            net, router, ports = _vpc(n, external)
            started = time.perf_counter()
            await driver.ensure_network(net)
            await driver.ensure_security_group(OPEN)
            await driver.ensure_router(router)
            for port in ports:
                await driver.ensure_port(port)
            up.append(time.perf_counter() - started)
            started = time.perf_counter()
            for port in ports:
                await driver.delete_port(port.id)
            await driver.delete_router(router.id)
            await driver.delete_network(net.id)
            down.append(time.perf_counter() - started)
    finally:
        for router_info in await driver.list_routers():
            await driver.delete_router(router_info.spec.id)
        await driver.close()
        await remove_external_lab(external)
    return {
        "bring_up_s": statistics.median(up),
        "bring_up_all_s": up,
        "tear_down_s": statistics.median(down),
    }


@contextlib.asynccontextmanager
async def _lab() -> AsyncIterator[tuple[Namespaces, Path]]:
    spaces = Namespaces()
    with tempfile.TemporaryDirectory(prefix="alto-bench-net-") as state:
        try:
            yield spaces, Path(state)
        finally:
            await spaces.remove_all()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with _lab() as (spaces, state):
        result = await throughput(spaces, state, args.seconds)
        result.update(await bring_up(spaces, state, args.rounds))
    result["loadavg"] = os.getloadavg()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="iperf3 run length")
    parser.add_argument("--rounds", type=int, default=5, help="VPC bring-ups to time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    missing = [t for t in ("ip", "nft", "tc", "dnsmasq", "iperf3") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(f"needs root and {', '.join(missing) or 'nothing else'}", file=sys.stderr)
        return 2
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"VM-to-VM across VXLAN (2 host namespaces): {result['vxlan_gbps']:.2f} Gbit/s")
    print(f"raw veth (same run):                       {result['raw_veth_gbps']:.2f} Gbit/s")
    print(f"ratio VXLAN / raw veth:                    {result['ratio']:.2f}")
    ups = ", ".join(f"{s * 1000:.0f}" for s in result["bring_up_all_s"])
    print(f"VPC bring-up (net, SG, router+NAT+EIP+DHCP+metadata, 2 ports): "
          f"median {result['bring_up_s'] * 1000:.0f} ms ({ups} ms)")  # fmt: skip
    print(f"VPC tear-down: median {result['tear_down_s'] * 1000:.0f} ms")
    print("load average: " + " ".join(f"{x:.2f}" for x in result["loadavg"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
