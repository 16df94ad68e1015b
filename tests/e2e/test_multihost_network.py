"""Two QEMU hosts as network namespaces, each running ``alto agent`` with the linux data
plane, and the control plane in between: one VPC across both hosts, real guests.

Layout (all made here, all removed at the end, also on failure):

- an underlay bridge in this namespace with the control plane's address (``alto up`` and
  NATS listen there, nowhere else) and a veth into each host namespace;
- host A is the network host: the VPC router and the lab's external network live there,
  with the "internet" namespace on it;
- one guest per host (a hard anti-affinity group places them apart), both in one subnet.

Proven with real packets: the guests take their reservations by DHCP from the router on
host A (host B's guest over VXLAN), reach each other across the hosts, and the guest on
host B answers the internet namespace through an elastic IP (internet → router on A →
VXLAN → B), and only while it is bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.drivers.compute.qemu_cmdline import VmPaths
from altostack.drivers.network.lab import ExternalLab, ensure_external_lab, remove_external_lab
from altostack.drivers.network.linux import LinuxNetworkDriver
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import GUEST_TIMEOUT, SerialConsole, guest_image, kill_qemus_under
from tests.support.alto_server import ALTO, ROOT, AltoServer, server_env
from tests.support.nats import running_nats
from tests.support.netns import host_namespace

pytestmark = [pytest.mark.slow, pytest.mark.real]
READY = re.compile(r"^ALTO-GUEST-READY ip=(\S+) hostname=(\S+)", re.MULTILINE)
PASSWORD = "Multi-Host-7"


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


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

    op = _wait(finished, GUEST_TIMEOUT, f"operation {op_id}")
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
            image = http.post("/v1/images", json={"name": "guest"}).json()
            r = http.put(
                f"/v1/images/{image['id']}/file",
                content=image_file.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 200, r.text
            cluster = http.get("/v1/clusters").json()["items"][0]
            join = http.post(f"/v1/clusters/{cluster['id']}/actions/join-token").json()
            for name, namespace, address in (("mh-a", host_a, 2), ("mh-b", host_b, 3)):
                extra = {
                    "ALTO_TOKEN": token,
                    "ALTO_NETWORK_DRIVER": "linux",
                    "ALTO_UNDERLAY_IP": f"{net}.{address}",
                    "ALTO_QEMU_RUN_AS": "",
                }
                if name == "mh-a":
                    extra |= {"ALTO_NETWORK_HOST": "1", "ALTO_EXTERNAL_BRIDGE": lab.bridge}
                cmd = [str(ALTO), "agent", "--netns", namespace]
                cmd += ["--join", server.url, "--token", join["join_token"], "--hostname", name]
                cmd += ["--driver", "qemu", "--heartbeat", "1", "--state-dir", str(root / name)]
                with (root / f"{name}.log").open("wb") as out:
                    agents.append(
                        subprocess.Popen(
                            cmd,
                            env={**env, **extra},
                            cwd=ROOT,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            _wait(lambda: len(http.get("/v1/hosts?state=up").json()["items"]) == 2, 60, "joins")
            _check_vpc_across_hosts(http, root, lab.namespace)
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
            asyncio.run(_remove_routers(root / "mh-a" / "network", host_a, lab))
            shutil.rmtree(root, ignore_errors=True)


async def _remove_routers(state_dir: Path, host: str, lab: ExternalLab) -> None:
    """The router namespaces (named globally) and the lab; the rest dies with the hosts."""
    routers = LinuxNetworkDriver(state_dir=state_dir, netns=host)
    with contextlib.suppress(Exception):
        for router in await routers.list_routers():
            await routers.delete_router(router.spec.id)
    await routers.close()
    with contextlib.suppress(Exception):
        await remove_external_lab(lab)


def _check_vpc_across_hosts(http: httpx.Client, root: Path, internet: str) -> None:
    vpc = _op_done(http, http.post("/v1/vpcs", json={"name": "mh", "cidr": "10.90.0.0/16"}))
    vpc_id = vpc["vpc"]["id"]
    body = {"vpc_id": vpc_id, "name": "web", "cidr": "10.90.1.0/24"}
    subnet = _op_done(http, http.post("/v1/subnets", json=body))["subnet"]
    group = http.get(f"/v1/security-groups?vpc_id={vpc_id}").json()["items"][0]
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 80,
            "remote_cidr": "0.0.0.0/0"}  # fmt: skip
    assert http.post(f"/v1/security-groups/{group['id']}/rules", json=rule).status_code == 201
    body = {"name": "apart", "policy": "anti-affinity", "mode": "hard"}
    placement = http.post("/v1/placement-groups", json=body).json()
    image = http.get("/v1/images?name=guest").json()["items"][0]
    vms = []
    for name in ("mh1", "mh2"):
        body = {"name": name, "instance_type": "c1.small", "image_id": image["id"],
                "subnet_id": subnet["id"], "password": PASSWORD,
                "placement_group_id": placement["id"]}  # fmt: skip
        vms.append(http.post("/v1/vms", json=body))
    vms = [_op_done(http, r)["vm"] for r in vms]
    hosts = {h["id"]: h["hostname"] for h in http.get("/v1/hosts").json()["items"]}
    placed = {vm["name"]: hosts[http.get(f"/v1/vms/{vm['id']}").json()["host_id"]] for vm in vms}
    assert placed == {"mh1": "mh-a", "mh2": "mh-b"} or placed == {"mh1": "mh-b", "mh2": "mh-a"}
    ips = {}
    for vm in vms:
        (nic,) = http.get(f"/v1/nics?vm_id={vm['id']}").json()["items"]

        def ready(vm_id: str = vm["id"]) -> re.Match[str] | None:
            out = http.get(f"/v1/vms/{vm_id}/console-output?lines=200").json()["output"]
            return READY.search(out)

        found = _wait(ready, GUEST_TIMEOUT, f"{vm['name']} ready")
        assert found.group(1) == nic["private_ip"], found.group(0)  # DHCP, on either host
        ips[vm["name"]] = nic["private_ip"]

    # Guest to guest across the hosts (VXLAN), from the guest on host A.
    on_a = next(vm for vm in vms if placed[vm["name"]] == "mh-a")
    other = next(vm for vm in vms if vm is not on_a)
    paths = VmPaths(root / "mh-a" / "vms" / on_a["id"])

    async def ask() -> str:
        async with SerialConsole.login(paths, "root", PASSWORD) as sh:
            return await sh.run(f"wget -qO- http://{ips[other['name']]}/")

    assert asyncio.run(ask()).strip().splitlines()[-1] == other["name"]

    # The guest on host B behind an EIP: internet → router on A → VXLAN → B.
    on_b = other
    eip = _op_done(http, http.post("/v1/eips", json={}))["eip"]
    _op_done(http, http.post(f"/v1/eips/{eip['id']}/actions/bind", json={"vm_id": on_b["id"]}))
    url = f"http://{eip['address']}/"
    answer = _wait(lambda: _curl(internet, url).stdout.strip(), 15, "the EIP answers")
    assert answer == on_b["name"]
    _op_done(http, http.post(f"/v1/eips/{eip['id']}/actions/unbind"))
    _wait(lambda: _curl(internet, url).returncode != 0, 15, "the unbound EIP to go quiet")
