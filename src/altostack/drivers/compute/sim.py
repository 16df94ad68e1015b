"""The ``sim`` compute backend: VMs in memory, with real states, errors and timing.

It is what lets one process hold a 1,000-host cloud, and what unit tests run against, so it
must behave like the ``qemu`` backend in everything the control plane can observe: the same
states and transitions, the same typed errors, resources that run out, VMs that survive an
agent restart (they live in a :class:`SimHypervisor`, not in the driver), guests that shut
themselves down or crash. Delays come from :class:`SimTimings`; failures from a
:class:`FaultInjector`, checked at the same points a real backend can fail.

Simplifications (invisible through the interface): guest configuration (hostname, keys,
user data) is taken at create and reinstall time only; a soft reboot always succeeds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from altostack.drivers.compute.base import (
    DEVICE_ID,
    ComputeCapabilities,
    ComputeDriver,
    ConsoleEndpoint,
    DiskSnapshot,
    DiskSpec,
    HostInfo,
    IncomingMigration,
    MigrationManifest,
    MigrationMode,
    MigrationProgress,
    MigrationResult,
    NicSpec,
    ProgressCallback,
    VmSpec,
    VmStats,
    VmStatus,
    check_disk_spec,
)
from altostack.drivers.compute.sim_disk import SimRootDisks
from altostack.drivers.compute.sim_hypervisor import (
    SimGuest,
    SimHostConfig,
    SimHypervisor,
    SimVm,
    guest_from_spec,
)
from altostack.drivers.errors import (
    BackendFailure,
    InvalidSpec,
    InvalidState,
    NotSupported,
    VmNotFound,
)
from altostack.drivers.faults import FaultInjector
from altostack.drivers.storage.base import StorageDriver
from altostack.drivers.timings import SimTimings

__all__ = [
    "SIM_CAPABILITIES",
    "SimComputeDriver",
    "SimGuest",
    "SimHostConfig",
    "SimHypervisor",
]

SIM_CAPABILITIES = ComputeCapabilities(
    live_resize_cpu=True,
    live_resize_memory=True,
    live_migration=True,
    block_migration=True,
    cold_migration=True,
    root_snapshots=True,
    hot_plug_disk=True,
    hot_plug_nic=True,
    pause=True,
    console=True,
    live_disk_snapshot=True,
)
"""What the sim can do by default; pass ``ComputeCapabilities()`` to get a minimal host."""

Sleep = Callable[[float], Awaitable[None]]

_RECEIVING: dict[str, SimHypervisor] = {}
"""Sim hosts waiting for a migration, by the URI they gave out: the sim's network, so a
source can tell a target that is not (or no longer) receiving, as a real transfer would."""


class SimComputeDriver(ComputeDriver):
    """A compute driver over a :class:`SimHypervisor` (a new one unless given)."""

    def __init__(
        self,
        hypervisor: SimHypervisor | None = None,
        *,
        timings: SimTimings | None = None,
        faults: FaultInjector | None = None,
        capabilities: ComputeCapabilities = SIM_CAPABILITIES,
        sleep: Sleep = asyncio.sleep,
        storage: StorageDriver | None = None,
    ) -> None:
        self.hypervisor = hypervisor or SimHypervisor()
        # With a storage driver, root disks are real volumes in it (exportable as images).
        self.root_disk_storage = storage
        self.disks = SimRootDisks(storage) if storage is not None else None
        self.timings = timings or SimTimings()
        self.faults = faults or FaultInjector()
        self._capabilities = capabilities
        self._sleep = sleep

    @property
    def capabilities(self) -> ComputeCapabilities:
        return self._capabilities

    async def host_info(self) -> HostInfo:
        c = self.hypervisor.config
        return HostInfo(c.hostname, c.arch, c.cores, c.memory_mib, c.disk_gib, c.gpus, "sim")

    async def list_vms(self) -> list[VmStatus]:
        return [self._status(vm) for vm in self.hypervisor.all()]

    async def get_vm(self, vm_id: str) -> VmStatus | None:
        vm = self.hypervisor.find(vm_id)
        return None if vm is None else self._status(vm)

    # -- ensure ----------------------------------------------------------------------------

    async def ensure_vm(self, spec: VmSpec, *, stop_timeout: float = 60.0) -> VmStatus:
        async with self.hypervisor.lock(spec.id):
            vm = self.hypervisor.find(spec.id)
            if vm is None:
                vm = await self._create(spec)
            elif spec.generation >= vm.generation:
                await self._converge(vm, spec, stop_timeout)
            return self._status(vm)

    async def _create(self, spec: VmSpec) -> SimVm:
        self._check_arch(spec)
        vm = self.hypervisor.begin_create(spec)
        try:
            await self._work("create", self.timings.create, spec.id)
            if self.disks is not None:
                await self.disks.make(spec)
            if spec.power_state == "running":
                await self._power_on(vm)
            else:
                vm.state, vm.stopped_by = "stopped", "api"
            vm.generation = spec.generation
        except BaseException:
            self.hypervisor.remove(spec.id)
            if self.disks is not None:
                await self.disks.remove(spec.id)
            raise
        return vm

    async def _converge(self, vm: SimVm, spec: VmSpec, stop_timeout: float) -> None:
        want_running = spec.power_state == "running"
        if not want_running and vm.state != "stopped":
            await self._power_off(vm, timeout=stop_timeout, force=False)
        if vm.state in ("running", "paused"):
            await self._apply_live(vm, spec)
            if vm.state == "paused":
                await self._work("resume", self.timings.pause, vm.spec.id)
                vm.state = "running"
        else:
            await self._apply_offline(vm, spec)
            if want_running:
                await self._power_on(vm)
        # The root disk is made once: keep what it was made from (reinstall changes it).
        vm.spec = dataclasses.replace(
            spec, image_id=vm.spec.image_id, root_disk_gib=vm.spec.root_disk_gib
        )
        vm.generation = spec.generation

    async def _apply_live(self, vm: SimVm, spec: VmSpec) -> None:
        problems = []
        if spec.gpus != vm.spec.gpus:
            problems.append("GPUs can only change while it is stopped")
        if spec.nics != vm.spec.nics and not self._capabilities.hot_plug_nic:
            problems.append("NICs can only change while it is stopped on this host")
        try:
            self._check_live_resize(vm, spec.vcpus, spec.memory_mib)
        except NotSupported as exc:
            problems.append(exc.message)
        if problems:
            raise InvalidState(
                vm.state,
                "stopped",
                resource_id=vm.spec.id,
                message=f"{vm.spec.id} is {vm.state}; {'; '.join(problems)}: stop it first",
            )
        if (spec.vcpus, spec.memory_mib) != (vm.vcpus, vm.memory_mib):
            await self._resize_live(vm, spec.vcpus, spec.memory_mib)

    async def _apply_offline(self, vm: SimVm, spec: VmSpec) -> None:
        if (spec.vcpus, spec.memory_mib) != (vm.vcpus, vm.memory_mib):
            await self._work("resize", self.timings.resize, vm.spec.id)
            vm.vcpus, vm.memory_mib = spec.vcpus, spec.memory_mib

    # -- power -----------------------------------------------------------------------------

    async def start_vm(self, vm_id: str) -> VmStatus:
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            if vm.state == "paused":
                raise InvalidState(
                    "paused",
                    ("stopped", "crashed"),
                    resource_id=vm_id,
                    message=f"{vm_id} is paused; resume it instead of starting it",
                )
            if vm.state != "running":
                await self._power_on(vm)
            return self._status(vm)

    async def stop_vm(self, vm_id: str, *, timeout: float, force: bool = False) -> VmStatus:
        if timeout < 0:
            raise ValueError("timeout must not be negative")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            if vm.state != "stopped":
                await self._power_off(vm, timeout=timeout, force=force)
            return self._status(vm)

    async def reboot_vm(self, vm_id: str, *, hard: bool = False) -> VmStatus:
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require_state(vm_id, "running")
            await self._work("reboot", self.timings.reboot, vm_id)
            vm.guest.boots += 1
            self.hypervisor.log_boot(vm)
            return self._status(vm)

    async def _power_on(self, vm: SimVm) -> None:
        """Boot the VM; its memory is reserved from the check on, so boots can't overbook."""
        self._check_arch(vm.spec)
        vm_id = vm.spec.id
        self.hypervisor.check_can_run(vm_id, vm.memory_mib, vm.spec.gpus)
        vm.booting = True
        try:
            await self._work("start", self.timings.start, vm_id)
        finally:
            vm.booting = False
        vm.state, vm.stopped_by = "running", None
        vm.started_at = self.hypervisor.clock()
        vm.guest.boots += 1
        if self.disks is not None:
            await self.disks.booted(vm.spec, vm.guest.boots)
        self.hypervisor.log_boot(vm)

    async def _power_off(self, vm: SimVm, *, timeout: float, force: bool) -> None:
        """ACPI first, the plug after ``timeout``; nothing changes if the stop fails."""
        t, vm_id = self.timings, vm.spec.id
        how: Literal["clean", "forced"]
        if vm.state == "crashed" or force:
            await self._work("stop", t.force_stop, vm_id)
            how = "forced"
        elif vm.guest.honours_acpi and t.graceful_stop <= timeout:
            await self._work("stop", t.graceful_stop, vm_id)
            how = "clean"
        else:
            await self._sleep(timeout)
            await self._work("stop", t.force_stop, vm_id)
            how = "forced"
        if vm.state != "crashed":
            vm.guest.last_shutdown = how
            self.hypervisor.log_shutdown(vm, how)
        vm.state, vm.stopped_by, vm.started_at = "stopped", "api", None
        vm.console_password = None

    # -- pause -----------------------------------------------------------------------------

    async def pause_vm(self, vm_id: str) -> VmStatus:
        self._need("pause")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            if vm.state != "paused":
                self.hypervisor.require_state(vm_id, "running")
                await self._work("pause", self.timings.pause, vm_id)
                vm.state = "paused"
            return self._status(vm)

    async def resume_vm(self, vm_id: str) -> VmStatus:
        self._need("pause")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            if vm.state != "running":
                self.hypervisor.require_state(vm_id, "paused")
                await self._work("resume", self.timings.pause, vm_id)
                vm.state = "running"
            return self._status(vm)

    # -- resize, reinstall, password, console, delete ----------------------------------------

    async def resize_vm(self, vm_id: str, vcpus: int, memory_mib: int, *, live: bool) -> VmStatus:
        if vcpus < 1 or memory_mib < 1:
            raise ValueError("vcpus and memory_mib must be positive")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            if (vcpus, memory_mib) == (vm.vcpus, vm.memory_mib):
                return self._status(vm)
            if live:
                self.hypervisor.require_state(vm_id, "running")
                self._check_live_resize(vm, vcpus, memory_mib)
                await self._resize_live(vm, vcpus, memory_mib)
            else:
                self.hypervisor.require_state(vm_id, "stopped", "crashed")
                await self._work("resize", self.timings.resize, vm_id)
                vm.vcpus, vm.memory_mib = vcpus, memory_mib
            return self._status(vm)

    def _check_live_resize(self, vm: SimVm, vcpus: int, memory_mib: int) -> None:
        caps = self._capabilities
        if vcpus < vm.vcpus or memory_mib < vm.memory_mib:
            raise NotSupported("live downsizing", "a running VM cannot lose vCPUs or memory")
        if vcpus > vm.vcpus and not caps.live_resize_cpu:
            raise NotSupported("live_resize_cpu", "this host cannot add vCPUs to a running VM")
        if memory_mib > vm.memory_mib and not caps.live_resize_memory:
            raise NotSupported("live_resize_memory", "this host cannot add memory to a running VM")

    async def _resize_live(self, vm: SimVm, vcpus: int, memory_mib: int) -> None:
        """Hot-add; the new size is reserved during the operation and undone if it fails."""
        if memory_mib > vm.memory_mib:
            self.hypervisor.check_can_run(vm.spec.id, memory_mib, vm.spec.gpus)
        old = vm.vcpus, vm.memory_mib
        vm.vcpus, vm.memory_mib = vcpus, memory_mib
        try:
            await self._work("resize", self.timings.resize, vm.spec.id)
        except BaseException:
            vm.vcpus, vm.memory_mib = old
            raise

    async def reinstall_vm(self, spec: VmSpec) -> VmStatus:
        async with self.hypervisor.lock(spec.id):
            vm = self.hypervisor.require_state(spec.id, "stopped", "crashed")
            self._check_arch(spec)
            self.hypervisor.check_disk(spec.root_disk_gib, excluding=spec.id)
            await self._work("reinstall", self.timings.reinstall, spec.id)
            if self.disks is not None:
                await self.disks.reinstall(spec)
            installs = vm.guest.installs
            vm.guest = guest_from_spec(spec)
            vm.guest.installs = installs + 1
            vm.root_snapshots.clear()  # a new root disk: the old one's snapshots went with it
            vm.spec, vm.vcpus, vm.memory_mib = spec, spec.vcpus, spec.memory_mib
            vm.state, vm.stopped_by = "stopped", "api"
            vm.generation = spec.generation
            return self._status(vm)

    async def set_password(self, vm_id: str, user: str, password: str) -> None:
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            await self._work("set_password", self.timings.set_password, vm_id)
            vm.guest.passwords[user] = password

    async def console(self, vm_id: str) -> ConsoleEndpoint:
        self._need("console")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require_state(vm_id, "running", "paused")
            await self._work("console", self.timings.console, vm_id)
            vm.console_password = secrets.token_urlsafe(12)
            host = self.hypervisor.config.console_host
            return ConsoleEndpoint(host, vm.console_port, "vnc", vm.console_password)

    def console_output(self, vm_id: str, lines: int | None = None) -> str:
        log = list(self.hypervisor.require(vm_id).console_log)
        if lines is not None:
            log = log[-lines:] if lines > 0 else []
        return "".join(f"{line}\n" for line in log)

    async def vm_stats(self, vm_id: str) -> VmStats:
        vm = self.hypervisor.require_state(vm_id, "running", "paused")
        return self.hypervisor.stats(vm)

    async def delete_vm(self, vm_id: str) -> None:
        async with self.hypervisor.lock(vm_id):
            if self.hypervisor.find(vm_id) is None:
                return
            await self._work("delete", self.timings.delete, vm_id)
            self.hypervisor.remove(vm_id)
            if self.disks is not None:
                await self.disks.remove(vm_id)

    # -- disks -----------------------------------------------------------------------------

    async def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            check_disk_spec(disk)
            for attached in vm.disks:
                if attached.id == disk.id:
                    if attached == disk:
                        return
                    raise InvalidSpec(f"{vm_id} already has another disk {disk.id!r}")
            if vm.state in ("running", "paused"):
                self._need("hot_plug_disk")
            await self._work("attach_disk", self.timings.attach_disk, vm_id)
            vm.disks.append(disk)

    async def detach_disk(self, vm_id: str, disk_id: str, *, timeout: float = 30.0) -> None:
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            if not any(d.id == disk_id for d in vm.disks):
                return
            if vm.state in ("running", "paused"):
                self._need("hot_plug_disk")
            await self._work("detach_disk", self.timings.attach_disk, vm_id)
            vm.disks = [d for d in vm.disks if d.id != disk_id]

    async def resize_disk(self, vm_id: str, disk_id: str, size_gib: int) -> None:
        """The sim guest "sees" the size at once; the storage pool did the growing."""
        vm = self.hypervisor.require(vm_id)
        if not any(d.id == disk_id for d in vm.disks):
            raise InvalidSpec(f"{vm_id} has no disk {disk_id!r}")

    async def list_disks(self, vm_id: str) -> list[DiskSpec]:
        return list(self.hypervisor.require(vm_id).disks)

    async def snapshot_disk(
        self, vm_id: str, snapshot_id: str, *, disk_id: str = "root"
    ) -> DiskSnapshot:
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            if disk_id != "root":
                raise InvalidSpec(f"only the root disk of {vm_id} has driver snapshots")
            if not DEVICE_ID.fullmatch(snapshot_id):
                raise InvalidSpec(f"{snapshot_id!r} cannot name a snapshot")
            layer = f"root-{snapshot_id}.qcow2"
            if layer in vm.root_layers:
                raise InvalidSpec(f"{vm_id} already has snapshot {snapshot_id!r}")
            if vm.state in ("running", "paused"):
                self._need("live_disk_snapshot")
            await self._work("snapshot_disk", self.timings.snapshot_disk, vm_id)
            frozen = vm.root_layers[-1]
            vm.root_layers.append(layer)
            return DiskSnapshot(snapshot_id, vm_id, disk_id, frozen, layer, self.hypervisor.clock())

    # -- live migration ----------------------------------------------------------------

    async def migration_manifest(
        self, vm_id: str, *, mode: MigrationMode = "shared"
    ) -> MigrationManifest:
        need = {"shared": "live_migration", "block": "block_migration"}
        self._need(need.get(mode, "cold_migration"))
        vm = self.hypervisor.require_state(vm_id, "stopped" if mode == "cold" else "running")
        spec = dataclasses.asdict(vm.spec)
        data: dict[str, Any] = {
            "mode": mode,
            "spec": spec,
            "vcpus": vm.vcpus,
            "memory_mib": vm.memory_mib,
            "generation": vm.generation,
            "started_at": vm.started_at.isoformat() if vm.started_at else None,
            "guest": dataclasses.asdict(vm.guest),
            "disks": [dataclasses.asdict(d) for d in vm.disks],
            "root_layers": list(vm.root_layers),
        }
        return MigrationManifest(vm_id, self.hypervisor.config.hostname, data)

    async def prepare_incoming(self, manifest: MigrationManifest) -> IncomingMigration:
        self._need("live_migration")
        vm_id, data = manifest.vm_id, dict(manifest.data)
        if data.get("mode", "shared") not in ("shared", "block"):
            raise InvalidSpec(f"a {data.get('mode')} migration is not received live")
        async with self.hypervisor.lock(vm_id):
            if vm_id in self.hypervisor.ids():
                raise InvalidSpec(f"{vm_id} already exists on {self.hypervisor.config.hostname}")
            spec = dataclasses.replace(_spec_of(data), power_state="running")
            self._check_arch(spec)
            vm = self.hypervisor.begin_create(spec)
            try:
                await self._work("prepare_incoming", 0.0, vm_id)
            except BaseException:
                self.hypervisor.remove(vm_id)
                raise
            _take_over(vm, data)
            started = data.get("started_at")
            vm.started_at = datetime.fromisoformat(str(started)) if started else None
            host = self.hypervisor.config.hostname
            uri = f"sim://{host}/{id(self.hypervisor):x}/{vm_id}"
            _RECEIVING[uri] = self.hypervisor
            disks = f"nbd://{host}/{vm_id}" if data.get("mode") == "block" else None
            return IncomingMigration(vm_id, host, uri, disks)

    async def migrate_vm(
        self,
        vm_id: str,
        target: IncomingMigration,
        *,
        downtime_limit_ms: int = 300,
        timeout: float = 600.0,
        progress: ProgressCallback | None = None,
    ) -> MigrationResult:
        self._need("live_migration")
        began = time.monotonic()
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require_state(vm_id, "running")
            total = vm.memory_mib * 1024 * 1024
            receiver = _RECEIVING.get(target.uri)
            if receiver is None or vm_id not in receiver.ids():
                raise BackendFailure(f"migration to {target.uri} failed: nobody receives it")
            steps = 4
            for step in range(steps):
                await self._sleep(self.timings.migrate / steps)
                if progress is not None:
                    done = total * step // steps
                    progress(MigrationProgress("active", done, total - done, total))
            self.faults.check("migrate", vm_id)
            received = receiver.incoming(vm_id)  # the guest as it is now, not at the manifest
            received.guest = dataclasses.replace(vm.guest)
            received.disks, received.root_layers = list(vm.disks), list(vm.root_layers)
            if progress is not None:
                progress(MigrationProgress("completed", total, 0, total))
            self.hypervisor.remove(vm_id)
        return MigrationResult(vm_id, time.monotonic() - began, 0.0, total)

    async def finish_incoming(self, vm_id: str) -> VmStatus:
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.incoming(vm_id)
            _forget(self.hypervisor, vm_id)
            vm.state, vm.stopped_by = "running", None
            if vm.started_at is None:
                vm.started_at = self.hypervisor.clock()
            return self._status(vm)

    async def abort_incoming(self, vm_id: str) -> None:
        async with self.hypervisor.lock(vm_id):
            try:
                self.hypervisor.incoming(vm_id)
            except VmNotFound:
                return
            _forget(self.hypervisor, vm_id)
            self.hypervisor.remove(vm_id)

    # -- root disk snapshots ---------------------------------------------------------------

    async def snapshot_root(self, vm_id: str, snapshot_id: str) -> None:
        self._need("root_snapshots")
        if not DEVICE_ID.fullmatch(snapshot_id):
            raise InvalidSpec(f"{snapshot_id!r} cannot name a snapshot")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require_state(vm_id, "running", "paused", "stopped")
            if snapshot_id in vm.root_snapshots:
                return
            await self._work("snapshot_root", self.timings.snapshot_disk, vm_id)
            vm.root_snapshots[snapshot_id] = dataclasses.replace(
                vm.guest, passwords=dict(vm.guest.passwords)
            )

    async def rollback_root(self, vm_id: str, snapshot_id: str) -> None:
        self._need("root_snapshots")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require_state(vm_id, "stopped")
            kept = vm.root_snapshots.get(snapshot_id)
            if kept is None:
                raise InvalidSpec(f"VM {vm_id}'s root disk has no snapshot {snapshot_id}")
            await self._work("rollback_root", self.timings.snapshot_disk, vm_id)
            boots = vm.guest.boots
            # The disk goes back, not time (nor the boot count).
            vm.guest = dataclasses.replace(kept, boots=boots, passwords=dict(kept.passwords))

    async def delete_root_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        self._need("root_snapshots")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require(vm_id)
            if snapshot_id in vm.root_snapshots:
                await self._work("delete_root_snapshot", 0.0, vm_id)
                del vm.root_snapshots[snapshot_id]

    async def list_root_snapshots(self, vm_id: str) -> list[str]:
        self._need("root_snapshots")
        return list(self.hypervisor.require(vm_id).root_snapshots)

    # -- cold migration -------------------------------------------------------------------

    async def export_root_changes(self, vm_id: str, target: Path) -> None:
        self._need("cold_migration")
        async with self.hypervisor.lock(vm_id):
            vm = self.hypervisor.require_state(vm_id, "stopped")
            await self._work("export_root_changes", self.timings.create, vm_id)
            # The sim's disk has no bytes: the file names what it stands for.
            text = json.dumps({"vm_id": vm_id, "root_layers": vm.root_layers})
            await asyncio.to_thread(target.write_text, text)

    async def receive_stopped(self, manifest: MigrationManifest, root_changes: Path) -> VmStatus:
        self._need("cold_migration")
        vm_id, data = manifest.vm_id, dict(manifest.data)
        if data.get("mode") != "cold":
            raise InvalidSpec(f"the manifest of {vm_id} is not a cold migration's")
        if json.loads(await asyncio.to_thread(root_changes.read_text)).get("vm_id") != vm_id:
            raise InvalidSpec(f"{root_changes} holds no disk of {vm_id}")
        async with self.hypervisor.lock(vm_id):
            if vm_id in self.hypervisor.ids():
                raise InvalidSpec(f"{vm_id} already exists on {self.hypervisor.config.hostname}")
            spec = dataclasses.replace(_spec_of(data), power_state="stopped")
            self._check_arch(spec)
            vm = self.hypervisor.begin_create(spec)
            try:
                await self._work("receive_stopped", self.timings.create, vm_id)
                if self.disks is not None:
                    await self.disks.make(spec)
            except BaseException:
                self.hypervisor.remove(vm_id)
                raise
            _take_over(vm, data)
            vm.state, vm.stopped_by = "stopped", "api"
            await asyncio.to_thread(root_changes.unlink)
            return self._status(vm)

    # -- helpers ---------------------------------------------------------------------------

    async def _work(self, operation: str, seconds: float, vm_id: str) -> None:
        """The backend doing ``operation``: it takes time, then may fail (by injection)."""
        await self._sleep(seconds)
        self.faults.check(operation, vm_id)

    def _status(self, vm: SimVm) -> VmStatus:
        return self.hypervisor.status(vm, console=self._capabilities.console)

    def _need(self, capability: str) -> None:
        if not getattr(self._capabilities, capability):
            raise NotSupported(capability)

    def _check_arch(self, spec: VmSpec) -> None:
        host = self.hypervisor.config
        if spec.arch != host.arch:
            raise NotSupported(
                f"arch {spec.arch}", f"host {host.hostname} runs {host.arch} guests only"
            )


def _spec_of(data: dict[str, Any]) -> VmSpec:
    """The spec a migration manifest carries."""
    spec_data: dict[str, Any] = dict(data["spec"])
    spec_data["nics"] = tuple(NicSpec(**n) for n in spec_data["nics"])
    return VmSpec(**spec_data)


def _take_over(vm: SimVm, data: dict[str, Any]) -> None:
    """What a migration manifest says of the VM as it was on its source."""
    vm.vcpus, vm.memory_mib = int(data["vcpus"]), int(data["memory_mib"])
    vm.generation = int(data["generation"])
    vm.guest = SimGuest(**data["guest"])
    vm.disks = [DiskSpec(**d) for d in data["disks"]]
    vm.root_layers = list(data["root_layers"])


def _forget(hypervisor: SimHypervisor, vm_id: str) -> None:
    for uri in [u for u, h in _RECEIVING.items() if h is hypervisor and u.endswith(f"/{vm_id}")]:
        del _RECEIVING[uri]
