"""The ``qemu`` compute backend: each VM is a daemonized ``qemu-system-<arch>`` driven by QMP.

Everything about a VM lives in ``<state_dir>/vms/<vm_id>/`` (see
:class:`~altostack.drivers.compute.qemu_cmdline.VmPaths`): its record ``vm.json``
(configuration and power intent, no secrets), the root disk (a qcow2 overlay on a base
image from a :class:`~altostack.drivers.compute.local_images.LocalImageCache`), the NoCloud
seed (``seed-<n>.iso`` built from ``seed.json``), and while it runs the QEMU pidfile, two
QMP sockets, the serial console socket and its log ``console.log``, and ``events.log``.

The driver keeps nothing in memory that matters: a new instance (an agent restart) reads
the records and pidfiles and re-adopts the running QEMUs, which are never its children.

How the state is told (:meth:`QemuComputeDriver.get_vm`):

- QEMU alive: QMP ``query-status``: ``running``; ``paused`` (also ``suspended``,
  ``io-error``, migration states); ``shutdown`` (QEMU runs with ``-no-shutdown``) means the
  guest powered off: ``stopped`` by the ``guest`` unless the driver was stopping it, and
  the driver then quits that QEMU; ``guest-panicked`` / ``internal-error``: ``crashed``.
- QEMU gone: ``crashed`` if the driver had powered it on (it was killed or died), else
  ``stopped``.

Passwords, SSH keys, hostname and user data reach the guest through the seed, read at
boot: ``set_password`` rebuilds the seed (swapping it live under a running VM) and takes
effect at the guest's next boot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from altostack.drivers import tools
from altostack.drivers.compute.base import (
    DEVICE_ID,
    Accel,
    ComputeCapabilities,
    ComputeDriver,
    ConsoleEndpoint,
    DiskSnapshot,
    DiskSpec,
    HostInfo,
    IncomingMigration,
    MigrationManifest,
    MigrationMode,
    MigrationResult,
    NicSpec,
    ProgressCallback,
    StoppedBy,
    VmSpec,
    VmState,
    VmStats,
    VmStatus,
    check_disk_spec,
)
from altostack.drivers.compute.console_log import tail_lines
from altostack.drivers.compute.local_images import LocalImageCache, qemu_img_info
from altostack.drivers.compute.qemu_cmdline import (
    MACHINE_ALIAS,
    NicForward,
    QemuCommand,
    QemuMachine,
    VmPaths,
    build_command,
    disk_ids,
    nic_ids,
    parse_machine_help,
)
from altostack.drivers.compute.qemu_devices import (
    plug_disk,
    plug_nic,
    snapshot_root,
    unplug_disk,
    unplug_nic,
)
from altostack.drivers.compute.qemu_host import (
    GIB,
    RunAs,
    detect_accel,
    disk_gib,
    host_arch,
    host_cores,
    host_memory_mib,
    lookup_user,
    qemu_binary,
    traversable_by,
)
from altostack.drivers.compute.qemu_hotadd import (
    HotAddLimits,
    add_cpu,
    add_dimm,
    check_growth,
    sizing_options,
)
from altostack.drivers.compute.qemu_migration import (
    end_mirror,
    migrate,
    mirror_root,
    serve_root,
    stop_serving,
)
from altostack.drivers.compute.qemu_process import (
    Qmp,
    kill_and_wait,
    kill_now,
    launch,
    live_pid,
    pids_with,
    qmp_session,
    read_pidfile,
    wait_gone,
)
from altostack.drivers.compute.qemu_record import (
    VmRecord,
    append_event,
    load_record,
    now_iso,
    save_record,
)
from altostack.drivers.compute.qemu_seed import (
    SeedContent,
    build_seed_iso,
    guest_hostname,
    read_seed,
    save_seed_json,
)
from altostack.drivers.compute.qemu_stats import disk_stats, link_stats, process_counters
from altostack.drivers.errors import (
    BackendFailure,
    DriverError,
    InsufficientResources,
    InvalidSpec,
    InvalidState,
    NotSupported,
    VmNotFound,
)
from altostack.drivers.faults import FaultInjector
from altostack.drivers.network.base import device_name

__all__ = ["QEMU_CAPABILITIES", "LocalImageCache", "NicBackend", "QemuComputeDriver"]

NicBackend = Literal["user", "tap"]
"""How VM NICs reach a network: user-mode (no SDN) or the network driver's port taps."""

QEMU_CAPABILITIES = ComputeCapabilities(
    pause=True,
    console=True,
    hot_plug_disk=True,
    hot_plug_nic=True,
    live_disk_snapshot=True,
    live_migration=True,
    block_migration=True,
    cold_migration=True,
    root_snapshots=True,
)
"""Without ``hot_add`` limits: a resize needs a restart (CPU/memory hot-add is opt-in)."""
UNPLUG_TIMEOUT = 30.0
"""Seconds a guest gets to release a NIC that ``ensure_vm`` removes from a running VM."""

POWERDOWN_RETRY = 1.0
"""Seconds between ACPI power button presses during a graceful stop (an early-booting
guest misses the first press, as on real hardware)."""
CTRL_ALT_DEL_RETRY = 2.0
EXPORT_TIMEOUT = 3600.0
"""Seconds for copying a root disk chain into a standalone export image."""
VNC_BASE_PORT = 5900
VNC_PORTS = 10000
VNC_RETRIES = 5

_PAUSED_RUNSTATES = frozenset(
    {"paused", "suspended", "io-error", "debug", "watchdog", "inmigrate", "postmigrate",
     "finish-migrate", "save-vm", "restore-vm", "colo"}
)  # fmt: skip
_CRASHED_RUNSTATES = frozenset({"guest-panicked", "internal-error"})
_CTRL_ALT_DEL = [{"type": "qcode", "data": key} for key in ("ctrl", "alt", "delete")]


@dataclass
class _Observed:
    """A VM as found on the host right now."""

    record: VmRecord
    pid: int | None
    runstate: str | None
    state: VmState
    stopped_by: StoppedBy | None


class QemuComputeDriver(ComputeDriver):
    """One QEMU host.

    ``state_dir`` holds the VMs (``vms/``); ``images`` the base images root disks are made
    from. ``accel`` defaults to what :func:`detect_accel` finds; ``console_host`` is the
    address VNC listens on and status reports name.
    """

    def __init__(
        self,
        state_dir: Path,
        images: LocalImageCache,
        *,
        faults: FaultInjector | None = None,
        hostname: str | None = None,
        console_host: str = "127.0.0.1",
        accel: Accel | None = None,
        binary: str | None = None,
        soft_reboot_timeout: float = 30.0,
        forward_http: bool = True,
        run_as: str | None = None,
        hot_add: HotAddLimits | None = None,
        nic_backend: NicBackend = "user",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.vms_dir = self.state_dir / "vms"
        self.vms_dir.mkdir(parents=True, exist_ok=True)
        self.images = images
        self.faults = faults or FaultInjector()
        self.hostname = hostname or socket.gethostname()
        self.console_host = console_host
        self.accel: Accel = accel or detect_accel()
        self.arch = host_arch()
        self.binary = binary or qemu_binary(self.arch)
        self.soft_reboot_timeout = soft_reboot_timeout
        if nic_backend not in ("user", "tap"):
            raise ValueError(f"nic_backend must be user or tap, not {nic_backend!r}")
        self.nic_backend = nic_backend
        self.forward_http = forward_http and nic_backend == "user"
        self.hot_add = hot_add
        """Room for vCPUs/memory added live, given to every VM at its cold start (None:
        resizing a running VM needs a restart)."""
        self.run_as: RunAs | None = None
        if run_as is not None:
            self.run_as = self._check_run_as(run_as)
        self._locks: dict[str, asyncio.Lock] = {}
        self._status_locks: dict[str, asyncio.Lock] = {}
        self._host_lock = asyncio.Lock()
        self._booting: dict[str, int] = {}
        self._reserved_ports: set[int] = set()
        self._machine_type_cache: str | None = None

    @property
    def capabilities(self) -> ComputeCapabilities:
        if self.hot_add is None:
            return QEMU_CAPABILITIES
        return replace(QEMU_CAPABILITIES, live_resize_cpu=True, live_resize_memory=True)

    # -- helpers for the agent and tests -------------------------------------------------

    def paths(self, vm_id: str) -> VmPaths:
        if not vm_id or "/" in vm_id or vm_id.startswith("."):
            raise VmNotFound(vm_id)
        return VmPaths(self.vms_dir / vm_id)

    def console_output(self, vm_id: str, lines: int | None = None) -> str:
        """The tail of the VM's serial console log (all of it when ``lines`` is None)."""
        paths = self.paths(vm_id)
        if not paths.record.exists():
            raise VmNotFound(vm_id)
        return tail_lines(paths.console_log, lines)

    def http_endpoint(self, vm_id: str, nic: int = 0) -> tuple[str, int] | None:
        """Where the host reaches port 80 of the VM's NIC ``nic`` (user-mode networking)."""
        record = load_record(self.paths(vm_id).record)
        if record is None or nic >= len(record.http_ports):
            return None
        return ("127.0.0.1", record.http_ports[nic])

    def command(self, vm_id: str) -> QemuCommand:
        """The command line the VM's next start will use (inspectable, as data)."""
        record = load_record(self.paths(vm_id).record)
        if record is None:
            raise VmNotFound(vm_id)
        return build_command(self.binary or "qemu-system-x86_64", self._machine(record))

    # -- observing -----------------------------------------------------------------------

    async def host_info(self) -> HostInfo:
        return HostInfo(
            hostname=self.hostname,
            arch=self.arch,
            cores=host_cores(),
            memory_mib=host_memory_mib(),
            disk_gib=disk_gib(self.state_dir),
            gpus=(),
            accel=self.accel,
        )

    async def list_vms(self) -> list[VmStatus]:
        found = []
        for vm_id in self._vm_ids():
            observed = await self._look(vm_id)
            if observed is not None:
                found.append(self._status(observed))
        return found

    async def get_vm(self, vm_id: str) -> VmStatus | None:
        try:
            self.paths(vm_id)
        except VmNotFound:
            return None
        observed = await self._look(vm_id)
        return None if observed is None else self._status(observed)

    def _vm_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.vms_dir.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    async def _look(self, vm_id: str) -> _Observed | None:
        """Observe a VM; tidy up after a guest power-off unless an operation is under way."""
        lock = self._lock(vm_id)
        if lock.locked():
            return await self._observe(vm_id, tidy=False)
        async with lock:
            return await self._observe(vm_id, tidy=True)

    async def _observe(self, vm_id: str, *, tidy: bool) -> _Observed | None:
        paths = self.paths(vm_id)
        if paths.creating.exists() or paths.incoming.exists():
            return None
        record = load_record(paths.record)
        if record is None:
            return None
        pid = live_pid(paths.pidfile, str(paths.dir))
        if pid is None:
            if record.power == "running":
                return _Observed(record, None, None, "crashed", None)
            return _Observed(record, None, None, "stopped", record.stopped_by or "api")
        runstate = await self._runstate(paths, vm_id)
        observed = self._classify(record, pid, runstate)
        if tidy and runstate == "shutdown" and record.power == "running":
            observed = await self._after_guest_poweroff(observed)
        return observed

    @staticmethod
    def _classify(record: VmRecord, pid: int, runstate: str | None) -> _Observed:
        if runstate == "running":
            return _Observed(record, pid, runstate, "running", None)
        if runstate == "shutdown":
            by: StoppedBy = "guest" if record.power == "running" else "api"
            return _Observed(record, pid, runstate, "stopped", by)
        if runstate in _CRASHED_RUNSTATES:
            return _Observed(record, pid, runstate, "crashed", None)
        if runstate in _PAUSED_RUNSTATES:
            return _Observed(record, pid, runstate, "paused", None)
        # "prelaunch" (a start under way or abandoned) or QMP not answering: by intent.
        if record.power == "running":
            return _Observed(record, pid, runstate, "running", None)
        return _Observed(record, pid, runstate, "stopped", record.stopped_by or "api")

    async def _runstate(self, paths: VmPaths, vm_id: str) -> str | None:
        lock = self._status_locks.setdefault(vm_id, asyncio.Lock())
        async with lock:
            try:
                async with qmp_session(paths.status_socket, vm_id, timeout=5.0) as qmp:
                    return await qmp.runstate()
            except DriverError:
                return None

    async def _after_guest_poweroff(self, observed: _Observed) -> _Observed:
        """The guest powered itself off: end its QEMU and remember who stopped it."""
        record = observed.record
        if observed.pid is not None:
            await self._quit(self.paths(record.id), observed.pid)
        record.power, record.stopped_by = "stopped", "guest"
        record.started_at, record.vnc_port, record.http_ports = None, None, []
        save_record(self.paths(record.id).record, record)
        append_event(self.paths(record.id).events, "stop guest")
        return _Observed(record, None, None, "stopped", "guest")

    def _status(self, observed: _Observed) -> VmStatus:
        record, state = observed.record, observed.state
        live = state in ("running", "paused")
        console = (
            ConsoleEndpoint(self.console_host, record.vnc_port)
            if live and record.vnc_port is not None
            else None
        )
        return VmStatus(
            id=record.id,
            state=state,
            generation=record.generation,
            vcpus=record.vcpus,
            memory_mib=record.memory_mib,
            started_at=record.started if live else None,
            stopped_by=observed.stopped_by if state == "stopped" else None,
            console=console,
            image_id=record.image_id,
            accel=record.accel,
        )

    async def vm_stats(self, vm_id: str) -> VmStats:
        """Counters read beside any operation (no VM lock; QMP on the status socket)."""
        paths = self.paths(vm_id)
        observed = await self._observe(vm_id, tidy=False)
        if observed is None:
            raise VmNotFound(vm_id)
        self._require_state(observed, "running", "paused")
        if observed.pid is None:
            raise InvalidState(observed.state, ("running", "paused"), resource_id=vm_id)
        lock = self._status_locks.setdefault(vm_id, asyncio.Lock())
        async with lock, qmp_session(paths.status_socket, vm_id, timeout=5.0) as qmp:
            blockstats = await qmp.execute("query-blockstats")
        cpu_ns, rss = process_counters(observed.pid)
        record = observed.record
        return VmStats(
            id=vm_id,
            collected_at=datetime.now(UTC),
            started_at=record.started,
            cpu_time_ns=cpu_ns,
            memory_rss_bytes=rss,
            memory_mib=record.memory_mib,
            vcpus=record.vcpus,
            disks=disk_stats(blockstats),
            nics=tuple(
                stats
                for nic in record.nics
                if (tap := self._nic(nic, None).tap) is not None
                and (stats := link_stats(tap)) is not None
            ),
        )

    async def _require(self, vm_id: str) -> _Observed:
        observed = await self._observe(vm_id, tidy=True)
        if observed is None:
            raise VmNotFound(vm_id)
        return observed

    @staticmethod
    def _require_state(observed: _Observed, *states: VmState) -> None:
        if observed.state not in states:
            raise InvalidState(observed.state, states, resource_id=observed.record.id)

    # -- ensure ----------------------------------------------------------------------------

    async def ensure_vm(self, spec: VmSpec, *, stop_timeout: float = 60.0) -> VmStatus:
        try:
            self.paths(spec.id)
        except VmNotFound:
            raise InvalidSpec(f"{spec.id!r} cannot be a VM id on this host") from None
        async with self._lock(spec.id):
            observed = await self._observe(spec.id, tidy=True)
            if observed is None and self.paths(spec.id).incoming.exists():
                raise BackendFailure(
                    f"{spec.id} is being received by a live migration (finish or abort it)"
                )
            if observed is None:
                self._purge(self.paths(spec.id))  # left over by a create that died midway
                observed = await self._create(spec)
            elif spec.generation >= observed.record.generation:
                observed = await self._converge(observed, spec, stop_timeout)
            return self._status(observed)

    async def _create(self, spec: VmSpec) -> _Observed:
        self._check_arch(spec.arch)
        base = await self.images.ensure(spec.image_id)
        if spec.power_state == "running":
            total = host_memory_mib()
            if spec.memory_mib > total:
                raise InsufficientResources(
                    f"{spec.memory_mib} MiB of memory requested; the host has {total} MiB"
                )
        self._check_disk(spec.root_disk_gib, excluding=spec.id)
        paths = self.paths(spec.id)
        paths.dir.mkdir(mode=0o700, parents=True)
        self._give(paths.dir)
        paths.creating.touch()
        try:
            await self._check_image_fits(spec.image_id, spec.root_disk_gib)
            self.faults.check("create", spec.id)
            await self._make_root_disk(base, paths.root_disk, spec.root_disk_gib)
            self._give(paths.root_disk)
            record = VmRecord.from_spec(
                spec, machine_type=await self._machine_type(), accel=self.accel
            )
            seed = self._seed(spec, record)
            await build_seed_iso(seed, paths.seed_iso(record.seed_serial))
            self._give(paths.seed_iso(record.seed_serial))
            save_seed_json(seed, paths.seed_json)
            save_record(paths.record, record)
            append_event(paths.events, "create")
            if spec.power_state == "running":
                await self._power_on(record)
            paths.creating.unlink()
        except BaseException:
            self._purge(paths)
            raise
        if spec.power_state == "running":
            return _Observed(record, read_pidfile(paths.pidfile), "running", "running", None)
        return _Observed(record, None, None, "stopped", "api")

    def _seed(self, spec: VmSpec, record: VmRecord) -> SeedContent:
        passwords = () if spec.password is None else (("root", spec.password),)
        return SeedContent(
            instance_id=record.instance_id,
            hostname=guest_hostname(spec.guest_hostname),
            passwords=passwords,
            ssh_keys=spec.ssh_keys,
            user_data=spec.user_data,
        )

    async def _converge(self, observed: _Observed, spec: VmSpec, stop_timeout: float) -> _Observed:
        record = observed.record
        want_running = spec.power_state == "running"
        if not want_running and observed.state != "stopped":
            observed = await self._power_off(observed, timeout=stop_timeout, force=False)
        if observed.state in ("running", "paused"):
            self._check_live_change(observed, spec)
            if (spec.vcpus, spec.memory_mib) != (record.vcpus, record.memory_mib):
                await self._grow_live(observed, spec.vcpus, spec.memory_mib)
            await self._sync_nics(observed, spec)
            if observed.state == "paused" and want_running:
                observed = await self._resume(observed)
        else:
            record.vcpus, record.memory_mib = spec.vcpus, spec.memory_mib
            record.apply_guest_config(spec)
            save_record(self.paths(record.id).record, record)
            if want_running:
                await self._power_on(record)
                observed = _Observed(record, None, "running", "running", None)
        # The root disk is made once (image and size change only by reinstall).
        record.apply_guest_config(spec)
        record.generation = spec.generation
        save_record(self.paths(record.id).record, record)
        return observed

    def _check_live_change(self, observed: _Observed, spec: VmSpec) -> None:
        record = observed.record
        problems = []
        if tuple(record.gpus) != spec.gpus:
            problems.append("GPUs can only change while it is stopped")
        if spec.vcpus < record.vcpus or spec.memory_mib < record.memory_mib:
            problems.append("a running VM cannot lose vCPUs or memory")
        elif self.hot_add is not None:
            pass  # grown live by _converge
        elif spec.vcpus > record.vcpus:
            problems.append("this host cannot add vCPUs to a running VM")
        elif spec.memory_mib > record.memory_mib:
            problems.append("this host cannot add memory to a running VM")
        if problems:
            raise InvalidState(
                observed.state,
                "stopped",
                resource_id=record.id,
                message=f"{record.id} is {observed.state}; {'; '.join(problems)}: stop it first",
            )

    # -- power -----------------------------------------------------------------------------

    async def start_vm(self, vm_id: str) -> VmStatus:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            if observed.state == "paused":
                raise InvalidState(
                    "paused",
                    ("stopped", "crashed"),
                    resource_id=vm_id,
                    message=f"{vm_id} is paused; resume it instead of starting it",
                )
            if observed.state != "running":
                await self._power_on(observed.record)
                observed = _Observed(observed.record, None, "running", "running", None)
            return self._status(observed)

    async def stop_vm(self, vm_id: str, *, timeout: float, force: bool = False) -> VmStatus:
        if timeout < 0:
            raise ValueError("timeout must not be negative")
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            if observed.state != "stopped":
                observed = await self._power_off(observed, timeout=timeout, force=force)
            return self._status(observed)

    async def reboot_vm(self, vm_id: str, *, hard: bool = False) -> VmStatus:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            self._require_state(observed, "running")
            paths = self.paths(vm_id)
            console_at = _size(paths.console_log)
            how = "hard"
            if not hard:
                async with self._qmp(paths, vm_id) as qmp:
                    self.faults.check("reboot", vm_id)
                    how = await self._soft_reboot(qmp)
            if how != "soft":
                if hard:
                    self.faults.check("reboot", vm_id)
                await self._power_cycle(observed)
            append_event(paths.events, f"reset {how} console={console_at}")
            return self._status(await self._require(vm_id))

    async def _soft_reboot(self, qmp: Qmp) -> str:
        """Ctrl-Alt-Del until the guest resets itself: "soft", or "soft-timeout"."""
        deadline = time.monotonic() + self.soft_reboot_timeout
        with qmp.listen(("RESET",)) as listener:
            while (remaining := deadline - time.monotonic()) > 0:
                await qmp.execute("send-key", {"keys": _CTRL_ALT_DEL})
                try:
                    await asyncio.wait_for(listener.get(), min(CTRL_ALT_DEL_RETRY, remaining))
                    return "soft"
                except TimeoutError:
                    continue
        return "soft-timeout"

    async def _power_cycle(self, observed: _Observed) -> None:
        """A hard reset as a new QEMU process; ``started_at`` stays.

        (QMP ``system_reset`` during the first milliseconds of the firmware can leave
        SeaBIOS spinning with a VGA device present; a new process always boots.)
        """
        record, paths = observed.record, self.paths(observed.record.id)
        if observed.pid is not None:
            await self._quit(paths, observed.pid)
        await self._power_on(
            record, started_at=record.started_at, vnc_port=record.vnc_port, event=None
        )

    async def _power_on(
        self,
        record: VmRecord,
        *,
        started_at: str | None = None,
        vnc_port: int | None = None,
        event: str | None = "start",
    ) -> None:
        """Boot the VM; memory is reserved from the check on, so boots cannot overbook.

        ``started_at`` and ``vnc_port`` are kept by a power cycle (hard reboot).
        """
        self._check_arch(record.arch)
        if record.gpus:
            raise InsufficientResources(
                f"no GPU at {', '.join(record.gpus)} on {self.hostname} (no GPUs here)"
            )
        binary = self._binary()
        paths = self.paths(record.id)
        self._end_leftover(paths)
        # A new QEMU process: what was added live becomes part of the boot sizes.
        record.hot_cpus, record.dimms = [], []
        record.max_vcpus = record.max_memory_mib = None
        if self.hot_add is not None:
            record.max_vcpus, record.max_memory_mib = self.hot_add.for_vm(
                record.vcpus, record.memory_mib, host_memory_mib()
            )
        async with self._host_lock:
            self._check_memory(record.id, record.memory_mib)
            if vnc_port is None or not _port_free(self.console_host, vnc_port):
                vnc_port = self._pick_vnc_port()
            http_ports = [_free_port() for _ in record.nics] if self.forward_http else []
            self._booting[record.id] = record.memory_mib
            self._reserved_ports.add(vnc_port)
        try:
            record.vnc_port, record.http_ports = vnc_port, http_ports
            record.root_node = "root"
            _layout(record)
            for stale in (paths.qmp_socket, paths.status_socket, paths.serial_socket):
                stale.unlink(missing_ok=True)
            paths.pidfile.unlink(missing_ok=True)
            console_at = _size(paths.console_log)
            await self._launch(binary, record)
            async with self._qmp(paths, record.id) as qmp:
                self.faults.check("start", record.id)
                # Nobody knows this password: the console opens only through console().
                await qmp.execute(
                    "set_password", {"protocol": "vnc", "password": secrets.token_urlsafe(6)}
                )
                await qmp.execute("cont")
            record.power, record.stopped_by = "running", None
            record.started_at = started_at or now_iso()
            save_record(paths.record, record)
            if event:
                append_event(paths.events, f"{event} console={console_at}")
        except BaseException:
            self._end_leftover(paths)
            record.vnc_port, record.http_ports = None, []
            raise
        finally:
            self._booting.pop(record.id, None)
            self._reserved_ports.discard(vnc_port)

    async def _power_off(self, observed: _Observed, *, timeout: float, force: bool) -> _Observed:
        """ACPI power button (repeated), then ``quit`` after ``timeout``; SIGKILL last."""
        record, pid = observed.record, observed.pid
        paths = self.paths(record.id)
        how = "forced"
        if pid is not None and not force and observed.state in ("running", "paused"):
            async with self._qmp(paths, record.id) as qmp:
                self.faults.check("stop", record.id)
                record.power = "stopping"
                save_record(paths.record, record)
                try:
                    if await self._graceful(qmp, pid, paths, paused=observed.state == "paused",
                                            timeout=timeout):  # fmt: skip
                        how = "clean"
                except BaseException:
                    if live_pid(paths.pidfile, str(paths.dir)) is not None:
                        record.power = "running"  # a failed stop leaves the VM as it was
                        save_record(paths.record, record)
                    raise
        else:
            self.faults.check("stop", record.id)
        if pid is not None:
            await self._quit(paths, pid)
        record.power, record.stopped_by = "stopped", "api"
        record.started_at, record.vnc_port, record.http_ports = None, None, []
        save_record(paths.record, record)
        append_event(paths.events, f"stop {how}")
        return _Observed(record, None, None, "stopped", "api")

    async def _graceful(
        self, qmp: Qmp, pid: int, paths: VmPaths, *, paused: bool, timeout: float
    ) -> bool:
        """Whether the guest powered off within ``timeout`` after the power button."""
        deadline = time.monotonic() + timeout
        with qmp.listen(("SHUTDOWN",)) as listener:
            try:
                if paused:
                    await qmp.execute("cont")
                while True:
                    if await qmp.runstate() == "shutdown":
                        return True
                    await qmp.execute("system_powerdown")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    try:
                        await asyncio.wait_for(listener.get(), min(POWERDOWN_RETRY, remaining))
                        return True
                    except TimeoutError:
                        continue
            except DriverError:
                if live_pid(paths.pidfile, str(paths.dir)) is None:
                    return False  # QEMU went away meanwhile
                raise

    async def _quit(self, paths: VmPaths, pid: int) -> None:
        """End QEMU: QMP ``quit`` (closes the disks cleanly), SIGKILL if that fails."""
        marker = str(paths.dir)
        with contextlib.suppress(DriverError):
            async with qmp_session(paths.qmp_socket, paths.dir.name, timeout=5.0) as qmp:
                with contextlib.suppress(DriverError):
                    await qmp.execute("quit", timeout=5.0)
        if not await wait_gone(pid, marker, 10.0):
            await kill_and_wait(pid, marker)
        self._remove_runtime_files(paths)

    def _end_leftover(self, paths: VmPaths) -> None:
        """Kill a QEMU of this VM that should not be there (crashed, half-started)."""
        marker = str(paths.dir)
        for pid in pids_with(f"{marker}/"):
            kill_now(pid, marker)
        self._remove_runtime_files(paths)

    @staticmethod
    def _remove_runtime_files(paths: VmPaths) -> None:
        for path in (paths.pidfile, paths.qmp_socket, paths.status_socket, paths.serial_socket):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                path.unlink()

    # -- pause -----------------------------------------------------------------------------

    async def pause_vm(self, vm_id: str) -> VmStatus:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            if observed.state != "paused":
                self._require_state(observed, "running")
                async with self._qmp(self.paths(vm_id), vm_id) as qmp:
                    self.faults.check("pause", vm_id)
                    await qmp.execute("stop")
                observed = _Observed(observed.record, observed.pid, "paused", "paused", None)
            return self._status(observed)

    async def resume_vm(self, vm_id: str) -> VmStatus:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            if observed.state != "running":
                self._require_state(observed, "paused")
                observed = await self._resume(observed)
            return self._status(observed)

    async def _resume(self, observed: _Observed) -> _Observed:
        vm_id = observed.record.id
        async with self._qmp(self.paths(vm_id), vm_id) as qmp:
            self.faults.check("resume", vm_id)
            await qmp.execute("cont")
        return _Observed(observed.record, observed.pid, "running", "running", None)

    # -- resize, reinstall, password, console, delete ----------------------------------------

    async def resize_vm(self, vm_id: str, vcpus: int, memory_mib: int, *, live: bool) -> VmStatus:
        if vcpus < 1 or memory_mib < 1:
            raise ValueError("vcpus and memory_mib must be positive")
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            record = observed.record
            if (vcpus, memory_mib) == (record.vcpus, record.memory_mib):
                return self._status(observed)
            if live:
                self._require_state(observed, "running")
                if vcpus < record.vcpus or memory_mib < record.memory_mib:
                    raise NotSupported(
                        "live downsizing", "a running VM cannot lose vCPUs or memory"
                    )
                if self.hot_add is not None:
                    await self._grow_live(observed, vcpus, memory_mib)
                    return self._status(observed)
                if vcpus > record.vcpus:
                    raise NotSupported(
                        "live_resize_cpu", "this host cannot add vCPUs to a running VM"
                    )
                raise NotSupported(
                    "live_resize_memory", "this host cannot add memory to a running VM"
                )
            self._require_state(observed, "stopped", "crashed")
            self.faults.check("resize", vm_id)
            record.vcpus, record.memory_mib = vcpus, memory_mib
            save_record(self.paths(vm_id).record, record)
            return self._status(observed)

    async def _grow_live(self, observed: _Observed, vcpus: int, memory_mib: int) -> None:
        """Hot-add vCPUs and memory to the running QEMU (every check passes first)."""
        record, paths = observed.record, self.paths(observed.record.id)
        check_growth(record, vcpus, memory_mib)
        async with self._host_lock:
            self._check_memory(record.id, memory_mib)
        self.faults.check("resize", record.id)
        async with self._qmp(paths, record.id) as qmp:
            # Saved after each device: the record always names what the QEMU has.
            while record.vcpus < vcpus:
                record.hot_cpus.append(await add_cpu(qmp))
                record.vcpus += 1
                save_record(paths.record, record)
            if memory_mib > record.memory_mib:
                delta = memory_mib - record.memory_mib
                record.dimms.append(await add_dimm(qmp, len(record.dimms), delta))
                record.memory_mib = memory_mib
                save_record(paths.record, record)
        append_event(paths.events, f"grow vcpus={record.vcpus} memory={record.memory_mib}")

    async def reinstall_vm(self, spec: VmSpec) -> VmStatus:
        async with self._lock(spec.id):
            observed = await self._require(spec.id)
            self._require_state(observed, "stopped", "crashed")
            self._check_arch(spec.arch)
            base = await self.images.ensure(spec.image_id)
            await self._check_image_fits(spec.image_id, spec.root_disk_gib)
            self._check_disk(spec.root_disk_gib, excluding=spec.id)
            record, paths = observed.record, self.paths(spec.id)
            new_disk = paths.dir / "root.qcow2.new"
            serial = record.seed_serial + 1
            new_iso = paths.seed_iso(serial)
            try:
                self.faults.check("reinstall", spec.id)
                if observed.pid is not None:
                    await self._quit(paths, observed.pid)
                await self._make_root_disk(base, new_disk, spec.root_disk_gib)
                self._give(new_disk)
                record.install_serial += 1
                seed = self._seed(spec, record)
                await build_seed_iso(seed, new_iso)
                self._give(new_iso)
            except BaseException:
                new_disk.unlink(missing_ok=True)
                new_iso.unlink(missing_ok=True)
                record.install_serial = load_record(paths.record).install_serial  # type: ignore[union-attr]
                raise
            save_seed_json(seed, paths.seed_json)
            os.replace(new_disk, paths.root_disk)
            for layer in record.root_layers[1:]:
                (paths.dir / layer).unlink(missing_ok=True)
            record.root_layers, record.root_node = [paths.root_disk.name], "root"
            old_serial, record.seed_serial = record.seed_serial, serial
            record.vcpus, record.memory_mib = spec.vcpus, spec.memory_mib
            record.root_disk_gib, record.image_id, record.arch = (
                spec.root_disk_gib,
                spec.image_id,
                spec.arch,
            )
            record.apply_guest_config(spec)
            record.generation = spec.generation
            record.power, record.stopped_by, record.started_at = "stopped", "api", None
            record.vnc_port, record.http_ports = None, []
            save_record(paths.record, record)
            paths.seed_iso(old_serial).unlink(missing_ok=True)
            append_event(paths.events, f"reinstall {spec.image_id}")
            return self._status(_Observed(record, None, None, "stopped", "api"))

    async def set_password(self, vm_id: str, user: str, password: str) -> None:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            record, paths = observed.record, self.paths(vm_id)
            self.faults.check("set_password", vm_id)
            seed = read_seed(paths.seed_json).with_password(user, password)
            old, new = record.seed_serial, record.seed_serial + 1
            new_iso = paths.seed_iso(new)
            try:
                await build_seed_iso(seed, new_iso)
                self._give(new_iso)
                if observed.pid is not None:
                    await self._swap_seed(paths, vm_id, old, new)
            except BaseException:
                new_iso.unlink(missing_ok=True)
                raise
            save_seed_json(seed, paths.seed_json)
            record.seed_serial = new
            save_record(paths.record, record)
            paths.seed_iso(old).unlink(missing_ok=True)

    async def _swap_seed(self, paths: VmPaths, vm_id: str, old: int, new: int) -> None:
        """Point the running VM's seed disk at the new ISO (seen at the guest's next boot)."""
        async with self._qmp(paths, vm_id) as qmp:
            node = f"seed-file-{new}"
            await qmp.execute(
                "blockdev-add",
                {"driver": "file", "node-name": node, "filename": str(paths.seed_iso(new)),
                 "read-only": True},
            )  # fmt: skip
            try:
                await qmp.execute(
                    "blockdev-reopen",
                    {"options": [{"driver": "raw", "node-name": "seed", "file": node,
                                  "read-only": True}]},
                )  # fmt: skip
            except BaseException:
                with contextlib.suppress(DriverError):
                    await qmp.execute("blockdev-del", {"node-name": node})
                raise
            with contextlib.suppress(DriverError):
                await qmp.execute("blockdev-del", {"node-name": f"seed-file-{old}"})

    async def console(self, vm_id: str) -> ConsoleEndpoint:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            self._require_state(observed, "running", "paused")
            port = observed.record.vnc_port
            if port is None:
                raise BackendFailure(f"{vm_id} has no VNC listener")
            password = secrets.token_urlsafe(6)  # VNC passwords are 8 characters at most
            async with self._qmp(self.paths(vm_id), vm_id) as qmp:
                self.faults.check("console", vm_id)
                await qmp.execute("set_password", {"protocol": "vnc", "password": password})
            return ConsoleEndpoint(self.console_host, port, "vnc", password)

    async def delete_vm(self, vm_id: str) -> None:
        try:
            paths = self.paths(vm_id)
        except VmNotFound:
            return
        async with self._lock(vm_id):
            if not paths.dir.exists():
                return
            self.faults.check("delete", vm_id)
            pid = live_pid(paths.pidfile, str(paths.dir))
            if pid is not None:
                await kill_and_wait(pid, str(paths.dir))
            shutil.rmtree(paths.dir, ignore_errors=True)
        self._locks.pop(vm_id, None)
        self._status_locks.pop(vm_id, None)

    # -- NICs, disks, snapshots --------------------------------------------------------------

    async def _sync_nics(self, observed: _Observed, spec: VmSpec) -> None:
        """Hot-plug the NICs ``spec`` adds and unplug the ones it drops (running VM)."""
        record, paths = observed.record, self.paths(observed.record.id)
        old = list(record.nics)
        ports: dict[str, int] = dict(zip((n.id for n in old), record.http_ports, strict=False))
        removed = [n for n in old if n not in spec.nics]
        added = [n for n in spec.nics if n not in old]
        if not removed and not added:
            return
        async with self._qmp(paths, record.id) as qmp:
            for nic in removed:
                await unplug_nic(qmp, self._nic(nic, ports.get(nic.id)), timeout=UNPLUG_TIMEOUT)
                record.nics.remove(nic)
                record.release_slot(nic_ids(nic)[0])
                ports.pop(nic.id, None)
                self._save_nics(record, ports)
                append_event(paths.events, f"unplug nic {nic.id}")
            for nic in added:
                port = _free_port() if self.forward_http else None
                device = nic_ids(nic)[0]
                record.slot(device)
                try:
                    await plug_nic(qmp, self._nic(nic, port), record.placement())
                except BaseException:
                    record.release_slot(device)
                    raise
                record.nics.append(nic)
                if port is not None:
                    ports[nic.id] = port
                self._save_nics(record, ports)
                append_event(paths.events, f"plug nic {nic.id}")
        record.nics = list(spec.nics)
        self._save_nics(record, ports)

    def _save_nics(self, record: VmRecord, ports: dict[str, int]) -> None:
        record.http_ports = [ports[n.id] for n in record.nics if n.id in ports]
        if len(record.http_ports) != len(record.nics):
            record.http_ports = []
        save_record(self.paths(record.id).record, record)

    def _link_for(self, paths: VmPaths, disk: DiskSpec) -> Path:
        return paths.dir / f"data-{disk.id}.{disk.format}"

    def _reachable(self, paths: VmPaths, disk: DiskSpec) -> DiskSpec:
        """The disk as QEMU opens it: with ``-runas``, a hard link in the VM's directory
        (which QEMU's user reaches) instead of a path in a storage pool whose directories
        it must not (a pool keeps other tenants' volumes). Same inode: the pool's snapshots,
        rollbacks and resizes act on the very file the guest uses. Without privilege
        dropping, or across filesystems, the path as given. The record keeps the spec as
        given (``list_disks`` answers what was attached)."""
        if self.run_as is None:
            return disk
        link = self._link_for(paths, disk)
        try:
            if not link.exists() and _is_file(disk.path):
                os.link(disk.path, link)
        except OSError:
            return disk
        return dataclasses.replace(disk, path=str(link)) if link.exists() else disk

    async def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            check_disk_spec(disk)
            record, paths = observed.record, self.paths(vm_id)
            for attached in record.disks:
                if attached.id == disk.id:
                    if attached == disk:
                        return
                    raise InvalidSpec(f"{vm_id} already has another disk {disk.id!r}")
            opened = disk
            if not disk.protocol:  # a host file (else QEMU opens it itself, e.g. rbd)
                if not _is_file(disk.path):
                    raise InvalidSpec(
                        f"disk {disk.id}: {disk.path} is not a file on {self.hostname}"
                    )
                self._give(Path(disk.path))
                opened = self._reachable(paths, disk)
            device = disk_ids(disk)[0]
            try:
                record.slot(device)
            except ValueError:
                raise InsufficientResources(f"{vm_id} has no free PCI slot left") from None
            try:
                if self._live(observed):
                    async with self._qmp(paths, vm_id) as qmp:
                        self.faults.check("attach_disk", vm_id)
                        await plug_disk(qmp, opened, record.placement())
                else:
                    self.faults.check("attach_disk", vm_id)
            except BaseException:
                record.release_slot(device)
                raise
            record.disks.append(disk)
            save_record(paths.record, record)
            append_event(paths.events, f"attach {disk.id}")

    async def detach_disk(self, vm_id: str, disk_id: str, *, timeout: float = 30.0) -> None:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            record, paths = observed.record, self.paths(vm_id)
            disk = next((d for d in record.disks if d.id == disk_id), None)
            if disk is None:
                return
            if self._live(observed):
                async with self._qmp(paths, vm_id) as qmp:
                    self.faults.check("detach_disk", vm_id)
                    await unplug_disk(qmp, disk, timeout=timeout)
            else:
                self.faults.check("detach_disk", vm_id)
            record.disks.remove(disk)
            record.release_slot(disk_ids(disk)[0])
            save_record(paths.record, record)
            with contextlib.suppress(FileNotFoundError):  # our link (see _reachable)
                os.unlink(self._link_for(paths, disk))
            append_event(paths.events, f"detach {disk.id}")

    async def list_disks(self, vm_id: str) -> list[DiskSpec]:
        observed = await self._look(vm_id)
        if observed is None:
            raise VmNotFound(vm_id)
        return list(observed.record.disks)

    async def snapshot_disk(
        self, vm_id: str, snapshot_id: str, *, disk_id: str = "root"
    ) -> DiskSnapshot:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            if disk_id != "root":
                raise InvalidSpec(f"only the root disk of {vm_id} has driver snapshots")
            if not DEVICE_ID.fullmatch(snapshot_id):
                raise InvalidSpec(f"{snapshot_id!r} cannot name a snapshot")
            record, paths = observed.record, self.paths(vm_id)
            layer = f"root-{snapshot_id}.qcow2"
            overlay = paths.dir / layer
            if layer in record.root_layers or overlay.exists():
                raise InvalidSpec(f"{vm_id} already has snapshot {snapshot_id!r}")
            frozen = record.root_layers[-1]
            new_node = f"root-{len(record.root_layers)}"
            live = self._live(observed)
            try:
                await _make_overlay(frozen, overlay, record.root_disk_gib)
                self._give(overlay)
                self.faults.check("snapshot_disk", vm_id)
                if live:
                    async with self._qmp(paths, vm_id) as qmp:
                        await snapshot_root(qmp, record.root_node, str(overlay), new_node)
            except BaseException:
                overlay.unlink(missing_ok=True)
                raise
            record.root_layers.append(layer)
            if live:
                record.root_node = new_node
            save_record(paths.record, record)
            append_event(paths.events, f"snapshot {snapshot_id}")
            return DiskSnapshot(
                snapshot_id, vm_id, "root", str(paths.dir / frozen), str(overlay), datetime.now(UTC)
            )

    async def _attached_live(self, vm_id: str, disk_id: str) -> tuple[VmPaths, str] | None:
        """(paths, QEMU node) of an attached data disk when the VM runs; None when stopped."""
        observed = await self._require(vm_id)
        disk = next((d for d in observed.record.disks if d.id == disk_id), None)
        if disk is None:
            raise InvalidSpec(f"{vm_id} has no disk {disk_id!r}")
        if not self._live(observed):
            return None
        return self.paths(vm_id), disk_ids(disk)[1]

    async def resize_disk(self, vm_id: str, disk_id: str, size_gib: int) -> None:
        async with self._lock(vm_id):
            live = await self._attached_live(vm_id, disk_id)
            if live is None:
                return
            paths, node = live
            async with self._qmp(paths, vm_id) as qmp:
                self.faults.check("resize_disk", vm_id)
                await qmp.execute("block_resize", {"node-name": node, "size": size_gib * GIB})
            append_event(paths.events, f"resize {disk_id} {size_gib}G")

    async def snapshot_attached_disk(self, vm_id: str, disk_id: str, snapshot_id: str) -> None:
        async with self._lock(vm_id):
            live = await self._attached_live(vm_id, disk_id)
            if live is None:
                raise InvalidState("stopped", "running", resource_id=vm_id)
            paths, node = live
            async with self._qmp(paths, vm_id) as qmp:
                self.faults.check("snapshot_disk", vm_id)
                await qmp.execute(
                    "blockdev-snapshot-internal-sync", {"device": node, "name": snapshot_id}
                )
            append_event(paths.events, f"snapshot {disk_id} {snapshot_id}")

    @staticmethod
    def _live(observed: _Observed) -> bool:
        return observed.pid is not None and observed.state in ("running", "paused")

    # -- live migration --------------------------------------------------------------------

    async def migration_manifest(
        self, vm_id: str, *, mode: MigrationMode = "shared"
    ) -> MigrationManifest:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            self._require_state(observed, "stopped" if mode == "cold" else "running")
            record, paths = observed.record, self.paths(vm_id)
            data: dict[str, Any] = {"record": json.loads(record.to_json()), "mode": mode}
            if mode == "shared":
                data["source_dir"] = str(paths.dir)
                data["files"] = [*record.root_layers, paths.seed_iso(record.seed_serial).name]
            else:  # the destination builds its own root disk and seed
                data["seed"] = read_seed(paths.seed_json).to_json()
                # The VM's history goes along: its events and its console's recent past.
                data["history"] = {
                    name: base64.b64encode(_tail(paths.dir / name, HISTORY_BYTES)).decode()
                    for name in (paths.events.name, paths.console_log.name)
                }
            return MigrationManifest(vm_id, self.hostname, data)

    async def prepare_incoming(self, manifest: MigrationManifest) -> IncomingMigration:
        vm_id = manifest.vm_id
        mode = str(manifest.data.get("mode", "shared"))
        if mode not in ("shared", "block"):
            raise InvalidSpec(f"a {mode} migration is not received live")
        paths = self._arrival_paths(vm_id)
        async with self._lock(vm_id):
            binary = self._binary()
            record = self._begin_arrival(paths, manifest, paths.incoming)
            paths.incoming.write_text(mode)
            try:
                if mode == "block":
                    await self._build_disks(paths, record, manifest)
                    return await self._receive(paths, record, binary, block=True)
                source = Path(str(manifest.data["source_dir"]))
                files = [str(f) for f in manifest.data["files"]]  # type: ignore[attr-defined]
                self._share(paths, source, files)
                return await self._receive(paths, record, binary, block=False)
            except BaseException:
                self._purge(paths)
                raise

    def _arrival_paths(self, vm_id: str) -> VmPaths:
        try:
            return self.paths(vm_id)
        except VmNotFound:
            raise InvalidSpec(f"{vm_id!r} cannot be a VM id on this host") from None

    def _begin_arrival(self, paths: VmPaths, manifest: MigrationManifest, marker: Path) -> VmRecord:
        """(Under the VM's lock.) A fresh directory for a VM coming from another host,
        its record from the manifest; an earlier attempt (``marker`` left) is cleared, a
        VM that lives here already is ``InvalidSpec``."""
        if paths.record.exists() and not marker.exists():
            raise InvalidSpec(f"{manifest.vm_id} already exists on {self.hostname}")
        self._purge(paths)  # an abandoned earlier attempt
        record = self._incoming_record(manifest)
        paths.dir.mkdir(mode=0o700, parents=True)
        self._give(paths.dir)
        return record

    def _incoming_record(self, manifest: MigrationManifest) -> VmRecord:
        record = VmRecord.from_json(json.dumps(manifest.data["record"]))
        if record.id != manifest.vm_id:
            raise InvalidSpec(f"the manifest of {manifest.vm_id} carries {record.id}")
        self._check_arch(record.arch)
        if record.accel != self.accel:
            raise InvalidSpec(
                f"{record.id} runs under {record.accel}; {self.hostname} uses {self.accel}"
            )
        return record

    def _share(self, paths: VmPaths, source: Path, files: list[str]) -> None:
        """Take the disks over (hard links: same inodes, shared storage on one machine)."""
        for name in files:
            try:
                os.link(source / name, paths.dir / name)
            except OSError as exc:
                raise NotSupported(
                    "live migration without shared storage",
                    f"cannot share {source / name} with {self.hostname}: {exc}",
                ) from exc
        for name in (paths.events.name, paths.console_log.name, paths.seed_json.name):
            with contextlib.suppress(FileNotFoundError):
                shutil.copy2(source / name, paths.dir / name)

    async def _build_disks(
        self, paths: VmPaths, record: VmRecord, manifest: MigrationManifest
    ) -> Path:
        """This host's own root disk (an overlay on its copy of the image, which it
        fetches if needed) and seed ISO for a VM coming from elsewhere; the root disk."""
        base = await self.images.ensure(record.image_id)
        self._check_disk(record.root_disk_gib, excluding=record.id)
        await self._make_root_disk(base, paths.root_disk, record.root_disk_gib)
        self._give(paths.root_disk)
        record.root_layers, record.root_node = [paths.root_disk.name], "root"
        seed = SeedContent.from_json(str(manifest.data["seed"]))
        await build_seed_iso(seed, paths.seed_iso(record.seed_serial))
        self._give(paths.seed_iso(record.seed_serial))
        save_seed_json(seed, paths.seed_json)
        history = manifest.data.get("history") or {}
        for name in (paths.events.name, paths.console_log.name):
            if name in history:  # type: ignore[operator]
                (paths.dir / name).write_bytes(base64.b64decode(str(history[name])))  # type: ignore[index]
                self._give(paths.dir / name)
        return base

    async def _receive(
        self, paths: VmPaths, record: VmRecord, binary: str, *, block: bool
    ) -> IncomingMigration:
        """Start a QEMU waiting for the state (and, for a block migration, serving its
        root disk over NBD); where the source sends them."""
        self.faults.check("prepare_incoming", record.id)
        async with self._host_lock:
            self._check_memory(record.id, record.memory_mib)
            vnc_port = self._pick_vnc_port()
            http_ports = [_free_port() for _ in record.nics] if self.forward_http else []
            self._booting[record.id] = record.memory_mib
            self._reserved_ports.add(vnc_port)
        try:
            record.vnc_port, record.http_ports, record.root_node = vnc_port, http_ports, "root"
            record.power, record.stopped_by = "running", None
            save_record(paths.record, record)
            await self._launch(binary, record, incoming=True, paused=block)
            port = _free_port()
            disks_uri = None
            async with self._qmp(paths, record.id) as qmp:
                await qmp.execute(
                    "set_password", {"protocol": "vnc", "password": secrets.token_urlsafe(6)}
                )
                if block:
                    disks_uri = await serve_root(qmp, self.console_host, _free_port(), "root")
                await qmp.execute("migrate-incoming", {"uri": f"tcp:{self.console_host}:{port}"})
            uri = f"tcp:{self.console_host}:{port}"
            return IncomingMigration(record.id, self.hostname, uri, disks_uri)
        finally:
            self._booting.pop(record.id, None)
            self._reserved_ports.discard(vnc_port)

    async def migrate_vm(
        self,
        vm_id: str,
        target: IncomingMigration,
        *,
        downtime_limit_ms: int = 300,
        timeout: float = 600.0,
        progress: ProgressCallback | None = None,
    ) -> MigrationResult:
        began = time.monotonic()
        deadline = began + timeout
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            self._require_state(observed, "running")
            paths, record = self.paths(vm_id), observed.record
            async with self._qmp(paths, vm_id) as qmp:
                if target.disks_uri is not None:
                    # The destination holds the image: only the top layer's data travels,
                    # unless live snapshots left a chain (then all of it, flattened).
                    sync = "top" if len(record.root_layers) == 1 else "full"
                    await mirror_root(
                        qmp, record.root_node, target.disks_uri, sync=sync, timeout=timeout
                    )
                try:
                    info = await migrate(
                        qmp,
                        target.uri,
                        downtime_limit_ms=downtime_limit_ms,
                        timeout=max(1.0, deadline - time.monotonic()),
                        progress=progress,
                        fault=lambda: self.faults.check("migrate", vm_id),
                    )
                finally:
                    if target.disks_uri is not None:
                        # After a transfer: a clean end (the copies are equal, the guest
                        # is paused); after a failure: the copy abandoned, guest runs here.
                        await asyncio.shield(end_mirror(qmp))
            # The guest runs on the destination now: end this QEMU, forget the VM here.
            if observed.pid is not None:
                await self._quit(paths, observed.pid)
            shutil.rmtree(paths.dir, ignore_errors=True)
        self._locks.pop(vm_id, None)
        self._status_locks.pop(vm_id, None)
        ram = info.get("ram", {})
        return MigrationResult(
            vm_id,
            total_seconds=time.monotonic() - began,
            downtime_ms=float(info.get("downtime", 0)),
            transferred_bytes=int(ram.get("transferred", 0)),
        )

    async def finish_incoming(self, vm_id: str) -> VmStatus:
        async with self._lock(vm_id):
            paths = self.paths(vm_id)
            record = load_record(paths.record)
            if not paths.incoming.exists() or record is None:
                raise VmNotFound(vm_id)
            block = paths.incoming.read_text() == "block"
            deadline = time.monotonic() + 30.0
            while True:
                pid = live_pid(paths.pidfile, str(paths.dir))
                if pid is None:
                    raise BackendFailure(f"the QEMU receiving {vm_id} is gone")
                runstate = await self._runstate(paths, vm_id)
                if runstate == "running":
                    break
                if block and runstate == "paused":
                    # The state is in and the source ended its disk copy: stop serving
                    # the disk, then let the guest run here.
                    async with self._qmp(paths, vm_id) as qmp:
                        await stop_serving(qmp)
                        await qmp.execute("cont")
                    continue
                if time.monotonic() > deadline:
                    raise BackendFailure(f"{vm_id} did not start after its migration: {runstate}")
                await asyncio.sleep(0.02)
            paths.incoming.unlink()
            append_event(paths.events, "migrate-in")
            return self._status(self._classify(record, pid, runstate))

    async def abort_incoming(self, vm_id: str) -> None:
        try:
            paths = self.paths(vm_id)
        except VmNotFound:
            return
        async with self._lock(vm_id):
            if paths.incoming.exists():
                self._purge(paths)

    # -- root disk snapshots ---------------------------------------------------------------
    #
    # Internal qcow2 snapshots of the root disk's active layer: taken and deleted through
    # QMP while QEMU holds the image (``blockdev-snapshot-internal-sync``: crash-consistent,
    # the guest goes on), with ``qemu-img snapshot`` when it is stopped; rollback only then.
    # They live inside the file, so they follow the disk and cost no chain to manage.

    async def snapshot_root(self, vm_id: str, snapshot_id: str) -> None:
        self._check_snapshot_id(snapshot_id)
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            if snapshot_id in await self._root_snapshots(observed):
                return
            self.faults.check("snapshot_root", vm_id)
            await self._root_snapshot_op(
                observed, snapshot_id, "blockdev-snapshot-internal-sync", "-c"
            )

    async def rollback_root(self, vm_id: str, snapshot_id: str) -> None:
        self._check_snapshot_id(snapshot_id)
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            self._require_state(observed, "stopped")
            if snapshot_id not in await self._root_snapshots(observed):
                raise InvalidSpec(f"VM {vm_id}'s root disk has no snapshot {snapshot_id}")
            self.faults.check("rollback_root", vm_id)
            await tools.check(["qemu-img", "snapshot", "-a", snapshot_id, self._top(observed)])
            append_event(self.paths(vm_id).events, f"rollback {snapshot_id}")

    async def delete_root_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        self._check_snapshot_id(snapshot_id)
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            if snapshot_id not in await self._root_snapshots(observed):
                return
            self.faults.check("delete_root_snapshot", vm_id)
            await self._root_snapshot_op(
                observed, snapshot_id, "blockdev-snapshot-delete-internal-sync", "-d"
            )

    async def list_root_snapshots(self, vm_id: str) -> list[str]:
        async with self._lock(vm_id):
            return await self._root_snapshots(await self._require(vm_id))

    def _top(self, observed: _Observed) -> str:
        return str(self.paths(observed.record.id).dir / observed.record.root_layers[-1])

    async def _root_snapshot_op(
        self, observed: _Observed, snapshot_id: str, command: str, flag: str
    ) -> None:
        """Through the QEMU that holds the root disk (QMP ``command``), else with
        ``qemu-img snapshot <flag>`` on the file of a stopped VM."""
        if _held_by_qemu(observed):
            async with self._qmp(self.paths(observed.record.id), observed.record.id) as qmp:
                args = {"device": observed.record.root_node, "name": snapshot_id}
                await qmp.execute(command, args)
            return
        await tools.check(["qemu-img", "snapshot", flag, snapshot_id, self._top(observed)])

    async def _root_snapshots(self, observed: _Observed) -> list[str]:
        info = await qemu_img_info(Path(self._top(observed)))  # -U: QEMU may hold it
        snapshots = info.get("snapshots") or []
        return [str(s["name"]) for s in snapshots]  # type: ignore[attr-defined]

    @staticmethod
    def _check_snapshot_id(snapshot_id: str) -> None:
        if not DEVICE_ID.fullmatch(snapshot_id):
            raise InvalidSpec(f"{snapshot_id!r} cannot name a snapshot")

    # -- cold migration -------------------------------------------------------------------

    async def export_root_changes(self, vm_id: str, target: Path) -> None:
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            self._require_state(observed, "stopped")
            record = observed.record
            top = self.paths(vm_id).dir / record.root_layers[-1]
            base = await self.images.ensure(record.image_id)
            part = target.with_name(f".{target.name}.part")
            # -B: the copy is an overlay on the image and holds only the clusters the chain
            # has above it (the VM's own writes, snapshots folded in): what must travel.
            argv = ["qemu-img", "convert", "-q", "-O", "qcow2", "-B", str(base), "-F", "qcow2"]
            try:
                await tools.check([*argv, str(top), str(part)], timeout=EXPORT_TIMEOUT)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
                raise
            os.replace(part, target)

    async def receive_stopped(self, manifest: MigrationManifest, root_changes: Path) -> VmStatus:
        if manifest.data.get("mode") != "cold":
            raise InvalidSpec(f"the manifest of {manifest.vm_id} is not a cold migration's")
        vm_id = manifest.vm_id
        paths = self._arrival_paths(vm_id)
        async with self._lock(vm_id):
            record = self._begin_arrival(paths, manifest, paths.creating)
            paths.creating.touch()
            try:
                base = await self._build_disks(paths, record, manifest)
                self.faults.check("receive_stopped", vm_id)
                # The copied changes become the root disk, over this host's image.
                part = paths.dir / ".root-changes"
                shutil.move(str(root_changes), part)
                rebase = ["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2"]
                await tools.check([*rebase, "-b", str(base), str(part)])
                os.chmod(part, 0o600)
                os.replace(part, paths.root_disk)
                self._give(paths.root_disk)
                record.power, record.stopped_by = "stopped", "api"
                record.vnc_port, record.http_ports = None, []
                save_record(paths.record, record)
                append_event(paths.events, "migrate-in")
                paths.creating.unlink()
            except BaseException:
                self._purge(paths)
                raise
        return self._status(_Observed(record, None, None, "stopped", "api"))

    # -- export ----------------------------------------------------------------------------

    def _export_file(self, export_id: str) -> Path:
        if not DEVICE_ID.fullmatch(export_id):
            raise InvalidSpec(f"{export_id!r} cannot name an export")
        return self.state_dir / "exports" / f"{export_id}.qcow2"

    async def export_root_disk(self, vm_id: str, export_id: str) -> Path:
        target = self._export_file(export_id)
        if target.exists():
            return target
        async with self._lock(vm_id):
            observed = await self._require(vm_id)
            # A running guest's disk is not consistent; a stopped one holds still.
            self._require_state(observed, "stopped")
            top = self.paths(vm_id).dir / observed.record.root_layers[-1]
            target.parent.mkdir(mode=0o700, exist_ok=True)
            part = target.with_suffix(".part")
            # convert follows the backing chain: the copy stands alone and holds only
            # the clusters the chain has, so it is as compact as the disk's data.
            argv = ["qemu-img", "convert", "-q", "-O", "qcow2", str(top), str(part)]
            try:
                await tools.check(argv, timeout=EXPORT_TIMEOUT)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
                raise
            os.replace(part, target)
        return target

    async def drop_root_disk_export(self, export_id: str) -> None:
        target = self._export_file(export_id)
        for path in (target, target.with_suffix(".part")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # -- helpers ---------------------------------------------------------------------------

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    @asynccontextmanager
    async def _qmp(self, paths: VmPaths, vm_id: str) -> AsyncIterator[Qmp]:
        async with qmp_session(paths.qmp_socket, vm_id) as qmp:
            yield qmp

    def _binary(self) -> str:
        if self.binary is None:
            raise BackendFailure(f"qemu-system-{self.arch} is not installed on {self.hostname}")
        return self.binary

    async def _machine_type(self) -> str:
        """The versioned machine type new VMs get (``MACHINE_ALIAS``); recorded per VM so
        it stays."""
        if self._machine_type_cache is None:
            result = await tools.run([self._binary(), "-machine", "help"], timeout=60)
            self._machine_type_cache = parse_machine_help(result.stdout) or MACHINE_ALIAS
        return self._machine_type_cache

    def _machine(
        self, record: VmRecord, *, incoming: bool = False, paused: bool = False
    ) -> QemuMachine:
        paths = self.paths(record.id)
        return QemuMachine(
            root_file=paths.dir / record.root_layers[-1],
            disks=tuple(self._reachable(paths, d) for d in record.disks),
            slots=dict(record.pci_slots),
            incoming=incoming,
            incoming_paused=paused,
            run_as=None if self.run_as is None else self.run_as.name,
            vm_id=record.id,
            paths=paths,
            vcpus=record.vcpus,
            memory_mib=record.memory_mib,
            sizing=tuple(sizing_options(record)),
            machine_type=record.machine_type,
            accel=record.accel if record.accel == self.accel else self.accel,
            seed_iso=paths.seed_iso(record.seed_serial),
            seed_node=f"seed-file-{record.seed_serial}",
            vnc_host=self.console_host,
            vnc_port=record.vnc_port,
            nics=tuple(
                self._nic(nic, record.http_ports[i] if i < len(record.http_ports) else None)
                for i, nic in enumerate(record.nics)
            ),
        )

    def _nic(self, nic: NicSpec, http_port: int | None) -> NicForward:
        """The NIC's backend: the network driver's tap for the port, or user-mode."""
        if self.nic_backend == "tap":
            return NicForward(nic, tap=device_name("tap", nic.id))
        return NicForward(nic, http_port)

    async def _launch(
        self, binary: str, record: VmRecord, *, incoming: bool = False, paused: bool = False
    ) -> None:
        """Launch QEMU; when another process took the VNC port since it was picked (other
        agents and test runs share the host), pick another and try again."""
        for attempt in range(VNC_RETRIES):
            try:
                machine = self._machine(record, incoming=incoming, paused=paused)
                await launch(build_command(binary, machine).argv)
                return
            except BackendFailure as exc:
                if "-vnc" not in exc.message or attempt == VNC_RETRIES - 1:
                    raise
            self._end_leftover(self.paths(record.id))
            async with self._host_lock:
                taken = record.vnc_port
                if taken is not None:
                    self._reserved_ports.add(taken)
                try:
                    record.vnc_port = self._pick_vnc_port()
                finally:
                    if taken is not None:
                        self._reserved_ports.discard(taken)

    def _check_run_as(self, name: str) -> RunAs:
        user = lookup_user(name)
        if user is None:
            raise InvalidSpec(f"no user {name!r} on {self.hostname} for QEMU to run as")
        if not traversable_by(self.vms_dir, user):
            raise InvalidSpec(
                f"{name} cannot reach {self.vms_dir}: QEMU opens files there after it drops "
                "its privileges (give the directories on the way the x bit for others)"
            )
        return user

    def _give(self, path: Path) -> None:
        """Hand a file QEMU may open after dropping privileges (``-runas``) to its user."""
        if self.run_as is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)

    def _check_arch(self, arch: str) -> None:
        if arch != self.arch:
            raise NotSupported(f"arch {arch}", f"host {self.hostname} runs {self.arch} guests only")

    def _records(self) -> list[tuple[VmPaths, VmRecord]]:
        found = []
        for vm_id in self._vm_ids():
            paths = VmPaths(self.vms_dir / vm_id)
            record = load_record(paths.record)
            if record is not None:
                found.append((paths, record))
        return found

    def _check_memory(self, vm_id: str, memory_mib: int) -> None:
        """Memory is never overcommitted: VMs whose QEMU runs (or boots) hold theirs."""
        held = sum(
            record.memory_mib
            for paths, record in self._records()
            if record.id != vm_id
            and record.id not in self._booting
            and live_pid(paths.pidfile, str(paths.dir)) is not None
        )
        held += sum(mib for other, mib in self._booting.items() if other != vm_id)
        free = host_memory_mib() - held
        if memory_mib > free:
            raise InsufficientResources(
                f"{memory_mib} MiB of memory requested, {free} MiB free on {self.hostname} "
                "(memory is not overcommitted)"
            )

    def _check_disk(self, gib: int, *, excluding: str) -> None:
        """Root disks are thin, but count at full size against the host's disk."""
        used = sum(r.root_disk_gib for _, r in self._records() if r.id != excluding)
        free = disk_gib(self.state_dir) - used
        if gib > free:
            raise InsufficientResources(f"root disk of {gib} GiB exceeds {free} GiB free disk")

    async def _check_image_fits(self, image_id: str, root_disk_gib: int) -> None:
        size = await self.images.virtual_size(image_id)
        if size > root_disk_gib * GIB:
            raise InvalidSpec(
                f"image {image_id} is {size / GIB:.2f} GiB; a {root_disk_gib} GiB root disk "
                "cannot hold it"
            )

    @staticmethod
    async def _make_root_disk(base: Path, target: Path, size_gib: int) -> None:
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2"]
        try:
            await tools.check([*argv, str(target), f"{size_gib}G"])
        except BackendFailure:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            raise
        os.chmod(target, 0o600)

    def _pick_vnc_port(self) -> int:
        used = set(self._reserved_ports)
        for paths, record in self._records():
            if record.vnc_port is not None and live_pid(paths.pidfile, str(paths.dir)):
                used.add(record.vnc_port)
        for port in range(VNC_BASE_PORT, VNC_BASE_PORT + VNC_PORTS):
            if port not in used and _port_free(self.console_host, port):
                return port
        raise InsufficientResources(f"no free VNC port on {self.console_host}")

    def _purge(self, paths: VmPaths) -> None:
        """Remove everything of a VM now (clean-up paths: works even when cancelled)."""
        self._end_leftover(paths)
        shutil.rmtree(paths.dir, ignore_errors=True)


def _layout(record: VmRecord) -> None:
    """PCI slots for every NIC and data disk (kept ones stay), none for removed ones."""
    devices = [nic_ids(n)[0] for n in record.nics] + [disk_ids(d)[0] for d in record.disks]
    for stale in set(record.pci_slots) - set(devices):
        record.release_slot(stale)
    for device in devices:
        record.slot(device)


async def _make_overlay(backing_name: str, target: Path, size_gib: int) -> None:
    """A qcow2 overlay naming its backing file relatively (resolved in its own directory).

    ``-u``: the backing file is not opened (a running QEMU holds its write lock).
    """
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing_name, "-F", "qcow2"]
    await tools.check([*argv, str(target), f"{size_gib}G"])
    os.chmod(target, 0o600)


def _held_by_qemu(observed: _Observed) -> bool:
    """A QEMU runs the VM and holds its disks (changes go through QMP, not files)."""
    return observed.pid is not None and observed.state in ("running", "paused")


HISTORY_BYTES = 96 * 1024
"""How much of a VM's console log and event log travels with it (in one bus message)."""


def _tail(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            return f.read()
    except FileNotFoundError:
        return b""


def _is_file(path: str) -> bool:
    return Path(path).is_file()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
