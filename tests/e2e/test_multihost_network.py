"""Two QEMU hosts as network namespaces, each running ``alto agent --netns`` with the
linux data plane, and the control plane in between: VPCs across both hosts, real guests.

Layout (all made here, all removed at the end, also on failure):

- an underlay bridge in this namespace with the control plane's address (``alto up`` and
  NATS listen there, nowhere else) and a veth into each host namespace;
- host A is the network host: the VPC routers and the lab's external network live there,
  with the "internet" namespace on it (an HTTP server there answers with the caller's
  address, so SNAT is seen from outside);
- one guest per host (a hard anti-affinity group places them apart), both in one subnet;
  a namespace stands in for a guest of a second VPC.

Proven with real packets, through the API: DHCP from the router on host A (host B's guest
over VXLAN); guest to guest across the hosts; default SNAT, an EIP's SNAT and a NAT
gateway's subnet SNAT seen with the right source address from the internet; the EIP
reaches B's guest only while bound; a DNAT port mapping; security group rules on B's
running VM exactly as written (TCP port and source CIDR, ICMP from a remote group, a rule
removed, a rule added); a forged source address dropped at the sender's port; an elastic
NIC moved between VMs keeps MAC and address (its port follows to host B); a second VPC
with the same CIDR (and the same guest address) has its own router and SNAT address and
reaches nothing of the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.drivers.compute.qemu_cmdline import VmPaths
from altostack.drivers.network.lab import ExternalLab, ensure_external_lab, remove_external_lab
from altostack.drivers.network.linux import LinuxNetworkDriver
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import GUEST_TIMEOUT, SerialConsole, guest_image, kill_qemus_under
from tests.support.alto_server import (
    AltoServer,
    join_token,
    server_env,
    start_qemu_agent,
    upload_image,
    wait_for,
)
from tests.support.nats import running_nats
from tests.support.netns import host_namespace

pytestmark = [pytest.mark.slow, pytest.mark.real]
READY = re.compile(r"^ALTO-GUEST-READY ip=(\S+) hostname=(\S+)", re.MULTILINE)
PASSWORD = "Multi-Host-7"


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


@contextlib.contextmanager
def _underlay(net: str) -> Iterator[str]:
    """A bridge here with ``<net>.1/24``; removed at the end."""
    bridge = f"altu{secrets.token_hex(2)}"
    try:
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{net}.1/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        yield bridge
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)


def _plug(bridge: str, namespace: str, address: str) -> None:
    """A veth from the underlay bridge into ``namespace`` (``ul0`` there, with ``address``)."""
    outer = f"altv{secrets.token_hex(3)}"
    _run("ip", "link", "add", outer, "type", "veth", "peer", "name", "ul0", "netns", namespace)
    _run("ip", "link", "set", outer, "master", bridge, "up")
    _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "ul0")
    _run("ip", "-n", namespace, "link", "set", "ul0", "up")
    _run("ip", "-n", namespace, "link", "set", "lo", "up")


def _op_done(http: httpx.Client, reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 202, reply.text
    op_id = reply.json()["operation"]["id"]

    def finished() -> dict[str, Any] | None:
        op = http.get(f"/v1/operations/{op_id}?wait=5").json()
        return op if op["state"] in ("succeeded", "failed") else None

    op = wait_for(finished, GUEST_TIMEOUT, f"operation {op_id}")
    assert op["state"] == "succeeded", op
    return dict(reply.json())


def _curl(namespace: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "curl", "-sS", "--max-time", "3", url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_vpc_across_two_hosts_with_real_guests() -> None:
    image_file = guest_image()
    root = Path(tempfile.mkdtemp(prefix="alto-mh-"))
    root.chmod(0o711)
    net = f"10.251.{secrets.randbelow(250) + 1}"
    tag = secrets.token_hex(2)
    agents: list[subprocess.Popen[bytes]] = []
    vpcs: list[str] = []
    with contextlib.ExitStack() as stack:
        host_a = stack.enter_context(host_namespace("ha"))
        host_b = stack.enter_context(host_namespace("hb"))
        bridge = stack.enter_context(_underlay(net))
        _plug(bridge, host_a, f"{net}.2")
        _plug(bridge, host_b, f"{net}.3")
        lab = ExternalLab(namespace=f"alto-t-ext{tag}", bridge=f"altx{tag}", host_netns=host_a)
        nats = stack.enter_context(running_nats(f"{net}.1"))
        env = server_env(ALTO_BUS=nats.url, ALTO_AGENT_TIMEOUT_SECONDS="30")
        server = AltoServer(root / "cp", env=env, host=f"{net}.1")
        http = server.client(timeout=60.0)
        try:
            asyncio.run(ensure_external_lab(lab))
            server.start()
            http.headers.update(server.login())
            token = http.headers["Authorization"].removeprefix("Bearer ")
            upload_image(http, image_file)
            join = join_token(http)
            for name, namespace, address in (("mh-a", host_a, 2), ("mh-b", host_b, 3)):
                extra = {
                    "ALTO_TOKEN": token,
                    "ALTO_NETWORK_DRIVER": "linux",
                    "ALTO_UNDERLAY_IP": f"{net}.{address}",
                    "ALTO_QEMU_RUN_AS": "",
                }
                if name == "mh-a":
                    extra |= {"ALTO_NETWORK_HOST": "1", "ALTO_EXTERNAL_BRIDGE": lab.bridge}
                agents.append(
                    start_qemu_agent(
                        server, join, name, root / name, root / f"{name}.log",
                        {**env, **extra}, "--netns", namespace,
                    )
                )  # fmt: skip
            wait_for(lambda: len(http.get("/v1/hosts?state=up").json()["items"]) == 2, 60, "joins")
            namespaces = {"mh-a": host_a, "mh-b": host_b}
            _check_vpc_across_hosts(http, root, lab.namespace, namespaces, vpcs)
        finally:
            http.close()
            for agent in agents:
                if agent.poll() is not None:  # an agent that died says so in the report
                    print(f"agent {agent.args[3]} exited early with {agent.returncode}")
                if agent.poll() is None:
                    os.killpg(agent.pid, signal.SIGTERM)
                    try:
                        agent.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        os.killpg(agent.pid, signal.SIGKILL)
                        agent.wait(timeout=10)
            server.kill()
            kill_qemus_under(root)
            if os.environ.get("ALTO_KEEP_LOGS"):  # before the routers (dnsmasq.log) go
                shutil.copytree(
                    root,
                    os.environ["ALTO_KEEP_LOGS"],
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.qcow2", "*.sock", "*.iso"),
                )
            asyncio.run(_remove_routers(root / "mh-a" / "network", host_a, lab, vpcs))
            shutil.rmtree(root, ignore_errors=True)


async def _remove_routers(state_dir: Path, host: str, lab: ExternalLab, vpcs: list[str]) -> None:
    """The router namespaces (named globally, after the host's namespace as the agent's
    ``--netns`` scope names them), also of a router whose agent died before recording it,
    and the lab; the rest dies with the host namespaces."""
    routers = LinuxNetworkDriver(state_dir=state_dir, netns=host)
    known = [router.spec.id for router in await routers.list_routers()]
    for router_id in {*known, *vpcs}:
        with contextlib.suppress(Exception):
            await routers.delete_router(router_id)
    await routers.close()
    with contextlib.suppress(Exception):
        await remove_external_lab(lab)


WHOAMI = """
import http.server, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Echo).serve_forever()
"""


@contextlib.contextmanager
def _whoami(namespace: str, address: str, port: int) -> Iterator[str]:
    """An HTTP server in ``namespace`` answering each client with its source address."""
    argv = ["ip", "netns", "exec", namespace, sys.executable, "-c", WHOAMI, address, str(port)]
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe = ["ip", "netns", "exec", namespace, "curl", "-s", f"http://{address}:{port}/"]
        wait_for(lambda: subprocess.run(probe, capture_output=True).returncode == 0, 10, "whoami")
        yield f"http://{address}:{port}/"
    finally:
        server.kill()
        server.wait(timeout=10)


class Guest:
    """A logged-in serial console on a VM (served by an event loop in a thread of its
    own, so the checks stay plain code), with the probes the checks need."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sh: SerialConsole, ip: str) -> None:
        self.loop, self.sh, self.ip = loop, sh, ip

    def run(self, command: str) -> str:
        future = asyncio.run_coroutine_threadsafe(self.sh.run(command), self.loop)
        return future.result(GUEST_TIMEOUT)

    def get(self, url: str) -> str:
        """The body, or ``refused`` / ``dropped`` (a timeout: a firewall drop)."""
        # (busybox wget -T crashes in the test image: timeout(1) bounds it instead)
        out = self.run(f"timeout 3 wget -qO- {url} 2>&1; r=$?; echo; echo rc=$r")
        body, _, rc = out.rpartition("rc=")
        if rc.strip() == "0":
            lines = [line for line in body.splitlines() if line.strip()]
            return lines[-1].strip() if lines else ""
        return "refused" if "refused" in body else "dropped"

    def ping(self, ip: str, source: str | None = None) -> bool:
        flag = f"-I {source} " if source else ""
        out = self.run(f"ping -c 1 -W 2 {flag}{ip} >/dev/null 2>&1; echo rc=$?")
        return "rc=0" in out

    def echoes_received(self) -> int:
        """ICMP echo requests that reached this guest's stack (``/proc/net/snmp``)."""
        out = self.run("grep '^Icmp:' /proc/net/snmp")
        head, values = (line.split() for line in out.strip().splitlines()[-2:])
        return int(values[head.index("InEchos")])


@contextlib.contextmanager
def _guests(*guests: tuple[VmPaths, str]) -> Iterator[list[Guest]]:
    """Root shells on the guests' serial consoles, logged out at the end."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="consoles", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    def call(coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(GUEST_TIMEOUT)  # type: ignore[arg-type]

    try:
        shells = []
        for paths, ip in guests:
            sh = call(stack.enter_async_context(SerialConsole.login(paths, "root", PASSWORD)))
            shells.append(Guest(loop, sh, ip))
        yield shells
    finally:
        with contextlib.suppress(Exception):
            call(stack.aclose())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _port_on(namespace: str, nic: dict[str, Any]) -> bool:
    """Whether the host namespace has the NIC's port (its tap's alias names id, MAC, IP)."""
    links = _run("ip", "-n", namespace, "-d", "link", "show")
    alias = next((line for line in links.splitlines() if nic["id"] in line), "")
    return nic["mac"] in alias and f'"{nic["private_ip"]}"' in alias


def _check_vpc_across_hosts(
    http: httpx.Client, root: Path, internet: str, namespaces: dict[str, str], vpcs: list[str]
) -> None:
    """Everything through the API and real guests; ``vpcs`` gets each VPC made (their
    routers are removed at the end, whatever happens)."""
    vpc = http.post("/v1/vpcs", json={"name": "mh", "cidr": "10.90.0.0/16"})
    vpcs.append(vpc.json()["vpc"]["id"])
    vpc_id = _op_done(http, vpc)["vpc"]["id"]
    body = {"vpc_id": vpc_id, "name": "web", "cidr": "10.90.1.0/24"}
    subnet = _op_done(http, http.post("/v1/subnets", json=body))["subnet"]
    default = http.get(f"/v1/security-groups?vpc_id={vpc_id}").json()["items"][0]
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 80,
            "remote_cidr": "0.0.0.0/0"}  # fmt: skip
    assert http.post(f"/v1/security-groups/{default['id']}/rules", json=rule).status_code == 201
    body = {"name": "apart", "policy": "anti-affinity", "mode": "hard"}
    placement = http.post("/v1/placement-groups", json=body).json()
    image = http.get("/v1/images?name=guest").json()["items"][0]
    replies = []
    for name in ("mh1", "mh2"):
        body = {"name": name, "instance_type": "c1.small", "image_id": image["id"],
                "subnet_id": subnet["id"], "password": PASSWORD,
                "placement_group_id": placement["id"]}  # fmt: skip
        replies.append(http.post("/v1/vms", json=body))
    vms = [_op_done(http, r)["vm"] for r in replies]
    hosts = {h["id"]: h["hostname"] for h in http.get("/v1/hosts").json()["items"]}
    placed = {vm["id"]: hosts[http.get(f"/v1/vms/{vm['id']}").json()["host_id"]] for vm in vms}
    assert sorted(placed.values()) == ["mh-a", "mh-b"]
    on_a, on_b = sorted(vms, key=lambda vm: placed[vm["id"]])
    ips, nics = {}, {}
    for vm in vms:
        (nic,) = http.get(f"/v1/nics?vm_id={vm['id']}").json()["items"]

        def ready(vm_id: str = vm["id"]) -> re.Match[str] | None:
            out = http.get(f"/v1/vms/{vm_id}/console-output?lines=200").json()["output"]
            return READY.search(out)

        found = wait_for(ready, GUEST_TIMEOUT, f"{vm['name']} ready")
        # DHCP from the router on host A; host B's guest over VXLAN.
        assert found.group(1) == nic["private_ip"], found.group(0)
        ips[vm["id"]], nics[vm["id"]] = nic["private_ip"], nic

    paths = {vm["id"]: VmPaths(root / placed[vm["id"]] / "vms" / vm["id"]) for vm in vms}
    with (
        _whoami(internet, "203.0.113.1", 8000) as whoami,
        _guests(*((paths[vm["id"]], ips[vm["id"]]) for vm in (on_a, on_b))) as (a, b),
    ):
        router_ip, mapped = _edge(http, internet, whoami, subnet, on_b, a, b)
        nic_b = nics[on_b["id"]]
        _security_groups(http, vpc_id, default, nic_b, a, b, internet, mapped)
        _elastic_nic(http, subnet, on_a, on_b, namespaces, a, b)
        _same_cidr(http, on_b, a, b, namespaces["mh-b"], whoami, router_ip, vpcs)


def _edge(
    http: httpx.Client,
    internet: str,
    whoami: str,
    subnet: dict[str, Any],
    on_b: dict[str, Any],
    a: Guest,
    b: Guest,
) -> tuple[str, str]:
    """VXLAN between the hosts, default SNAT, an EIP, a NAT gateway's SNAT and DNAT."""
    assert a.get(f"http://{b.ip}/") == on_b["name"]  # guest to guest across hosts
    router_ip = a.get(whoami)  # default SNAT: the VPC router's own public address
    assert router_ip.startswith("203.0.113.") and router_ip != "203.0.113.1", router_ip

    # The guest on host B behind an EIP: internet → router on A → VXLAN → B, and back.
    eip = _op_done(http, http.post("/v1/eips", json={}))["eip"]
    _op_done(http, http.post(f"/v1/eips/{eip['id']}/actions/bind", json={"vm_id": on_b["id"]}))
    url = f"http://{eip['address']}/"
    answer = wait_for(lambda: _curl(internet, url).stdout.strip(), 15, "the EIP answers")
    assert answer == on_b["name"]
    assert b.get(whoami) == eip["address"]  # its egress leaves with the EIP
    _op_done(http, http.post(f"/v1/eips/{eip['id']}/actions/unbind"))
    wait_for(lambda: _curl(internet, url).returncode != 0, 15, "the unbound EIP to go quiet")

    # A NAT gateway on a second EIP: SNAT for the subnet, port 8080 mapped to B's port 80.
    nat_eip = _op_done(http, http.post("/v1/eips", json={}))["eip"]
    body = {"vpc_id": subnet["vpc_id"], "name": "gw", "eip_id": nat_eip["id"]}
    nat = _op_done(http, http.post("/v1/nat-gateways", json=body))["nat_gateway"]
    r = http.post(f"/v1/nat-gateways/{nat['id']}/snat-rules", json={"subnet_id": subnet["id"]})
    assert r.status_code == 201, r.text
    dnat = {"protocol": "tcp", "public_port": 8080, "vm_id": on_b["id"], "private_port": 80}
    r = http.post(f"/v1/nat-gateways/{nat['id']}/dnat-rules", json=dnat)
    assert r.status_code == 201, r.text
    mapped = f"http://{nat_eip['address']}:8080/"
    answer = wait_for(lambda: _curl(internet, mapped).stdout.strip(), 15, "the port mapping")
    assert answer == on_b["name"]

    def snat_by_gateway() -> bool:
        return a.get(whoami) == nat_eip["address"]

    wait_for(snat_by_gateway, 15, "the subnet's SNAT through the gateway")
    assert _curl(internet, f"http://{nat_eip['address']}:8081/").returncode != 0
    return router_ip, mapped


def _security_groups(
    http: httpx.Client,
    vpc_id: str,
    default: dict[str, Any],
    nic_b: dict[str, Any],
    a: Guest,
    b: Guest,
    internet: str,
    mapped: str,
) -> None:
    """Rules exactly as written, on a running VM on the other host: TCP port + source
    CIDR, ICMP from a remote group, a rule removed and one added; spoofing dropped."""
    group = http.post("/v1/security-groups", json={"vpc_id": vpc_id, "name": "web"}).json()
    rules = {
        "http": {"direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 80,
                 "remote_cidr": f"{a.ip}/32"},
        "icmp": {"direction": "ingress", "protocol": "icmp", "remote_group_id": default["id"]},
        "out": {"direction": "egress"},
    }  # fmt: skip
    made = {}
    for name, rule in rules.items():
        r = http.post(f"/v1/security-groups/{group['id']}/rules", json=rule)
        assert r.status_code == 201, r.text
        made[name] = r.json()["id"]
    r = http.patch(f"/v1/nics/{nic_b['id']}", json={"security_group_ids": [group["id"]]})
    assert r.status_code == 200, r.text

    def port_81_dropped() -> bool:  # under the default group: refused (no server)
        return a.get(f"http://{b.ip}:81/") == "dropped"

    wait_for(port_81_dropped, 15, "the web group on B's port")
    assert a.get(f"http://{b.ip}/") != "dropped"  # port 80 from A's /32
    assert a.ping(b.ip)  # ICMP: A is in the remote (default) group
    # The port mapping still leads to B's port 80, but from the internet's address,
    # which the rule's source CIDR does not cover.
    assert _curl(internet, mapped).returncode != 0

    http.delete(f"/v1/security-groups/{group['id']}/rules/{made['icmp']}")

    def icmp_gone() -> bool:
        return not a.ping(b.ip)

    wait_for(icmp_gone, 15, "the ICMP rule's removal to apply")
    rule = {"direction": "ingress", "protocol": "icmp", "remote_cidr": "10.90.0.0/16"}
    assert http.post(f"/v1/security-groups/{group['id']}/rules", json=rule).status_code == 201

    def icmp_from_cidr() -> bool:
        return a.ping(b.ip)

    wait_for(icmp_from_cidr, 15, "the ICMP rule by source CIDR")

    # Spoofing: A forges an address of the subnet (allowed by B's rule); its port on host A
    # drops it before VXLAN, so B's stack never sees the echo request.
    forged = "10.90.1.250"
    a.run(f"ip addr add {forged}/32 dev eth0")
    before = b.echoes_received()
    a.ping(b.ip, source=forged)
    assert b.echoes_received() == before
    a.run(f"ip addr del {forged}/32 dev eth0")
    assert a.ping(b.ip)
    assert b.echoes_received() == before + 1


def _elastic_nic(
    http: httpx.Client,
    subnet: dict[str, Any],
    on_a: dict[str, Any],
    on_b: dict[str, Any],
    namespaces: dict[str, str],
    a: Guest,
    b: Guest,
) -> None:
    """An elastic NIC attached to A's running VM, then moved to B's: it is hot-plugged
    into each guest in turn (and out of A's), its port follows to host B with its MAC, and
    B's guest gets the NIC's address over DHCP on it."""
    nic = http.post("/v1/nics", json={"subnet_id": subnet["id"]}).json()
    attach = f"/v1/nics/{nic['id']}/actions/attach"
    _op_done(http, http.post(attach, json={"vm_id": on_a["id"]}))
    assert _port_on(namespaces["mh-a"], nic) and not _port_on(namespaces["mh-b"], nic)
    macs = "cat /sys/class/net/*/address"

    def sees(guest: Guest, present: bool = True) -> bool:
        """Whether the guest comes to see (or stop seeing) the NIC: ACPI hot-plug takes
        the guest a moment."""
        deadline = time.monotonic() + 20
        while (nic["mac"] in guest.run(macs)) != present:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    assert sees(a)
    _op_done(http, http.post(f"/v1/nics/{nic['id']}/actions/detach"))
    moved = _op_done(http, http.post(attach, json={"vm_id": on_b["id"]}))["nic"]
    assert (moved["mac"], moved["private_ip"]) == (nic["mac"], nic["private_ip"])
    assert _port_on(namespaces["mh-b"], nic) and not _port_on(namespaces["mh-a"], nic)
    assert sees(a, present=False) and sees(b)
    find = (
        "for i in /sys/class/net/*; do "
        f'[ "$(cat $i/address)" = {nic["mac"]} ] && echo IF=${{i##*/}}; done'
    )
    (name,) = set(re.findall(r"^IF=(\w+)\s*$", b.run(find), re.MULTILINE))
    lease = b.run(f"ip link set {name} up; udhcpc -i {name} -n -q -t 5 -s /bin/true 2>&1")
    assert f"lease of {nic['private_ip']} " in lease, lease


def _same_cidr(
    http: httpx.Client,
    on_b: dict[str, Any],
    a: Guest,
    b: Guest,
    host_b: str,
    whoami: str,
    router_ip: str,
    vpcs: list[str],
) -> None:
    """A second VPC with the same CIDR, its router also on host A: a namespace standing in
    for its guest on host B, with B's guest's very address, reaches its own router over
    VXLAN and leaves through its own SNAT address, and nothing of the first VPC."""
    vpc = http.post("/v1/vpcs", json={"name": "twin", "cidr": "10.90.0.0/16"})
    vpcs.append(vpc.json()["vpc"]["id"])
    twin = _op_done(http, vpc)["vpc"]["id"]
    body = {"vpc_id": twin, "name": "web", "cidr": "10.90.1.0/24"}
    subnet = _op_done(http, http.post("/v1/subnets", json=body))["subnet"]
    # A NIC of the twin on B's VM puts the twin's bridge and VXLAN on host B.
    nic = http.post("/v1/nics", json={"subnet_id": subnet["id"], "private_ip": "10.90.1.200"})
    assert nic.status_code == 201, nic.text
    attach = f"/v1/nics/{nic.json()['id']}/actions/attach"
    _op_done(http, http.post(attach, json={"vm_id": on_b["id"]}))
    links = json.loads(_run("ip", "-n", host_b, "-j", "-d", "link", "show"))
    bridge = next(
        link["ifname"]
        for link in links
        if twin in (link.get("ifalias") or "") and '"kind":"net"' in link["ifalias"]
    )
    with host_namespace("g") as guest:
        outer = f"altg{secrets.token_hex(3)}"
        _run("ip", "-n", host_b, "link", "add", outer, "type", "veth", "peer", "name", "eth0",
             "netns", guest)  # fmt: skip
        _run("ip", "-n", host_b, "link", "set", outer, "master", bridge, "mtu", "1450", "up")
        for argv in (
            ("addr", "add", f"{b.ip}/24", "dev", "eth0"),
            ("link", "set", "eth0", "mtu", "1450", "up"),
            ("route", "add", "default", "via", subnet["gateway_ip"]),
        ):
            _run("ip", "-n", guest, *argv)

        def ping(address: str) -> bool:
            argv = ["ip", "netns", "exec", guest, "ping", "-c", "1", "-W", "1", address]
            return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

        wait_for(lambda: ping(subnet["gateway_ip"]), 15, "the twin's router from host B")
        assert not ping(a.ip)  # the first VPC's guest on host A
        twin_ip = _curl(guest, whoami).stdout.strip()
        assert twin_ip.startswith("203.0.113.") and twin_ip not in (router_ip, "203.0.113.1")
        # The first VPC is unchanged: B's guest (same address) still answers A's guest.
        assert a.get(f"http://{b.ip}/") == on_b["name"]
