"""A real guest on the VPC: QEMU opens the network driver's tap, the router's dnsmasq gives
the guest its reserved address, MTU and metadata route, and the guest reads its metadata.

The host's data plane lives in a namespace made here; QEMU must open the tap in that
namespace, so the compute driver runs in a thread that entered it (its own event loop;
child processes inherit the thread's namespace). Every QEMU under the test's directory
is killed by PID at the end, the router deleted and the namespace removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import pytest

import tests.contract.conftest  # noqa: F401 (loaded before qemu_harness, which it imports)
from altostack.drivers.compute.base import NicSpec, VmSpec
from altostack.drivers.network.base import (
    DhcpHost,
    InstanceMetadata,
    NetworkSpec,
    PortSpec,
    RouterSpec,
    RouterSubnet,
    RuleSpec,
    SecurityGroupSpec,
)
from tests.contract.qemu_harness import (
    GUEST_TIMEOUT,
    READY_MARK,
    SerialConsole,
    guest_image,
    kill_qemus_under,
)
from tests.support.netns import host_namespace

pytestmark = [pytest.mark.real, pytest.mark.slow]

MAC, IP = "02:00:00:00:0e:01", "10.60.1.21"


async def _guest_flow(root: Path, image: Path, spec: VmSpec) -> dict[str, str]:
    """Boot the VM (inside the host namespace), then ask the guest what it got."""
    from altostack.drivers.compute.local_images import LocalImageCache
    from altostack.drivers.compute.qemu import QemuComputeDriver
    from altostack.drivers.compute.qemu_seed import read_seed

    images = LocalImageCache(root / "images")
    images.add(spec.image_id, image)
    compute = QemuComputeDriver(
        root / "host", images, forward_http=False, nic_backend="tap", hostname="tap-host"
    )
    try:
        await compute.ensure_vm(spec)
        deadline = time.monotonic() + GUEST_TIMEOUT
        while READY_MARK not in compute.console_output(spec.id):
            assert time.monotonic() < deadline, compute.console_output(spec.id)[-800:]
            await asyncio.sleep(0.2)
        ready = next(
            line for line in compute.console_output(spec.id).splitlines() if READY_MARK in line
        )
        paths = compute.paths(spec.id)
        password = read_seed(paths.seed_json).password_of("root")
        assert password is not None
        async with SerialConsole.login(paths, "root", password) as sh:
            mtu = await sh.run("cat /sys/class/net/eth0/mtu")
            route = await sh.run("ip route get 169.254.169.254")
            base = "http://169.254.169.254"
            instance = await sh.run(f"wget -qO- {base}/latest/meta-data/instance-id")
            keys = await sh.run(f"wget -qO- {base}/openstack/latest/meta_data.json")
        return {"ready": ready, "mtu": mtu, "route": route, "instance": instance, "keys": keys}
    finally:
        with contextlib.suppress(Exception):
            await compute.delete_vm(spec.id)


async def test_a_qemu_guest_on_a_tap_gets_dhcp_and_metadata(tmp_path: Path) -> None:
    from altostack.drivers.network import linux_netns
    from altostack.drivers.network.linux import LinuxNetworkDriver

    image = guest_image()
    with host_namespace("q") as host:
        lo_up = ["ip", "-n", host, "link", "set", "lo", "up"]
        await asyncio.to_thread(subprocess.run, lo_up, check=True, timeout=10)
        net = LinuxNetworkDriver(state_dir=tmp_path / "net", netns=host)
        try:
            await net.ensure_network(NetworkSpec("vpc-q", 7501, "10.60.0.0/16"))
            group = SecurityGroupSpec("sg-open", (RuleSpec("ingress"), RuleSpec("egress")))
            await net.ensure_security_group(group)
            port = PortSpec("nic-q1", "vpc-q", MAC, IP, (group.id,), "tap")
            await net.ensure_port(port)
            await net.ensure_router(
                RouterSpec(
                    "vpc-q",
                    "vpc-q",
                    subnets=(RouterSubnet("subnet-q", "10.60.1.0/24", "10.60.1.1"),),
                    dhcp_hosts=(DhcpHost(MAC, IP, "tapvm"),),
                    instances=(InstanceMetadata(IP, "vm-tapq", "tapvm", ("ssh-ed25519 AAAAq q",)),),
                )
            )
            spec = VmSpec(
                id="vm-tapq",
                name="tapvm",
                generation=1,
                vcpus=1,
                memory_mib=128,
                root_disk_gib=1,
                image_id="img-alto-test",
                password="Initial-Pass-1",
                nics=(NicSpec(port.id, MAC, IP, "vpc-q"),),
            )
            root = tmp_path / "compute"
            try:
                seen = await linux_netns.run_in(
                    host, lambda: asyncio.run(_guest_flow(root, image, spec))
                )
            finally:
                kill_qemus_under(root)
        finally:
            for router in await net.list_routers():
                await net.delete_router(router.spec.id)
            await net.close()
    assert f"ip={IP}" in seen["ready"], seen
    assert seen["mtu"].strip() == "1450"
    assert "via 10.60.1.1" in seen["route"], seen["route"]
    assert seen["instance"].strip().splitlines()[-1] == "vm-tapq"  # (a long command wraps)
    assert "ssh-ed25519 AAAAq q" in seen["keys"]
