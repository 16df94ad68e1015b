"""The test image booted by the ``qemu`` driver: readiness, seed, network, console.

Real QEMU (TCG here): one guest per test, 128 MiB, killed by PID at the end whatever
happens. The pure parts (command line as data, accelerator detection, seed files) are
tested without QEMU at the bottom.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from altostack.drivers.compute.base import DiskSpec, NicSpec, VmSpec
from altostack.drivers.compute.local_images import LocalImageCache, sha256_file
from altostack.drivers.compute.qemu import QemuComputeDriver
from altostack.drivers.compute.qemu_cmdline import (
    HOTPLUG_BRIDGE,
    NicForward,
    PciPlacement,
    Props,
    QemuMachine,
    VmPaths,
    build_command,
    disk_device_args,
    nic_device_args,
    parse_machine_help,
)
from altostack.drivers.compute.qemu_host import detect_accel
from altostack.drivers.compute.qemu_hotadd import HotAddLimits
from altostack.drivers.compute.qemu_seed import SeedContent, guest_hostname
from altostack.drivers.errors import InvalidSpec, NotSupported
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import (
    BUILD_SCRIPT,
    GUEST_TIMEOUT,
    LoginFailed,
    SerialConsole,
    guest_image,
    kill_qemus_under,
)

READY = re.compile(r"^ALTO-GUEST-READY ip=(\S+) hostname=(\S+)", re.MULTILINE)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAltoE2eTestKeyOnlyForTheSeed e2e@alto"


@pytest.fixture
async def qemu_driver() -> AsyncIterator[QemuComputeDriver]:
    image = guest_image()
    root = Path(tempfile.mkdtemp(prefix="alto-qemu-e2e-"))
    try:
        images = LocalImageCache(root / "images")
        images.add("img-test", image)
        yield QemuComputeDriver(root / "state", images, hostname="e2e-host")
    finally:
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


async def _wait_ready(driver: QemuComputeDriver, vm_id: str, count: int = 1) -> re.Match[str]:
    deadline = time.monotonic() + GUEST_TIMEOUT
    while True:
        found = list(READY.finditer(driver.console_output(vm_id)))
        if len(found) >= count:
            return found[count - 1]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no readiness line: ...{driver.console_output(vm_id, 30)}")
        await asyncio.sleep(0.05)


def _http_get(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as response:
        return str(response.read().decode())


@pytest.mark.slow
@pytest.mark.real
async def test_the_guest_boots_to_readiness_and_honours_its_seed(
    qemu_driver: QemuComputeDriver,
) -> None:
    spec = VmSpec(
        id="vm-e2e-ready",
        name="E2E Guest",
        generation=1,
        vcpus=1,
        memory_mib=128,
        root_disk_gib=1,
        image_id="img-test",
        hostname="alto-e2e",
        password="It's-a-secret-1",
        ssh_keys=(KEY,),
        user_data="#!/bin/sh\necho user-data-ran-$((6*7))\n",
        nics=(NicSpec(id="port-1", mac="52:54:00:12:34:56", ip="10.20.30.40", network_id="n1"),),
    )
    started = time.monotonic()
    status = await qemu_driver.ensure_vm(spec)
    assert status.state == "running"
    ready = await _wait_ready(qemu_driver, spec.id)
    boot_s = time.monotonic() - started
    print(f"\nguest ready {boot_s:.2f}s after ensure_vm ({qemu_driver.accel})")

    assert ready.groups() == ("10.20.30.40", "alto-e2e")  # DHCP gave the spec's address
    console = qemu_driver.console_output(spec.id)
    assert "user-data-ran-42" in console
    assert "keys=1" in console
    # The guest's HTTP server answers its hostname, seen from the host.
    endpoint = qemu_driver.http_endpoint(spec.id)
    assert endpoint is not None
    assert (await asyncio.to_thread(_http_get, *endpoint)).strip() == "alto-e2e"

    paths = qemu_driver.paths(spec.id)
    async with SerialConsole.login(paths, "root", "It's-a-secret-1") as shell:
        assert (await shell.run("hostname")).strip() == "alto-e2e"
        assert (await shell.run("cat /root/.ssh/authorized_keys")).strip() == KEY
    with pytest.raises(LoginFailed):
        async with SerialConsole.login(paths, "root", "wrong-password"):
            pass

    # A new password reaches the running guest at its next boot.
    await qemu_driver.set_password(spec.id, "root", "Changed-2")
    await qemu_driver.reboot_vm(spec.id)
    await _wait_ready(qemu_driver, spec.id, count=2)
    async with SerialConsole.login(paths, "root", "Changed-2") as shell:
        assert "boot=2" in await shell.run("echo boot=$(cat /var/lib/alto/boots)")
    stopped = await qemu_driver.stop_vm(spec.id, timeout=GUEST_TIMEOUT)
    assert (stopped.state, stopped.stopped_by) == ("stopped", "api")
    assert "ACPI power button" in qemu_driver.console_output(spec.id, 20)


@pytest.mark.slow
@pytest.mark.real
async def test_console_output_and_console_endpoint(qemu_driver: QemuComputeDriver) -> None:
    spec = VmSpec(
        id="vm-e2e-console", name="console", generation=1, vcpus=1, memory_mib=128,
        root_disk_gib=1, image_id="img-test", password="Pw-1",
    )  # fmt: skip
    await qemu_driver.ensure_vm(spec)
    await _wait_ready(qemu_driver, spec.id)
    tail = qemu_driver.console_output(spec.id, lines=40)
    assert "ALTO-GUEST-READY ip=none hostname=console" in tail
    endpoint = await qemu_driver.console(spec.id)
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    try:
        banner = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    assert banner.startswith(b"RFB 003.")


@pytest.mark.slow
@pytest.mark.real
def test_the_image_is_cached_with_its_checksum() -> None:
    image = guest_image()
    digest, name = Path(f"{image}.sha256").read_text().split()
    assert (digest, name) == (sha256_file(image), image.name)
    built_at = image.stat().st_mtime_ns
    again = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=300, check=True
    )
    assert Path(again.stdout.strip()) == image
    assert image.stat().st_mtime_ns == built_at  # its inputs did not change: no rebuild


# -- pure parts --------------------------------------------------------------------------------


def _machine(tmp_path: Path, **changes: object) -> QemuMachine:
    base: dict[str, object] = {
        "vm_id": "vm-1",
        "paths": VmPaths(tmp_path / "vms" / "vm,1"),
        "vcpus": 2,
        "memory_mib": 256,
        "machine_type": "pc-i440fx-7.2",
        "accel": "tcg",
        "seed_iso": tmp_path / "seed-1.iso",
        "seed_node": "seed-file-1",
        "vnc_port": 5903,
    }
    base.update(changes)
    return QemuMachine(**base)  # type: ignore[arg-type]


def test_the_command_line_is_data(tmp_path: Path) -> None:
    cmd = build_command("qemu-system-x86_64", _machine(tmp_path))
    for flag in ("-no-user-config", "-nodefaults", "-daemonize", "-no-shutdown", "-S"):
        assert cmd.has(flag)
    assert cmd.values("-sandbox") == ["on,obsolete=deny,resourcecontrol=deny"]
    assert cmd.values("-accel") == [Props.of("tcg", tb_size=64)]
    assert cmd.values("-nic") == ["none"]
    assert cmd.values("-machine") == [Props.of("pc-i440fx-7.2")]
    assert [str(v) for v in cmd.values("-smp")] == ["2"]
    assert cmd.props("-device", "virtio-blk-pci")[0].get("drive") == "root"
    assert cmd.props("-device", "virtio-blk-pci")[1].get("drive") == "seed"
    seed = [p for p in cmd.props("-blockdev") if p.get("node-name") == "seed-file-1"]
    assert seed and seed[0].get("read-only") == "on"
    assert cmd.props("-vnc")[0].head == "127.0.0.1:3"
    # Values are escaped for QEMU: the comma in the directory name is doubled.
    assert any("vm,,1/root.qcow2" in arg for arg in cmd.argv)
    assert cmd.argv[0] == "qemu-system-x86_64"


def test_kvm_and_nics_change_the_command_line(tmp_path: Path) -> None:
    nic = NicSpec(id="p1", mac="52:54:00:00:00:01", ip="10.1.2.30", network_id="n1")
    cmd = build_command(
        "qemu-system-x86_64", _machine(tmp_path, accel="kvm", nics=(NicForward(nic, 8080),))
    )
    assert cmd.values("-accel") == [Props.of("kvm")] and cmd.values("-cpu") == ["host"]
    assert not cmd.has("-nic")
    netdev = cmd.props("-netdev", "user")[0]
    assert (netdev.get("restrict"), netdev.get("dhcpstart")) == ("on", "10.1.2.30")
    assert netdev.get("hostfwd") == "tcp:127.0.0.1:8080-:80"
    assert cmd.props("-device", "virtio-net-pci")[0].get("mac") == nic.mac


def test_a_tap_nic_opens_the_network_drivers_tap(tmp_path: Path) -> None:
    nic = NicSpec(id="nic-1", mac="02:00:00:00:00:01", ip="10.1.2.30", network_id="vpc-1")
    cmd = build_command(
        "qemu-system-x86_64", _machine(tmp_path, nics=(NicForward(nic, tap="tapx"),))
    )
    netdev = cmd.props("-netdev", "tap")[0]
    assert (netdev.get("id"), netdev.get("ifname")) == ("net-nic-1", "tapx")
    assert (netdev.get("script"), netdev.get("downscript")) == ("no", "no")
    assert cmd.props("-device", "virtio-net-pci")[0].get("netdev") == "net-nic-1"


def test_data_disks_slots_snapshots_and_incoming_change_the_command_line(
    tmp_path: Path,
) -> None:
    nic = NicSpec(id="p1", mac="52:54:00:00:00:01", ip="10.1.2.30", network_id="n1")
    disk = DiskSpec("disk-a", "/volumes/a.raw", "raw", read_only=True)
    machine = _machine(
        tmp_path,
        nics=(NicForward(nic, None),),
        disks=(disk,),
        slots={"nic-p1": 6, "disk-disk-a": 5},
        root_file=tmp_path / "vms" / "vm,1" / "root-s1.qcow2",
        incoming=True,
        run_as="alto-qemu",
    )
    cmd = build_command("qemu-system-x86_64", machine)
    assert cmd.values("-runas") == ["alto-qemu"]
    data = cmd.props("-device", "virtio-blk-pci")[2]
    assert (data.get("id"), data.get("drive"), data.get("addr")) == (
        "disk-disk-a",
        "disk-disk-a",
        "0x5",
    )
    nodes = {p.get("node-name"): p for p in cmd.props("-blockdev")}
    assert nodes["disk-disk-a"].get("driver") == "raw"
    assert nodes["disk-disk-a-file"].get("filename") == "/volumes/a.raw"
    assert nodes["disk-disk-a-file"].get("read-only") == "on"
    assert str(nodes["root-file"].get("filename")).endswith("root-s1.qcow2")
    device = cmd.props("-device", "virtio-net-pci")[0]
    assert (device.get("id"), device.get("netdev"), device.get("addr")) == (
        "nic-p1",
        "net-p1",
        "0x6",
    )
    assert cmd.props("-netdev", "user")[0].get("id") == "net-p1"
    # A migration destination waits for the state and starts by itself (no -S).
    assert cmd.values("-incoming") == ["defer"] and not cmd.has("-S")


def test_q35_puts_nics_and_data_disks_on_its_hot_plug_bridge(tmp_path: Path) -> None:
    """New VMs are q35: the slots NICs and data disks had on i440fx's root bus are on one
    PCIe-to-PCI bridge with ACPI hot-plug (``pcie.0`` takes no hot-plug); root and seed
    disks stay on ``pcie.0``. A VM recorded as i440fx keeps the root-bus layout."""
    nic = NicSpec(id="p1", mac="52:54:00:00:00:01", ip="10.1.2.30", network_id="n1")
    disk = DiskSpec("disk-a", "/volumes/a.raw", "raw")
    layout = {
        "nics": (NicForward(nic, None),),
        "disks": (disk,),
        "slots": {"nic-p1": 6, "disk-disk-a": 5},
    }
    q35 = build_command(
        "qemu-system-x86_64", _machine(tmp_path, machine_type="pc-q35-7.2", **layout)
    )
    bridge = q35.props("-device", "pcie-pci-bridge")
    assert [(b.get("id"), b.get("addr")) for b in bridge] == [(HOTPLUG_BRIDGE, "0x1e")]
    assert q35.values("-global") == ["ICH9-LPC.acpi-pci-hotplug-with-bridge-support=on"]
    blk = {p.get("id"): p for p in q35.props("-device", "virtio-blk-pci")}
    assert (blk["disk-disk-a"].get("bus"), blk["disk-disk-a"].get("addr")) == (
        HOTPLUG_BRIDGE,
        "0x5",
    )
    assert blk["root-disk"].get("bus") is None and blk["seed-disk"].get("bus") is None
    net = q35.props("-device", "virtio-net-pci")[0]
    assert (net.get("bus"), net.get("addr")) == (HOTPLUG_BRIDGE, "0x6")
    # The bridge is on the command line before the devices that sit on it.
    assert q35.argv.index(f"pcie-pci-bridge,id={HOTPLUG_BRIDGE},addr=0x1e") < q35.argv.index(
        f"virtio-blk-pci,id=disk-disk-a,drive=disk-disk-a,bus={HOTPLUG_BRIDGE},addr=0x5"
    )
    # Hot-plug over QMP addresses the same place.
    placement = PciPlacement.of("pc-q35-7.2", {"disk-disk-a": 5})
    assert disk_device_args(disk, placement) == {
        "driver": "virtio-blk-pci", "id": "disk-disk-a", "drive": "disk-disk-a",
        "bus": HOTPLUG_BRIDGE, "addr": "0x5",
    }  # fmt: skip
    assert nic_device_args(nic, PciPlacement.of("pc-q35-7.2", {}))["id"] == "nic-p1"
    assert "bus" not in nic_device_args(nic, PciPlacement.of("pc-q35-7.2", {}))

    pc = build_command("qemu-system-x86_64", _machine(tmp_path, **layout))
    assert not pc.props("-device", "pcie-pci-bridge") and not pc.has("-global")
    assert all(p.get("bus") is None for p in pc.props("-device", "virtio-blk-pci"))
    assert disk_device_args(disk, PciPlacement.of("pc-i440fx-7.2", {"disk-disk-a": 5})) == {
        "driver": "virtio-blk-pci", "id": "disk-disk-a", "drive": "disk-disk-a", "addr": "0x5",
    }  # fmt: skip


def test_machine_help_names_the_versioned_type() -> None:
    text = (
        "pc   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\n"
        "q35  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n"
    )
    assert parse_machine_help(text) == "pc-q35-7.2"  # new VMs are q35
    assert parse_machine_help(text, "pc") == "pc-i440fx-7.2"
    assert parse_machine_help("nothing here") is None


def test_kvm_only_with_hardware_virtualisation(tmp_path: Path) -> None:
    kvm, cpuinfo = tmp_path / "kvm", tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 hypervisor\n")
    assert detect_accel(kvm, cpuinfo) == "tcg"  # no /dev/kvm
    kvm.touch()
    assert detect_accel(kvm, cpuinfo) == "tcg"  # a /dev/kvm without vmx/svm (PVM)
    cpuinfo.write_text("processor : 0\nflags : fpu vmx sse2\n")
    assert detect_accel(kvm, cpuinfo) == "kvm"


def test_seed_files_quote_what_the_guest_reads() -> None:
    seed = SeedContent(
        instance_id="vm-1-1",
        hostname=guest_hostname("My VM_1"),
        passwords=(("root", "it's"),),
        ssh_keys=("ssh-rsa AAA x@y",),
    )
    files = seed.files()
    assert "local-hostname: 'my-vm-1'" in files["meta-data"]
    assert "  - 'ssh-rsa AAA x@y'" in files["meta-data"]
    assert "      password: 'it''s'" in files["vendor-data"]
    assert files["user-data"] == "#cloud-config\n"
    assert SeedContent.from_json(seed.to_json()) == seed
    assert "it's" not in repr(seed)
    with pytest.raises(InvalidSpec):
        SeedContent("i", "h", passwords=(("root", "two\nlines"),)).files()


@pytest.mark.slow
@pytest.mark.real
async def test_vcpus_and_memory_grow_live_when_the_host_allows(tmp_path: Path) -> None:
    images = LocalImageCache(tmp_path / "images")
    images.add("img-test", guest_image())
    driver = QemuComputeDriver(
        tmp_path / "state", images, hostname="hot-host", hot_add=HotAddLimits(4, 1024)
    )
    try:
        caps = driver.capabilities
        assert caps.live_resize_cpu and caps.live_resize_memory
        spec = VmSpec(
            id="vm-e2e-grow",
            name="grow",
            generation=1,
            vcpus=1,
            memory_mib=256,
            root_disk_gib=1,
            image_id="img-test",
            password="Grow-secret-1",
        )
        await driver.ensure_vm(spec)
        smp = driver.command(spec.id).values("-smp")
        assert smp == [Props.of(None, cpus=1, maxcpus=4)], smp
        await _wait_ready(driver, spec.id)
        with pytest.raises(NotSupported):  # not a whole number of 128 MiB blocks
            await driver.resize_vm(spec.id, 1, 300, live=True)
        with pytest.raises(NotSupported):  # beyond the room it started with
            await driver.resize_vm(spec.id, 5, 256, live=True)
        status = await driver.resize_vm(spec.id, 2, 512, live=True)
        assert (status.state, status.vcpus, status.memory_mib) == ("running", 2, 512)
        async with SerialConsole.login(driver.paths(spec.id), "root", "Grow-secret-1") as shell:
            # The guest kernel sees the new CPU and memory at once; onlining them is the
            # guest's policy (udev in cloud images), done by hand here.
            present = await shell.run("cat /sys/devices/system/cpu/present")
            assert "0-1" in present.split(), present
            await shell.run("echo 1 > /sys/devices/system/cpu/cpu1/online")
            await shell.run(
                "for m in /sys/devices/system/memory/memory*/state; do "
                'grep -q offline "$m" && echo online > "$m"; done'
            )
            online = await shell.run("echo cpus=$(grep -c ^processor /proc/cpuinfo)")
            assert "cpus=2" in online, online
            meminfo = await shell.run("grep MemTotal /proc/meminfo")
            found = re.search(r"MemTotal:\s+(\d+)", meminfo)
            assert found is not None, meminfo
            total_kib = int(found.group(1))
            assert total_kib > 400 * 1024, total_kib  # 256 MiB at boot + 256 MiB added
        # What was added is on the command line a migration destination would use.
        devices = driver.command(spec.id).props("-device")
        assert any(str(d.head).endswith("-cpu") for d in devices)
        assert [d.get("id") for d in devices if d.head == "pc-dimm"] == ["dimm0"]
        # A cold start folds the growth into the boot sizes.
        await driver.stop_vm(spec.id, timeout=GUEST_TIMEOUT, force=True)
        await driver.ensure_vm(replace(spec, vcpus=2, memory_mib=512, generation=2))
        cmd = driver.command(spec.id)
        assert cmd.values("-smp") == [Props.of(None, cpus=2, maxcpus=4)]
        assert not [d for d in cmd.props("-device") if d.head == "pc-dimm"]
    finally:
        kill_qemus_under(tmp_path)
