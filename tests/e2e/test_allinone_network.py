"""The QEMU all-in-one with the linux data plane, through the API, with a real guest.

A VPC and subnet, a VM on it (its NIC a tap on the VPC bridge): the guest takes its
reserved address by DHCP from the VPC router's dnsmasq and reads its metadata; an elastic
IP makes its HTTP server reachable from the lab's "internet" namespace, and unbinding
stops that; an elastic NIC attached to the running guest appears in it, and leaves. The
lab namespace and bridge have names of their own; whatever the test made (routers,
bridges, taps, the host's nftables table, the lab, QEMU) is removed at the end, also on
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.api.app import create_app
from altostack.bootstrap import build
from altostack.drivers.network.lab import ExternalLab, remove_external_lab
from altostack.drivers.network.linux import LinuxNetworkDriver
from tests.conftest import ADMIN_PASSWORD, login, make_settings
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import GUEST_TIMEOUT, SerialConsole, guest_image, kill_qemus_under
from tests.support.netns import host_namespace

pytestmark = [pytest.mark.slow, pytest.mark.real]
PASSWORD = "Net-Guest-42"


@pytest.fixture
def db_url(sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    target = tmp_path / "alto.db"
    shutil.copy(sqlite_template, target)
    yield f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="alto-net-"))  # short: QEMU's socket paths
    path.chmod(0o711)
    try:
        yield path
    finally:
        kill_qemus_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def cloud(db_url: str, root: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str, Any]]:
    with host_namespace("probe"):  # skips (fails under ALTO_REQUIRE_REAL) without namespaces
        pass
    if _nft_table_exists():
        pytest.skip("the host already has an 'alto' nftables table (a cloud runs here)")
    tag = secrets.token_hex(2)
    lab = ExternalLab(namespace=f"alto-t-ext{tag}", bridge=f"altx{tag}")
    settings = make_settings(
        db_url, root, data_dir=root / "data", driver="qemu", seed=True,
        default_image=guest_image(), network_driver="linux", lab_namespace=lab.namespace,
        external_bridge=lab.bridge, agent_timeout_seconds=30.0, heartbeat_interval_seconds=1.0,
    )  # fmt: skip
    c = build(settings, migrate=False)
    try:
        await c.start()
        app = create_app(c, manage_lifecycle=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://alto.test") as client:
            client.headers.update(await login(client, "admin", ADMIN_PASSWORD))
            yield client, lab.namespace, c
    finally:
        with contextlib.suppress(Exception):
            await c.stop()
        kill_qemus_under(root)
        await _tear_down_data_plane(root / "data" / "network", lab)


async def _tear_down_data_plane(state_dir: Path, lab: ExternalLab) -> None:
    """Everything the cloud made in this namespace, whatever state the test left."""
    net = LinuxNetworkDriver(state_dir=state_dir, external_bridge=lab.bridge)
    try:
        for router in await net.list_routers():
            with contextlib.suppress(Exception):
                await net.delete_router(router.spec.id)
        for port in await net.list_ports():
            with contextlib.suppress(Exception):
                await net.delete_port(port.id)
        for network in await net.list_networks():
            with contextlib.suppress(Exception):
                await net.delete_network(network.id)
    finally:
        await net.close()
        with contextlib.suppress(Exception):
            await remove_external_lab(lab)
        for family in ("bridge", "inet"):
            argv = ["nft", "delete", "table", family, "alto"]
            await asyncio.to_thread(subprocess.run, argv, capture_output=True)


def _nft_table_exists() -> bool:
    found = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    return any(line.split()[-1:] == ["alto"] for line in found.stdout.splitlines())


async def _op(client: httpx.AsyncClient, reply: httpx.Response) -> dict[str, Any]:
    assert reply.status_code == 202, reply.text
    op = reply.json()["operation"]
    deadline = time.monotonic() + GUEST_TIMEOUT
    while time.monotonic() < deadline:
        body = (await client.get(f"/v1/operations/{op['id']}?wait=5")).json()
        if body["state"] in ("succeeded", "failed"):
            assert body["state"] == "succeeded", body
            return dict(reply.json())
    raise AssertionError(f"operation {op['id']} did not finish")


def _from_internet(namespace: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "curl", "-sS", "--max-time", "3", url],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_a_guest_on_a_vpc_gets_dhcp_metadata_and_an_elastic_ip(cloud) -> None:
    client, internet, c = cloud
    body = {"name": "v", "cidr": "10.80.0.0/16"}
    vpc = (await _op(client, await client.post("/v1/vpcs", json=body)))["vpc"]
    body = {"vpc_id": vpc["id"], "name": "web", "cidr": "10.80.1.0/24"}
    subnet = (await _op(client, await client.post("/v1/subnets", json=body)))["subnet"]
    groups = (await client.get(f"/v1/security-groups?vpc_id={vpc['id']}")).json()["items"]
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 80, "port_max": 80,
            "remote_cidr": "0.0.0.0/0"}  # fmt: skip
    r = await client.post(f"/v1/security-groups/{groups[0]['id']}/rules", json=rule)
    assert r.status_code == 201, r.text

    image = (await client.get("/v1/images?name=alto-test")).json()["items"][0]
    body = {"name": "web1", "instance_type": "c1.small", "image_id": image["id"],
            "subnet_id": subnet["id"], "password": PASSWORD}  # fmt: skip
    vm = (await _op(client, await client.post("/v1/vms", json=body)))["vm"]
    (nic,) = (await client.get(f"/v1/nics?vm_id={vm['id']}")).json()["items"]

    deadline = time.monotonic() + GUEST_TIMEOUT
    while True:
        out = (await client.get(f"/v1/vms/{vm['id']}/console-output")).json()["output"]
        if "ALTO-GUEST-READY" in out:
            break
        assert time.monotonic() < deadline, out[-800:]
        await asyncio.sleep(0.5)
    assert f"ALTO-GUEST-READY ip={nic['private_ip']} " in out  # the reservation, over the VPC

    # The EIP: the guest's HTTP server answers the internet namespace, and only while bound.
    eip = (await _op(client, await client.post("/v1/eips", json={})))["eip"]
    url = f"http://{eip['address']}/"
    assert _from_internet(internet, url).returncode != 0  # not bound: nothing answers
    await _op(client, await client.post(f"/v1/eips/{eip['id']}/actions/bind",
                                        json={"vm_id": vm["id"]}))  # fmt: skip
    for _ in range(20):
        answer = await asyncio.to_thread(_from_internet, internet, url)
        if answer.returncode == 0:
            break
        await asyncio.sleep(0.5)
    assert answer.stdout.strip() == "web1", answer

    # The metadata service knows the guest by its address in this VPC.
    paths = c.agents[0].compute.paths(vm["id"])
    async with SerialConsole.login(paths, "root", PASSWORD) as sh:
        base = "http://169.254.169.254/latest/meta-data"
        got = await sh.run(f"wget -qO- {base}/instance-id; echo; wget -qO- {base}/public-ipv4")
    assert vm["id"] in got and eip["address"] in got, got

    # An elastic NIC attached to the running VM is hot-plugged: the guest sees its MAC;
    # detached, it goes away again.
    extra = (await client.post("/v1/nics", json={"subnet_id": subnet["id"]})).json()
    await _op(client, await client.post(f"/v1/nics/{extra['id']}/actions/attach",
                                        json={"vm_id": vm["id"]}))  # fmt: skip
    macs = "cat /sys/class/net/*/address"
    async with SerialConsole.login(paths, "root", PASSWORD) as sh:
        assert extra["mac"] in await sh.run(macs)
    await _op(client, await client.post(f"/v1/nics/{extra['id']}/actions/detach"))
    async with SerialConsole.login(paths, "root", PASSWORD) as sh:
        seen = await sh.run(macs)
    assert extra["mac"] not in seen and nic["mac"] in seen, seen

    r = await client.post(f"/v1/eips/{eip['id']}/actions/unbind")
    await _op(client, r)
    for _ in range(20):
        if (await asyncio.to_thread(_from_internet, internet, url)).returncode != 0:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the guest still answers on the unbound EIP")
