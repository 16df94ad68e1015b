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
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from altostack.drivers.network.base import NetworkSpec
from tests.support.netns import host_namespace
from tests.support.real import need_real

pytestmark = pytest.mark.real

UNDERLAY = {"h1": "10.99.0.1", "h2": "10.99.0.2"}


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def _ping(src_ns: str, dst_ip: str, source: str | None = None) -> bool:
    forged = ["-I", source] if source else []
    done = subprocess.run(
        ["ip", "netns", "exec", src_ns, "ping", "-c", "1", "-W", "1", "-q", *forged, dst_ip],
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


async def test_guests_on_two_hosts_talk_over_vxlan_and_same_cidr_networks_stay_apart(
    tmp_path: Path,
) -> None:
    from altostack.drivers.network.linux import LinuxNetworkDriver, bridge_name

    with lab() as ns:
        drivers = {
            host: LinuxNetworkDriver(
                state_dir=tmp_path / host, netns=ns[host], underlay_ip=UNDERLAY[host]
            )
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


ECHO_SERVER = """
import socket, threading, sys
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(64), b"")],
                         daemon=True).start()
for p in (80, 81):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
"""


def _echoes_received(guest_ns: str) -> int:
    """ICMP echo requests the guest's kernel has received (``Icmp: InEchos``)."""
    argv = ["ip", "netns", "exec", guest_ns, "cat", "/proc/net/snmp"]
    lines = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()
    names, values = (line.split() for line in lines if line.startswith("Icmp:"))
    return int(values[names.index("InEchos")])


def _echo_server(guest_ns: str, ip: str) -> subprocess.Popen[bytes]:
    argv = ["ip", "netns", "exec", guest_ns, sys.executable, "-c", ECHO_SERVER, ip]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert server.stdout is not None and server.stdout.readline() == b"ready\n"
    return server


def _connects(src_ns: str, ip: str, port: int) -> bool:
    argv = ["ip", "netns", "exec", src_ns, sys.executable, "-c", CONNECT, ip, str(port)]
    return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0


async def test_security_groups_and_anti_spoofing_with_real_packets(tmp_path: Path) -> None:
    from altostack.drivers.network.base import PortSpec, RuleSpec, SecurityGroupSpec, guest_device
    from altostack.drivers.network.linux import LinuxNetworkDriver

    with lab() as ns:
        host = ns["h1"]
        driver = LinuxNetworkDriver(state_dir=tmp_path, netns=host, underlay_ip=UNDERLAY["h1"])
        net = NetworkSpec("subnet-sg", 7100, "10.20.0.0/24", "10.20.0.1")
        await driver.ensure_network(net)
        web = SecurityGroupSpec(
            "sg-web",
            (
                RuleSpec("ingress", "tcp", 80, 80, remote_cidr="10.20.0.0/24"),
                RuleSpec("ingress", "icmp", remote_ips=("10.20.0.13",)),
            ),
        )
        client = SecurityGroupSpec("sg-client", (RuleSpec("egress"),))
        await driver.ensure_security_group(web)
        await driver.ensure_security_group(client)
        guests = {
            "g1": ("10.20.0.11", "sg-web"),
            "g2": ("10.20.0.12", "sg-client"),
            "g3": ("10.20.0.13", "sg-client"),
        }
        for n, (guest, (ip, group)) in enumerate(guests.items(), start=1):
            port = PortSpec(f"nic-{guest}", net.id, f"02:00:00:00:01:{n:02x}", ip, (group,), "veth")
            await driver.ensure_port(port)
            far = guest_device(port.id)
            _ip("link", "set", far, "netns", ns[guest], netns=host)
            _ip("link", "set", far, "name", "eth0", netns=ns[guest])
            _ip("addr", "add", f"{ip}/24", "dev", "eth0", netns=ns[guest])
            _ip("link", "set", "eth0", "up", netns=ns[guest])
        server = await asyncio.to_thread(_echo_server, ns["g1"], "10.20.0.11")
        try:
            check = asyncio.to_thread
            assert await check(_connects, ns["g2"], "10.20.0.11", 80)  # allowed port
            assert not await check(_connects, ns["g2"], "10.20.0.11", 81)  # no rule
            assert await check(_ping, ns["g3"], "10.20.0.11")  # remote group member
            assert not await check(_ping, ns["g2"], "10.20.0.11")  # not a member
            assert not await check(_connects, ns["g1"], "10.20.0.12", 80)  # g1: no egress

            # g2 forging g3's address (which may ping g1) is dropped at its port.
            _ip("addr", "add", "10.20.0.13/32", "dev", "eth0", netns=ns["g2"])
            # (Its replies would go to the real g3 anyway: count what reaches g1.)
            before = await check(_echoes_received, ns["g1"])
            await check(_ping, ns["g2"], "10.20.0.11", "10.20.0.13")
            assert await check(_echoes_received, ns["g1"]) == before
            await check(_ping, ns["g3"], "10.20.0.11")
            assert await check(_echoes_received, ns["g1"]) == before + 1

            # An open connection survives a rule change; the change applies at once.
            conn = await check(_open, ns["g2"])
            opened = (*web.rules[1:], RuleSpec("ingress", "tcp", 81, 81))
            started = time.perf_counter()
            await driver.ensure_security_group(SecurityGroupSpec("sg-web", opened))
            applied = time.perf_counter() - started
            assert applied < 1.0
            assert await check(_connects, ns["g2"], "10.20.0.11", 81)
            assert not await check(_connects, ns["g2"], "10.20.0.11", 80)
            assert await check(_echo, conn)
        finally:
            server.kill()
            server.wait()


OPEN = """
import socket, sys
c = socket.create_connection(("10.20.0.11", 80), timeout=2)
print("open", flush=True)
sys.stdin.readline()
c.sendall(b"still-there"); c.settimeout(2)
print(c.recv(64).decode(), flush=True)
"""


def _open(src_ns: str) -> subprocess.Popen[bytes]:
    argv = ["ip", "netns", "exec", src_ns, sys.executable, "-c", OPEN]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
    return proc


def _echo(proc: subprocess.Popen[bytes]) -> bool:
    try:
        out, _ = proc.communicate(b"go\n", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.strip() == b"still-there"
