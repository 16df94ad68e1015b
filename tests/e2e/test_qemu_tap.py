"""A real guest wired to a tap on a Linux bridge, as the SDN wires VM NICs.

The network driver makes the tap (persistent, on the VPC's bridge) and the compute
driver only opens it; here the test plays the network driver with a bridge and tap of
its own, and a namespace on the same bridge plays the VPC's router: it serves DHCP
(dnsmasq, a static reservation with the MTU) and reaches the guest's HTTP server. Every
link is removed and every process ended by PID afterwards, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from altostack.drivers.compute.base import NicSpec, VmSpec
from altostack.drivers.compute.local_images import LocalImageCache
from altostack.drivers.compute.qemu import QemuComputeDriver
from altostack.drivers.network.base import device_name
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import GUEST_TIMEOUT, SerialConsole, guest_image, kill_qemus_under
from tests.e2e.test_qemu_guest import _wait_ready
from tests.support.netns import host_namespace

pytestmark = [pytest.mark.slow, pytest.mark.real]


def tap_name(port_id: str) -> str:
    return device_name("tap", port_id)


GUEST_IP, ROUTER_IP, MAC = "10.77.0.42", "10.77.0.1", "52:54:00:77:00:42"


@pytest.fixture
async def qemu_driver() -> AsyncIterator[QemuComputeDriver]:
    root = Path(tempfile.mkdtemp(prefix="alto-qemu-tap-"))
    try:
        images = LocalImageCache(root / "images")
        images.add("img-test", guest_image())
        yield QemuComputeDriver(
            root / "state", images, hostname="tap-host", nic_backend="tap", forward_http=False
        )
    finally:
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _bridge_with_tap(namespace: str, tap: str) -> Iterator[str]:
    """A bridge in this namespace with ``tap`` and a veth whose far end is in ``namespace``."""
    tag = secrets.token_hex(3)
    bridge, veth, peer = f"altbr{tag}", f"altv{tag}", f"altp{tag}"
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("tuntap", "add", "dev", tap, "mode", "tap")
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        for name in (tap, veth):
            _ip("link", "set", name, "master", bridge, "up")
        _ip("link", "set", bridge, "up")
        _ip("link", "set", peer, "netns", namespace)
        yield tap
    finally:
        for name in (veth, tap, bridge):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"ip {argv}: {result.stderr}"


def _ns(namespace: str, *argv: str) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def _router_leg(namespace: str) -> str:
    """The veth end in ``namespace``, addressed as the router of 10.77.0.0/24."""
    names = [n for n in _ns(namespace, "ls", "/sys/class/net").split() if n.startswith("altp")]
    assert len(names) == 1, names
    _ns(namespace, "ip", "addr", "add", f"{ROUTER_IP}/24", "dev", names[0])
    _ns(namespace, "ip", "link", "set", names[0], "up")
    _ns(namespace, "ip", "link", "set", "lo", "up")
    return names[0]


async def test_a_guest_on_a_tap_takes_dhcp_and_answers_on_the_bridge(
    qemu_driver: QemuComputeDriver, tmp_path: Path
) -> None:
    # The port's tap, named as the network driver names it: the driver opens that one.
    port_id = f"port-{secrets.token_hex(3)}"
    with host_namespace("tap") as namespace, _bridge_with_tap(namespace, tap_name(port_id)) as tap:
        leg = _router_leg(namespace)
        dnsmasq = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", namespace, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
                "--port=0", "--no-resolv", "--no-hosts", "--bind-interfaces",
                f"--interface={leg}", f"--pid-file={tmp_path / 'dnsmasq.pid'}",
                f"--dhcp-leasefile={tmp_path / 'leases'}",
                "--dhcp-range=10.77.0.0,static,255.255.255.0,1h",
                f"--dhcp-host={MAC},{GUEST_IP},tapguest", "--dhcp-option=option:mtu,1450",
                f"--dhcp-option=option:router,{ROUTER_IP}",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.sleep(0.2)
            assert dnsmasq.returncode is None, "dnsmasq did not start"
            nic = NicSpec(id=port_id, mac=MAC, ip=GUEST_IP, network_id="vpc-t")
            spec = VmSpec(
                id="vm-e2e-tap",
                name="tap guest",
                generation=1,
                vcpus=1,
                memory_mib=128,
                root_disk_gib=1,
                image_id="img-test",
                hostname="tapguest",
                password="Tap-secret-1",
                nics=(nic,),
            )
            assert (await qemu_driver.ensure_vm(spec)).state == "running"
            assert qemu_driver.http_endpoint(spec.id) is None  # no user-mode port forward
            ready = await _wait_ready(qemu_driver, spec.id)
            assert ready.groups() == (GUEST_IP, "tapguest")  # the reservation, over the tap
            # The guest answers on the bridge, from the router's side.
            page = await asyncio.to_thread(
                _ns, namespace, "curl", "-sS", "--max-time", "10", f"http://{GUEST_IP}/"
            )
            assert page.strip() == "tapguest"
            (counters,) = (await qemu_driver.vm_stats(spec.id)).nics  # the tap's, guest's view
            assert counters.name == tap and counters.rx_packets > 0 and counters.tx_bytes > 0
            paths = qemu_driver.paths(spec.id)
            async with SerialConsole.login(paths, "root", "Tap-secret-1") as shell:
                assert (await shell.run("cat /sys/class/net/eth0/mtu")).strip() == "1450"
                route = await shell.run("ip route show default")
                assert f"via {ROUTER_IP}" in route, route
            await qemu_driver.stop_vm(spec.id, timeout=GUEST_TIMEOUT, force=True)
        finally:
            if dnsmasq.returncode is None:
                dnsmasq.terminate()
            try:
                await asyncio.wait_for(dnsmasq.wait(), 10)
            except TimeoutError:
                dnsmasq.kill()
                await asyncio.wait_for(dnsmasq.wait(), 10)
