"""The simulated hypervisor: the host's VM table, which outlives any driver instance.

A real VM is a QEMU process that keeps running when the agent dies; here the equivalent is
a :class:`SimHypervisor` object shared by successive :class:`SimComputeDriver` instances.
Tests build a new driver over the same hypervisor to simulate an agent restart, and use the
hooks on this class to make things happen *inside* the guest or the host that no driver
call causes: the guest powering itself off, a crash, a guest ignoring ACPI.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from altostack.drivers.compute.base import (
    DEFAULT_USER,
    ConsoleEndpoint,
    DiskSpec,
    DiskStats,
    Gpu,
    StoppedBy,
    VmSpec,
    VmState,
    VmStats,
    VmStatus,
)
from altostack.drivers.errors import InsufficientResources, InvalidState, VmNotFound

SimState = VmState | Literal["creating"]

CONSOLE_LINES = 5000
"""How much serial console a sim VM keeps (a real log file grows; this one rolls)."""


@dataclass(frozen=True)
class SimHostConfig:
    """The simulated host's hardware; the defaults are a typical 2-socket server."""

    hostname: str = "sim-host"
    arch: str = "x86_64"
    cores: int = 64
    memory_mib: int = 256 * 1024
    disk_gib: int = 2048
    gpus: tuple[Gpu, ...] = ()
    console_host: str = "127.0.0.1"
    console_base_port: int = 5900


@dataclass
class SimGuest:
    """What the guest OS inside a sim VM would know, for tests to inspect."""

    hostname: str
    image_id: str
    passwords: dict[str, str] = field(default_factory=dict)
    ssh_keys: tuple[str, ...] = ()
    user_data: str | None = None
    boots: int = 0
    """How many times the guest OS booted (power-ons and reboots)."""
    installs: int = 1
    """How many root disks it has had (1 + reinstalls)."""
    last_shutdown: Literal["clean", "forced"] | None = None
    honours_acpi: bool = True


@dataclass
class SimVm:
    """One row of the hypervisor's VM table (internal to the sim)."""

    spec: VmSpec
    state: SimState
    generation: int
    vcpus: int
    memory_mib: int
    console_port: int
    guest: SimGuest
    started_at: datetime | None = None
    stopped_by: StoppedBy | None = None
    console_password: str | None = None
    booting: bool = False
    disks: list[DiskSpec] = field(default_factory=list)
    """Attached data disks."""
    root_layers: list[str] = field(default_factory=lambda: ["root.qcow2"])
    """The root disk's chain, base first: the last one takes the writes."""
    root_snapshots: dict[str, SimGuest] = field(default_factory=dict)
    """Root disk snapshots: the guest's installed state as each one kept it."""
    console_log: deque[str] = field(default_factory=lambda: deque(maxlen=CONSOLE_LINES))
    """The serial console, one line per item, across boots."""

    @property
    def holds_memory(self) -> bool:
        """Whether a QEMU process would exist (and hold memory and GPUs) for this VM."""
        if self.booting:
            return True
        if self.state == "creating":
            return self.spec.power_state == "running"
        return self.state in ("running", "paused")


class SimHypervisor:
    """The host: its hardware, its VMs, and hooks for events from inside the guests."""

    def __init__(
        self,
        config: SimHostConfig | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config or SimHostConfig()
        self.clock = clock or (lambda: datetime.now(UTC))
        self._vms: dict[str, SimVm] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._next_port = self.config.console_base_port

    # -- table ---------------------------------------------------------------------------

    @asynccontextmanager
    async def lock(self, vm_id: str) -> AsyncIterator[None]:
        """Serialise operations on one VM (a real backend uses a lock file per VM)."""
        lock = self._locks.setdefault(vm_id, asyncio.Lock())
        async with lock:
            yield

    def find(self, vm_id: str) -> SimVm | None:
        """The VM, hiding one whose creation has not finished."""
        vm = self._vms.get(vm_id)
        return None if vm is None or vm.state == "creating" else vm

    def require(self, vm_id: str) -> SimVm:
        vm = self.find(vm_id)
        if vm is None:
            raise VmNotFound(vm_id)
        return vm

    def ids(self) -> set[str]:
        """Every VM id, including ones being created or received."""
        return set(self._vms)

    def incoming(self, vm_id: str) -> SimVm:
        """A VM being received by a migration (hidden until it is finished)."""
        vm = self._vms.get(vm_id)
        if vm is None or vm.state != "creating":
            raise VmNotFound(vm_id)
        return vm

    def all(self) -> Iterator[SimVm]:
        return (vm for _, vm in sorted(self._vms.items()) if vm.state != "creating")

    def begin_create(self, spec: VmSpec) -> SimVm:
        """Reserve the resources for a new VM and add it, hidden, as ``creating``."""
        self.check_disk(spec.root_disk_gib)
        if spec.power_state == "running":
            self.check_can_run(spec.id, spec.memory_mib, spec.gpus)
        vm = SimVm(
            spec=spec,
            state="creating",
            generation=0,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            console_port=self._allocate_port(),
            guest=guest_from_spec(spec),
        )
        self._vms[spec.id] = vm
        return vm

    def remove(self, vm_id: str) -> None:
        self._vms.pop(vm_id, None)

    def status(self, vm: SimVm, *, console: bool = True) -> VmStatus:
        """The VM as a driver reports it (``console=False``: a host without consoles)."""
        live = vm.state in ("running", "paused")
        endpoint = ConsoleEndpoint(self.config.console_host, vm.console_port)
        assert vm.state != "creating"
        return VmStatus(
            id=vm.spec.id,
            state=vm.state,
            generation=vm.generation,
            vcpus=vm.vcpus,
            memory_mib=vm.memory_mib,
            started_at=vm.started_at if live else None,
            stopped_by=vm.stopped_by if vm.state == "stopped" else None,
            console=endpoint if live and console else None,
            image_id=vm.guest.image_id,
            accel="sim",
        )

    # -- what a guest would print and use ----------------------------------------------------

    def log_boot(self, vm: SimVm) -> None:
        """The serial console of one boot, shaped like the project's test image's."""
        ip = vm.spec.nics[0].ip if vm.spec.nics else "none"
        up = self.clock().strftime("%H:%M:%S")
        vm.console_log.extend(
            [
                "SeaBIOS (version altostack-sim)",
                "Booting from Hard Disk...",
                "SYSLINUX 6.04 altostack-sim",
                "[    0.000000] Linux version 6.1.0-sim (sim@altostack) #1 SMP",
                f"[    0.000000] Command line: console=ttyS0 root=LABEL=alto-root ({up})",
                f"[    0.180000] smpboot: Allowing {vm.vcpus} CPUs",
                f"[    0.210000] Memory: {vm.memory_mib * 1024}K available",
                f"[    0.420000] virtio_blk virtio1: [vda] {vm.spec.root_disk_gib * 2097152} "
                "512-byte logical blocks",
                "ALTO-GUEST-BOOT",
                f"ALTO-GUEST-INFO boot={vm.guest.boots} instance={vm.spec.id}-{vm.guest.installs}"
                f" seed=/dev/vdb keys={len(vm.guest.ssh_keys)}",
                f"ALTO-GUEST-READY ip={ip} hostname={vm.guest.hostname}",
                "",
                f"{vm.guest.hostname} login: ",
            ]
        )

    def log_shutdown(self, vm: SimVm, how: str) -> None:
        if how == "clean":
            vm.console_log.extend(["The system is going down NOW!", "reboot: Power down"])

    def stats(self, vm: SimVm) -> VmStats:
        """Plausible counters that grow with the time the VM has been running."""
        now = self.clock()
        started = vm.started_at or now
        up = max((now - started).total_seconds(), 0.0)
        mib = 1024 * 1024
        boot_cpu, idle = 3.0, 0.02  # CPU-seconds of a boot; share of a vCPU while idle
        return VmStats(
            id=vm.spec.id,
            collected_at=now,
            started_at=vm.started_at,
            cpu_time_ns=int((boot_cpu + up * idle * vm.vcpus) * 1e9),
            memory_rss_bytes=int(vm.memory_mib * mib * min(1.0, 0.35 + up / 3600)),
            memory_mib=vm.memory_mib,
            vcpus=vm.vcpus,
            disks=(
                DiskStats(
                    "root-disk",
                    read_bytes=18 * mib + int(up * 512),
                    write_bytes=64 * 1024 + int(up * 2048),
                    read_ops=900 + int(up / 4),
                    write_ops=12 + int(up / 2),
                ),
                DiskStats("seed-disk", 358400, 0, 30, 0),
            ),
        )

    def _allocate_port(self) -> int:
        used = {vm.console_port for vm in self._vms.values()}
        while self._next_port in used:
            self._next_port += 1
        port = self._next_port
        self._next_port += 1
        return port

    # -- resources -----------------------------------------------------------------------

    def free_memory_mib(self, *, excluding: str | None = None) -> int:
        used = sum(
            vm.memory_mib
            for vm_id, vm in self._vms.items()
            if vm.holds_memory and vm_id != excluding
        )
        return self.config.memory_mib - used

    def free_disk_gib(self, *, excluding: str | None = None) -> int:
        used = sum(vm.spec.root_disk_gib for i, vm in self._vms.items() if i != excluding)
        return self.config.disk_gib - used

    def check_disk(self, gib: int, *, excluding: str | None = None) -> None:
        free = self.free_disk_gib(excluding=excluding)
        if gib > free:
            raise InsufficientResources(f"root disk of {gib} GiB exceeds {free} GiB free disk")

    def check_can_run(self, vm_id: str, memory_mib: int, gpus: tuple[str, ...]) -> None:
        """Memory is never overcommitted and a GPU serves one running VM at a time."""
        free = self.free_memory_mib(excluding=vm_id)
        if memory_mib > free:
            raise InsufficientResources(
                f"{memory_mib} MiB of memory requested, {free} MiB free on "
                f"{self.config.hostname} (memory is not overcommitted)"
            )
        known = {gpu.pci_address for gpu in self.config.gpus}
        busy = {
            addr
            for i, vm in self._vms.items()
            if vm.holds_memory and i != vm_id
            for addr in vm.spec.gpus
        }
        for addr in gpus:
            if addr not in known:
                raise InsufficientResources(f"no GPU at {addr} on {self.config.hostname}")
            if addr in busy:
                raise InsufficientResources(f"GPU {addr} is in use by another VM")

    # -- events from inside the guest or the host (test hooks) -----------------------------

    def guest_shutdown(self, vm_id: str) -> None:
        """The guest powers itself off (``poweroff`` inside): stopped, ``stopped_by="guest"``."""
        vm = self.require_state(vm_id, "running")
        vm.state, vm.stopped_by, vm.started_at = "stopped", "guest", None
        vm.guest.last_shutdown = "clean"
        self.log_shutdown(vm, "clean")

    def crash(self, vm_id: str) -> None:
        """The QEMU process dies (or the guest panics): state ``crashed``."""
        vm = self.require_state(vm_id, "running", "paused")
        vm.state, vm.stopped_by, vm.started_at = "crashed", None, None
        vm.guest.last_shutdown = "forced"

    def ignore_acpi(self, vm_id: str, ignore: bool = True) -> None:
        """Make the guest ignore ACPI power buttons, so graceful stops time out."""
        self.require(vm_id).guest.honours_acpi = not ignore

    def guest(self, vm_id: str) -> SimGuest:
        """A copy of what the guest knows (passwords, boots, installs...)."""
        return dataclasses.replace(self.require(vm_id).guest)

    def console_password(self, vm_id: str) -> str | None:
        return self.require(vm_id).console_password

    def require_state(self, vm_id: str, *states: str) -> SimVm:
        """The VM, if it is in one of ``states``; else ``InvalidState`` naming its state."""
        vm = self.require(vm_id)
        if vm.state not in states:
            raise InvalidState(vm.state, states, resource_id=vm_id)
        return vm


def guest_from_spec(spec: VmSpec) -> SimGuest:
    """A freshly installed guest, as cloud-init would configure it from the config drive."""
    return SimGuest(
        hostname=spec.guest_hostname,
        image_id=spec.image_id,
        passwords={DEFAULT_USER: spec.password} if spec.password else {},
        ssh_keys=spec.ssh_keys,
        user_data=spec.user_data,
    )
