"""Real packets through VPC routers of the ``linux`` driver, across two "hosts".

The lab: two host namespaces joined by an underlay veth, each programmed by its own
driver instance; the routers live on h1, the network host, whose external bridge leads to
an "internet" namespace (the lab's upstream, :mod:`altostack.drivers.network.lab`).
Guests are namespaces on ``veth`` ports. One lab serves the whole scenario (setting it up
is most of the cost); each step says what it proves.

All traffic stays inside namespaces made here; every namespace, router and dnsmasq is
removed at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from altostack.drivers.network.base import (
    DhcpHost,
    DnatRule,
    EipBinding,
    InstanceMetadata,
    NetworkSpec,
    PortSpec,
    RouterSpec,
    RouterSubnet,
    RuleSpec,
    SecurityGroupSpec,
    SnatRule,
    guest_device,
)
from tests.support.netns import host_namespace
from tests.support.real import need_real

pytestmark = pytest.mark.real

UNDERLAY = {"h1": "10.99.0.1", "h2": "10.99.0.2"}
OPEN = SecurityGroupSpec("sg-open", (RuleSpec("ingress"), RuleSpec("egress")))

# One program for every guest-side role: servers that tell a client its address as they
# see it, clients, a rate meter, a metadata reader. Runs under `ip netns exec`.
TOOL = r"""
import socket, sys, threading, time, urllib.request
mode = sys.argv[1]
def whoami(port, sink):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    def handle(c, peer):
        c.sendall(peer[0].encode() + b"\n")
        for data in iter(lambda: c.recv(65536), b""):
            if not sink:
                c.sendall(data)
        c.close()
    while True:
        c, peer = s.accept()
        threading.Thread(target=handle, args=(c, peer), daemon=True).start()
if mode == "serve":
    for port in sys.argv[2:]:
        sink = port.startswith("sink")
        threading.Thread(target=whoami, args=(int(port.removeprefix("sink")), sink),
                         daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
def connect(ip, port, buf=None):
    c = socket.socket()
    if buf: c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buf)
    c.settimeout(1); c.connect((ip, int(port))); c.settimeout(3)
    return c, c.makefile("rb").readline().decode().strip()
try:
    if mode == "whoami":
        print(connect(*sys.argv[2:4])[1])
    elif mode == "rate":  # bytes/s this client gets through in `seconds`
        c, _ = connect(sys.argv[2], sys.argv[3], 65536)
        seconds, sent, chunk = float(sys.argv[4]), 0, b"x" * 16384
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            sent += c.send(chunk)
        print(int(sent / (time.monotonic() - start)))
    elif mode == "hold":  # open a flow, then echo through it on demand
        c, seen = connect(*sys.argv[2:4])
        print(seen, flush=True)
        for line in sys.stdin:
            c.sendall(line.encode()); c.settimeout(3)
            print(c.recv(64).decode().strip(), flush=True)
    elif mode == "get":
        print(urllib.request.urlopen(sys.argv[2], timeout=3).read().decode())
except OSError as exc:
    print(f"error {exc}", file=sys.stderr); sys.exit(1)
"""

UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
for key in ip mask router mtu staticroutes hostname; do
  eval "echo $key=\\$$key"
done > "$LEASE_OUT"
"""


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def _in(ns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )


def _tool(ns: str, *args: str, timeout: float = 10) -> str | None:
    done = _in(ns, sys.executable, "-c", TOOL, *args, timeout=timeout)
    return done.stdout.strip() if done.returncode == 0 else None


def _exists(path: Path) -> bool:
    return path.exists()


def _alive(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())  # a zombie's is empty
    except OSError:
        return False


def _ping(ns: str, ip: str) -> bool:
    return _in(ns, "ping", "-c", "1", "-W", "1", "-q", ip).returncode == 0


@dataclass
class Lab:
    tmp: Path
    ns: dict[str, str]
    internet: str
    drivers: dict[str, object] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def server(self, ns: str, *ports: str) -> None:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", TOOL, "serve", *ports]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.processes.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"

    def hold(self, ns: str, ip: str, port: int) -> tuple[subprocess.Popen[str], str]:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", TOOL, "hold", ip, str(port)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.processes.append(proc)  # type: ignore[arg-type]
        assert proc.stdout is not None
        return proc, proc.stdout.readline().strip()


def _echo(proc: subprocess.Popen[str], text: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


@contextlib.asynccontextmanager
async def lab(tmp: Path) -> AsyncIterator[Lab]:
    from altostack.drivers.network.lab import ExternalLab, ensure_external_lab, remove_external_lab
    from altostack.drivers.network.linux import LinuxNetworkDriver

    for tool in ("ip", "ping", "nft", "tc", "dnsmasq"):
        if shutil.which(tool) is None:
            need_real(f"{tool} is missing (scripts/install-system-deps installs it)")
    with contextlib.ExitStack() as stack:
        names = ("h1", "h2", "a1", "a2", "a3", "b1")
        ns = {name: stack.enter_context(host_namespace(name)) for name in names}
        _ip(
            "link",
            "add",
            "ul0",
            "netns",
            ns["h1"],
            "type",
            "veth",
            "peer",
            "ul0",
            "netns",
            ns["h2"],
        )
        for host in ("h1", "h2"):
            _ip("addr", "add", f"{UNDERLAY[host]}/24", "dev", "ul0", netns=ns[host])
            _ip("link", "set", "ul0", "up", netns=ns[host])
            _ip("link", "set", "lo", "up", netns=ns[host])
        external = ExternalLab(
            namespace=f"alto-text-{secrets.token_hex(3)}", bridge="alext0", host_netns=ns["h1"]
        )
        state = Lab(tmp, ns, external.namespace)
        drivers = {
            host: LinuxNetworkDriver(
                state_dir=tmp / host,
                netns=ns[host],
                underlay_ip=UNDERLAY[host],
                external_bridge="alext0" if host == "h1" else None,
            )
            for host in ("h1", "h2")
        }
        state.drivers = dict(drivers)
        try:
            await ensure_external_lab(external)
            yield state
        finally:
            for proc in state.processes:
                proc.kill()
                proc.wait()
            for driver in state.drivers.values():
                assert isinstance(driver, LinuxNetworkDriver)
                for router in await driver.list_routers():
                    await driver.delete_router(router.spec.id)
                await driver.close()
            await remove_external_lab(external)


async def _vpc(lab: Lab, vpc: str, vni: int) -> None:
    from altostack.drivers.network.linux import LinuxNetworkDriver

    for host, other in (("h1", "h2"), ("h2", "h1")):
        driver = lab.drivers[host]
        assert isinstance(driver, LinuxNetworkDriver)
        spec = NetworkSpec(vpc, vni, "10.30.0.0/16", peers=(UNDERLAY[other],))
        await driver.ensure_network(spec)
        await driver.ensure_security_group(OPEN)


async def _guest(lab: Lab, guest: str, host: str, vpc: str, mac: str, ip: str | None) -> None:
    """Plug guest namespace ``guest`` into ``vpc`` on ``host``; ``ip=None``: no address yet."""
    from altostack.drivers.network.linux import LinuxNetworkDriver

    driver = lab.drivers[host]
    assert isinstance(driver, LinuxNetworkDriver)
    port_ip = ip or _RESERVED[guest]
    await driver.ensure_port(PortSpec(f"nic-{guest}", vpc, mac, port_ip, (OPEN.id,), "veth"))
    far, ns = guest_device(f"nic-{guest}"), lab.ns[guest]
    _ip("link", "set", far, "netns", ns, netns=lab.ns[host])
    _ip("link", "set", far, "name", "eth0", netns=ns)
    _ip("link", "set", "eth0", "up", netns=ns)
    _ip("link", "set", "lo", "up", netns=ns)
    if ip is not None:
        gateway = ip.rsplit(".", 1)[0] + ".1"
        _ip("addr", "add", f"{ip}/24", "dev", "eth0", netns=ns)
        _ip("route", "add", "default", "via", gateway, netns=ns)


_RESERVED = {"a1": "10.30.1.11"}


def _dhcp(lab: Lab, guest: str) -> dict[str, str]:
    """busybox udhcpc in the guest; what the DHCP server told it."""
    busybox = shutil.which("busybox")
    if busybox is None:
        need_real("busybox is missing (scripts/install-system-deps installs busybox-static)")
        raise AssertionError("unreachable")
    script, out = lab.tmp / "udhcpc.sh", lab.tmp / f"lease-{guest}.json"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    argv = ["env", f"LEASE_OUT={out}", busybox, "udhcpc", "-i", "eth0", "-n", "-q", "-f"]
    argv += ["-t", "5", "-T", "1", "-O", "mtu", "-O", "staticroutes", "-s", str(script)]
    done = _in(lab.ns[guest], *argv, timeout=20)
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in out.read_text().splitlines())


def _router_a(lab: Lab) -> RouterSpec:
    from altostack.drivers.network.lab import ExternalLab

    external = ExternalLab(namespace=lab.internet).external("203.0.113.10")
    return RouterSpec(
        id="vpc-a",
        network_id="vpc-a",
        subnets=(
            RouterSubnet("subnet-a1", "10.30.1.0/24", "10.30.1.1"),
            RouterSubnet("subnet-a2", "10.30.2.0/24", "10.30.2.1", dhcp=False),
        ),
        external=external,
        default_snat=True,
        snat=(SnatRule("10.30.2.12/32", "203.0.113.11"), SnatRule("10.30.2.0/24", "203.0.113.12")),
        eips=(EipBinding("203.0.113.20", "10.30.1.11", bandwidth_mbps=8),),
        dnat=(DnatRule("203.0.113.10", "tcp", 2222, "10.30.2.12", 22),),
        dhcp_hosts=(DhcpHost("02:00:00:00:0a:01", "10.30.1.11", "web"),),
        instances=(
            InstanceMetadata("10.30.1.11", "vm-a1", "web", ("ssh-ed25519 AAAAa1 a1",), "#!a1"),
            InstanceMetadata("10.30.1.13", "vm-a3", "db", public_ip=None),
        ),
    )


def _router_b(lab: Lab) -> RouterSpec:
    from altostack.drivers.network.lab import ExternalLab

    external = ExternalLab(namespace=lab.internet).external("203.0.113.30")
    return RouterSpec(
        id="vpc-b",
        network_id="vpc-b",
        subnets=(RouterSubnet("subnet-b1", "10.30.1.0/24", "10.30.1.1"),),
        external=external,
        default_snat=True,
        instances=(InstanceMetadata("10.30.1.11", "vm-b1", "twin"),),
    )


async def test_vpc_routers_with_real_packets(tmp_path: Path) -> None:
    from altostack.drivers.network.linux import LinuxNetworkDriver

    run = asyncio.to_thread
    async with lab(tmp_path) as env:
        h1 = env.drivers["h1"]
        assert isinstance(h1, LinuxNetworkDriver)
        await _vpc(env, "vpc-a", 7401)
        await _vpc(env, "vpc-b", 7402)
        started = time.perf_counter()
        router_a = _router_a(env)
        info = await h1.ensure_router(router_a)
        await h1.ensure_router(_router_b(env))
        print(f"\ntwo routers up in {time.perf_counter() - started:.2f} s")
        await _guest(env, "a1", "h1", "vpc-a", "02:00:00:00:0a:01", None)
        await _guest(env, "a2", "h2", "vpc-a", "02:00:00:00:0a:02", "10.30.2.12")
        await _guest(env, "a3", "h2", "vpc-a", "02:00:00:00:0a:03", "10.30.1.13")
        # Same CIDR, same address as a1, in the other VPC.
        await _guest(env, "b1", "h2", "vpc-b", "02:00:00:00:0b:01", "10.30.1.11")

        # DHCP: a1 gets its reservation, the MTU and the route to the metadata service.
        lease = await run(_dhcp, env, "a1")
        assert (lease["ip"], lease["router"], lease["mtu"]) == ("10.30.1.11", "10.30.1.1", "1450")
        assert "169.254.169.254/32 10.30.1.1" in lease["staticroutes"]
        assert lease["hostname"] == "web"
        await run(_ip, "addr", "add", "10.30.1.11/24", "dev", "eth0", netns=env.ns["a1"])
        await run(_ip, "route", "add", "default", "via", "10.30.1.1", netns=env.ns["a1"])

        # Same VPC across hosts (same subnet over VXLAN, other subnet through the router);
        # the other VPC with the same CIDR is not reachable.
        assert await run(_ping, env.ns["a3"], "10.30.1.11")
        assert await run(_ping, env.ns["a1"], "10.30.2.12")
        assert not await run(_ping, env.ns["b1"], "10.30.1.13")

        # Egress NAT: the internet sees the EIP for a1, the most specific SNAT rule's
        # address for a2, the router's address for a3, and VPC B's own router address
        # for its twin of a1.
        internet = env.internet
        await run(env.server, internet, "7000", "sink7001")
        seen = {g: await run(_tool, env.ns[g], "whoami", "203.0.113.1", "7000") for g in env.ns}
        assert seen["a1"] == "203.0.113.20"
        assert (seen["a2"], seen["a3"]) == ("203.0.113.11", "203.0.113.10")
        assert seen["b1"] == "203.0.113.30"

        # Inbound: the EIP reaches a1, the port mapping reaches a2:22, nothing else enters.
        await run(env.server, env.ns["a1"], "80", "sink81")
        await run(env.server, env.ns["a2"], "22")
        assert await run(_tool, internet, "whoami", "203.0.113.20", "80") == "203.0.113.1"
        assert await run(_tool, internet, "whoami", "203.0.113.10", "2222") == "203.0.113.1"
        assert await run(_tool, internet, "whoami", "203.0.113.10", "22") is None
        assert not await run(_ping, internet, "10.30.1.11")

        # Metadata answers each guest about itself, also with overlapping addresses.
        base = "http://169.254.169.254"
        get = _tool
        assert (
            await run(get, env.ns["a1"], "get", f"{base}/latest/meta-data/instance-id") == "vm-a1"
        )
        assert (
            await run(get, env.ns["b1"], "get", f"{base}/latest/meta-data/instance-id") == "vm-b1"
        )
        meta = await run(get, env.ns["a1"], "get", f"{base}/openstack/latest/meta_data.json")
        assert meta is not None and json.loads(meta)["public_keys"] == {
            "key-0": "ssh-ed25519 AAAAa1 a1"
        }
        assert await run(get, env.ns["a1"], "get", f"{base}/latest/user-data") == "#!a1"
        assert await run(get, env.ns["a3"], "get", f"{base}/latest/meta-data/hostname") == "db"
        assert await run(get, env.ns["a2"], "get", f"{base}/latest/meta-data/hostname") is None

        # The EIP's 8 Mbit/s limit holds; the router's default SNAT has none.
        limited = await run(_tool, env.ns["a1"], "rate", "203.0.113.1", "7001", "1.0")
        free = await run(_tool, env.ns["a3"], "rate", "203.0.113.1", "7001", "0.5")
        assert limited is not None and free is not None
        limit = 8e6 / 8
        print(
            f"EIP limited to 8 Mbit/s: {int(limited) * 8 / 1e6:.1f} Mbit/s; "
            f"unlimited: {int(free) * 8 / 1e6:.0f} Mbit/s"
        )
        assert 0.4 * limit < int(limited) < 1.6 * limit
        assert int(free) > 4 * limit
        download = await run(_tool, internet, "rate", "203.0.113.20", "81", "1.0")
        assert download is not None and 0.4 * limit < int(download) < 1.6 * limit

        # The VPC's names, from the router's DNS (the gateway).
        names = await run(
            _in, env.ns["a3"], "busybox", "nslookup", "web.alto.internal", "10.30.1.1"
        )
        assert "10.30.1.11" in names.stdout, names.stdout + names.stderr

        # An agent restart: a new driver converges without breaking an open NAT flow.
        flow, seen_before = await run(env.hold, env.ns["a3"], "203.0.113.1", 7000)
        assert seen_before == "203.0.113.10"
        await h1.close()
        h1 = LinuxNetworkDriver(
            state_dir=tmp_path / "h1",
            netns=env.ns["h1"],
            underlay_ip=UNDERLAY["h1"],
            external_bridge="alext0",
        )
        env.drivers["h1"] = h1
        assert [r.spec for r in await h1.list_routers()] == [router_a, _router_b(env)]
        assert (await h1.ensure_router(router_a)) == info
        assert await run(_echo, flow, "still-there") == "still-there"
        assert (
            await run(get, env.ns["a1"], "get", f"{base}/latest/meta-data/instance-id") == "vm-a1"
        )

        # Unbinding the EIP: a1 is no longer reachable from outside and leaves via SNAT;
        # a changed reservation is served without restarting dnsmasq.
        pidfile = tmp_path / "h1" / "routers" / "vpc-a" / "dnsmasq.pid"
        pid = pidfile.read_text()
        unbound = replace(
            router_a,
            eips=(),
            dhcp_hosts=(*router_a.dhcp_hosts, DhcpHost("02:00:00:00:0a:03", "10.30.1.13", "db")),
        )
        await h1.ensure_router(unbound)
        assert pidfile.read_text() == pid
        assert await run(_tool, internet, "whoami", "203.0.113.20", "80") is None
        assert await run(_tool, env.ns["a1"], "whoami", "203.0.113.1", "7000") == "203.0.113.10"

        # Delete: the namespace and dnsmasq are gone.
        await h1.delete_router("vpc-a")
        assert not await run(_exists, Path("/run/netns", info.namespace or "-"))
        assert not await run(_alive, int(pid))
        assert [r.spec.id for r in await h1.list_routers()] == ["vpc-b"]


METADATA_PROBE = """
import socket
c = socket.create_connection(("169.254.169.254", 80), timeout=2)
c.sendall(b"GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n")
print(c.recv(100).split(b"\\r\\n")[0].decode())
"""


async def test_a_router_comes_back_after_its_namespace_vanished(tmp_path: Path) -> None:
    """A killed dnsmasq, and a namespace removed under a live dnsmasq (another host of
    a lab deleting it, or an operator): ``ensure_router`` of the same spec rebuilds what is
    missing, and the dnsmasq stranded in the old namespace is replaced, not SIGHUPed."""
    from altostack.drivers.network import linux_dhcp
    from altostack.drivers.network.linux import LinuxNetworkDriver

    if shutil.which("dnsmasq") is None:
        need_real("dnsmasq is missing (scripts/install-system-deps installs it)")
    with host_namespace("r") as host:
        driver = LinuxNetworkDriver(state_dir=tmp_path, netns=host)
        try:
            await driver.ensure_network(NetworkSpec("vpc-r", 7403, "10.30.0.0/16"))
            spec = RouterSpec(
                "vpc-r",
                "vpc-r",
                subnets=(RouterSubnet("subnet-r", "10.30.1.0/24", "10.30.1.1"),),
                dhcp_hosts=(DhcpHost("02:00:00:00:0d:01", "10.30.1.11", "one"),),
            )
            info = await driver.ensure_router(spec)
            ns = info.namespace
            assert ns is not None
            files = linux_dhcp.DhcpFiles(tmp_path / "routers" / "vpc-r")
            for vanish in ("dnsmasq", "namespace"):
                pid = linux_dhcp.running_pid(files)
                assert pid is not None
                if vanish == "namespace":
                    await asyncio.to_thread(_ip, "netns", "del", ns)
                else:
                    os.kill(pid, signal.SIGKILL)
                assert await driver.ensure_router(spec) == info
                assert linux_dhcp.running_pid(files) not in (None, pid)
                assert not _alive(pid)
                probe = await asyncio.to_thread(_in, ns, sys.executable, "-c", METADATA_PROBE)
                assert probe.stdout.strip() == "HTTP/1.1 404 Not Found", probe.stderr
        finally:
            for router in await driver.list_routers():
                await driver.delete_router(router.spec.id)
            await driver.close()


async def test_taps_belong_to_the_user_qemu_runs_as(tmp_path: Path) -> None:
    """With ``tap_user`` (QEMU's ``-runas`` user) a hot-plugged NIC can open its tap."""
    from altostack.drivers.network.linux import LinuxNetworkDriver

    with host_namespace("u") as host:
        driver = LinuxNetworkDriver(state_dir=tmp_path, netns=host, tap_user="nobody")
        await driver.ensure_network(NetworkSpec("vpc-u", 7404, "10.30.0.0/16"))
        port = await driver.ensure_port(
            PortSpec("nic-u", "vpc-u", "02:00:00:00:0d:02", "10.30.1.9")
        )
        shown = await asyncio.to_thread(_in, host, "ip", "-d", "link", "show", port.device)
        assert " user nobody " in shown.stdout, shown.stdout


async def test_the_lab_external_network_is_idempotent_and_refuses_overlaps() -> None:
    from altostack.drivers.errors import InvalidSpec
    from altostack.drivers.network.lab import ExternalLab, ensure_external_lab, remove_external_lab

    with host_namespace("l") as host:
        await asyncio.to_thread(
            _ip, "link", "add", "up9", "type", "veth", "peer", "up8", netns=host
        )
        await asyncio.to_thread(_ip, "addr", "add", "198.51.100.7/24", "dev", "up9", netns=host)
        clash = ExternalLab(
            namespace=f"alto-text-{secrets.token_hex(3)}",
            cidr="198.51.100.0/24",
            gateway_ip="198.51.100.1",
            host_netns=host,
        )
        with pytest.raises(InvalidSpec, match="overlaps"):
            await ensure_external_lab(clash)
        assert not await asyncio.to_thread(_exists, Path("/run/netns", clash.namespace))
        external = ExternalLab(namespace=clash.namespace, host_netns=host)
        try:
            await ensure_external_lab(external)
            await ensure_external_lab(external)  # idempotent
            shown = await asyncio.to_thread(_in, external.namespace, "ip", "-br", "addr")
            assert "203.0.113.1/24" in shown.stdout
        finally:
            await remove_external_lab(external)
        assert not await asyncio.to_thread(_exists, Path("/run/netns", external.namespace))
