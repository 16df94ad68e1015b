"""Real packets through the ``linux`` network driver: two "hosts" (namespaces joined by an
underlay veth), each programmed by its own driver instance, with "guests" (namespaces on a
veth into the network's bridge) on both.

Proves what the contract cannot: the VXLAN devices, their head-end replication entries and
the bridges carry traffic between hosts, and two networks with the same CIDR stay apart.
All traffic stays inside the namespaces made here; removing them removes every device.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from altostack.drivers.network.base import NetworkSpec
from tests.support.netns import host_namespace
from tests.support.real import need_real

pytestmark = pytest.mark.real

UNDERLAY = {"h1": "10.99.0.1", "h2": "10.99.0.2"}


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def _ping(src_ns: str, dst_ip: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", src_ns, "ping", "-c", "1", "-W", "1", "-q", dst_ip],
        capture_output=True,
        timeout=10,
    )
    return done.returncode == 0


@contextlib.contextmanager
def lab() -> Iterator[dict[str, str]]:
    """Two hosts on an underlay and three guest namespaces, all removed on exit."""
    if shutil.which("ping") is None or shutil.which("ip") is None:
        need_real("ping and ip are missing (scripts/install-system-deps installs them)")
    with contextlib.ExitStack() as stack:
        ns = {name: stack.enter_context(host_namespace(name)) for name in ("h1", "h2")}
        ns.update({g: stack.enter_context(host_namespace(g)) for g in ("g1", "g2", "g3")})
        veth = ("type", "veth", "peer", "ul0", "netns", ns["h2"])
        _ip("link", "add", "ul0", "netns", ns["h1"], *veth)
        for host in ("h1", "h2"):
            _ip("addr", "add", f"{UNDERLAY[host]}/24", "dev", "ul0", netns=ns[host])
            _ip("link", "set", "ul0", "up", netns=ns[host])
            _ip("link", "set", "lo", "up", netns=ns[host])
        yield ns


def plug(ns: dict[str, str], guest: str, host: str, bridge: str, ip: str) -> None:
    """A guest namespace with ``ip``/24 on ``eth0``, whose peer is a port of ``bridge``."""
    port = f"v{guest}"
    _ip("link", "add", port, "type", "veth", "peer", "eth0", "netns", ns[guest], netns=ns[host])
    _ip("link", "set", port, "master", bridge, "mtu", "1450", "up", netns=ns[host])
    _ip("addr", "add", f"{ip}/24", "dev", "eth0", netns=ns[guest])
    _ip("link", "set", "eth0", "mtu", "1450", "up", netns=ns[guest])


async def test_guests_on_two_hosts_talk_over_vxlan_and_same_cidr_networks_stay_apart() -> None:
    from altostack.drivers.network.linux import LinuxNetworkDriver, bridge_name

    with lab() as ns:
        drivers = {
            host: LinuxNetworkDriver(netns=ns[host], underlay_ip=UNDERLAY[host])
            for host in ("h1", "h2")
        }
        blue = NetworkSpec("subnet-blue", 7001, "10.20.0.0/24", "10.20.0.1")
        red = NetworkSpec("subnet-red", 7002, "10.20.0.0/24", "10.20.0.1")
        for host, other in (("h1", "h2"), ("h2", "h1")):
            for spec in (blue, red):
                peered = NetworkSpec(
                    spec.id, spec.vni, spec.cidr, spec.gateway_ip, peers=(UNDERLAY[other],)
                )
                info = await drivers[host].ensure_network(peered)
                assert info.peers == (UNDERLAY[other],)
        plug(ns, "g1", "h1", bridge_name(blue.vni), "10.20.0.11")
        plug(ns, "g2", "h2", bridge_name(blue.vni), "10.20.0.12")
        plug(ns, "g3", "h2", bridge_name(red.vni), "10.20.0.13")

        assert await asyncio.to_thread(_ping, ns["g1"], "10.20.0.12")  # across hosts
        assert await asyncio.to_thread(_ping, ns["g2"], "10.20.0.11")
        assert not await asyncio.to_thread(_ping, ns["g1"], "10.20.0.13")  # other network

        # Without the replication entry the hosts cannot find each other's guests.
        await drivers["h1"].ensure_network(blue)  # peers=() converges the entry away
        assert (await drivers["h1"].list_networks())[0].peers == ()
        _ip("neigh", "flush", "all", netns=ns["g1"])
        no_learning = ("type", "bridge", "ageing_time", "0")
        _ip("link", "set", bridge_name(blue.vni), *no_learning, netns=ns["h1"])
        assert not await asyncio.to_thread(_ping, ns["g1"], "10.20.0.12")
