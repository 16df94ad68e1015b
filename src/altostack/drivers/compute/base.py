"""The compute driver interface: what an agent may ask of a hypervisor, and the promises.

Every backend (``sim`` now, ``qemu`` next) implements :class:`ComputeDriver` and passes
``tests/contract/test_compute_contract.py``. The contract of each method is written in its
docstring; the contract suite has a test for every sentence. Optional features are not
separate interfaces but flags in :class:`ComputeCapabilities`: a backend that lacks one
raises :class:`~altostack.drivers.errors.NotSupported` and the control plane plans around
it (stop-resize-start instead of a live resize).

Shared rules for every method:

- The driver holds no authoritative state. Everything it reports it reads from the host, so
  a new driver instance (an agent restart) sees the same VMs, running ones included, and
  VMs are never children of the agent process.
- Operations on one VM are serialised; operations on different VMs run concurrently.
- Errors are the typed ones in :mod:`altostack.drivers.errors`. A missing VM is
  ``VmNotFound`` (except for ``get_vm`` and ``delete_vm``); a VM in the wrong state is
  ``InvalidState`` naming its current state. A failed operation leaves the VM as it was.
- Cancelling a call (``asyncio.CancelledError``) cleans up like a failure and propagates.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from altostack.drivers.storage.base import StorageDriver

from altostack.drivers.errors import InvalidSpec, NotSupported

PowerState = Literal["running", "stopped"]
"""What a spec may ask for."""
VmState = Literal["running", "stopped", "paused", "crashed"]
"""What a host may report."""
StoppedBy = Literal["api", "guest"]
Accel = Literal["kvm", "tcg", "sim"]

DEFAULT_USER = "root"
"""The guest user whose password ``VmSpec.password`` sets."""


@dataclass(frozen=True)
class NicSpec:
    """One virtual NIC: the port ``id`` on network ``network_id``."""

    id: str
    mac: str
    ip: str
    network_id: str


DiskFormat = Literal["qcow2", "raw"]
DEVICE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
"""What a disk or snapshot id must look like (QEMU's rule for device and node names)."""


@dataclass(frozen=True)
class DiskSpec:
    """A data disk to attach: an image file on the host (made by the storage layer).

    ``id`` names the attachment (the volume id): it is what ``detach_disk`` takes and must
    be a valid device name (a letter, then letters, digits, ``-``, ``_`` or ``.``).
    """

    id: str
    path: str
    format: DiskFormat = "qcow2"
    read_only: bool = False
    protocol: tuple[tuple[str, str], ...] = ()
    """Instead of the host file ``path``: the storage backend's QEMU protocol node as
    (key, value) pairs, e.g. ``CephStorageDriver.qemu_blockdev`` (driver rbd, pool, image,
    conf, user) with ``format="raw"``. Empty for a host file."""

    def __post_init__(self) -> None:
        # pairs come back as lists from a JSON record; keep the spec hashable and comparable
        object.__setattr__(self, "protocol", tuple((str(k), str(v)) for k, v in self.protocol))


@dataclass(frozen=True)
class DiskSnapshot:
    """An external snapshot of a VM disk: ``frozen`` no longer changes, ``active`` takes
    the writes from now on (a qcow2 overlay whose backing file is ``frozen``)."""

    id: str
    vm_id: str
    disk_id: str
    frozen: str
    active: str
    created_at: datetime


@dataclass(frozen=True)
class MigrationManifest:
    """What a destination needs to receive a VM: produced by the source, opaque, JSON-able.

    It travels through the control plane between the two agents.
    """

    vm_id: str
    source_host: str
    data: Mapping[str, object] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class IncomingMigration:
    """A destination ready to receive ``vm_id`` at ``uri`` (JSON-able, goes to the source)."""

    vm_id: str
    host: str
    uri: str


@dataclass(frozen=True)
class MigrationProgress:
    """One look at a migration under way (``status`` as QEMU names it)."""

    status: str
    transferred_bytes: int = 0
    remaining_bytes: int = 0
    total_bytes: int = 0


@dataclass(frozen=True)
class MigrationResult:
    """How a finished migration went: wall time, and how long the guest was stopped."""

    vm_id: str
    total_seconds: float
    downtime_ms: float
    transferred_bytes: int


ProgressCallback = Callable[[MigrationProgress], None]


@dataclass(frozen=True)
class VmSpec:
    """The desired VM, as the control plane last wrote it (``generation`` increases)."""

    id: str
    name: str
    generation: int
    vcpus: int
    memory_mib: int
    root_disk_gib: int
    image_id: str
    _: KW_ONLY
    arch: str = "x86_64"
    power_state: PowerState = "running"
    hostname: str | None = None
    """None: the guest's hostname is ``name``."""
    password: str | None = field(default=None, repr=False)
    ssh_keys: tuple[str, ...] = ()
    user_data: str | None = field(default=None, repr=False)
    nics: tuple[NicSpec, ...] = ()
    gpus: tuple[str, ...] = ()
    """PCI addresses of host GPUs passed through to the guest."""
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.vcpus < 1 or self.memory_mib < 1 or self.root_disk_gib < 1:
            raise ValueError("vcpus, memory_mib and root_disk_gib must be positive")
        if self.generation < 0:
            raise ValueError("generation must not be negative")
        if self.power_state not in ("running", "stopped"):
            raise ValueError(
                f"power_state must be 'running' or 'stopped', not {self.power_state!r}"
            )
        # Own the collections, so a caller changing its list or dict cannot change the spec.
        # (metadata stays a plain dict, typed read-only: dataclasses.asdict, copy and pickle
        # must work on specs, and a mappingproxy breaks all three.)
        object.__setattr__(self, "ssh_keys", tuple(self.ssh_keys))
        object.__setattr__(self, "nics", tuple(self.nics))
        object.__setattr__(self, "gpus", tuple(self.gpus))
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def guest_hostname(self) -> str:
        return self.hostname or self.name


@dataclass(frozen=True)
class ConsoleEndpoint:
    """Where a VM's graphical console listens.

    ``password`` is only set on what :meth:`ComputeDriver.console` returns; status reports
    travel widely and never carry it.
    """

    host: str
    port: int
    protocol: str = "vnc"
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class VmStatus:
    """What the host reports about one VM.

    ``generation`` is the last spec generation fully applied. ``stopped_by`` is set only
    when ``state == "stopped"``: ``"guest"`` when the guest powered itself off (the control
    plane then updates the spec instead of starting it again), else ``"api"``.
    ``started_at`` is when the VM was last powered on (a reboot keeps it); ``None`` unless
    running or paused. ``console`` is the console listener while the VM runs or is paused.
    """

    id: str
    state: VmState
    generation: int
    vcpus: int
    memory_mib: int
    started_at: datetime | None
    stopped_by: StoppedBy | None
    console: ConsoleEndpoint | None
    image_id: str | None = None
    """The image the root disk was (re)installed from."""
    accel: Accel | None = None
    """The accelerator the VM runs (or will next run) with: ``kvm``, ``tcg`` or ``sim``."""


@dataclass(frozen=True)
class DiskStats:
    """Cumulative I/O counters of one virtual disk since its VM's process started."""

    name: str
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


@dataclass(frozen=True)
class NicStats:
    """Cumulative traffic counters of one virtual NIC, from the guest's side (``rx``: what
    the guest received)."""

    name: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True)
class VmStats:
    """Resource counters of a running VM, for monitoring and accounting.

    Counters are cumulative since ``started_at`` (the VM's current process): a consumer
    computes rates from two samples and treats a new ``started_at`` as a counter reset.
    ``nics`` lists only NICs whose backend the host can count.
    """

    id: str
    collected_at: datetime
    started_at: datetime | None
    cpu_time_ns: int
    """CPU time (user + system) the VM's process used: vCPUs and device emulation."""
    memory_rss_bytes: int
    """Host memory the VM's process holds now."""
    memory_mib: int
    """The memory the guest was given."""
    vcpus: int
    disks: tuple[DiskStats, ...] = ()
    nics: tuple[NicStats, ...] = ()


@dataclass(frozen=True)
class Gpu:
    pci_address: str
    model: str


@dataclass(frozen=True)
class HostInfo:
    """The host's capacity (not its usage: placement claims live in the control plane)."""

    hostname: str
    arch: str
    cores: int
    memory_mib: int
    disk_gib: int
    gpus: tuple[Gpu, ...]
    accel: Accel


@dataclass(frozen=True)
class ComputeCapabilities:
    """What this backend can do beyond the basics; absent features raise NotSupported."""

    live_resize_cpu: bool = False
    """vCPUs can be added to a running VM."""
    live_resize_memory: bool = False
    """Memory can be added to a running VM."""
    live_migration: bool = False
    """``prepare_incoming`` / ``migrate_vm`` move a running VM to another host."""
    hot_plug_disk: bool = False
    """``attach_disk`` / ``detach_disk`` work on a running (or paused) VM."""
    hot_plug_nic: bool = False
    """``ensure_vm`` may change the NICs of a running VM."""
    pause: bool = False
    """``pause_vm`` / ``resume_vm`` work."""
    console: bool = False
    """``console`` returns a graphical console endpoint."""
    live_disk_snapshot: bool = False
    """``snapshot_disk`` works on a running (or paused) VM."""


def check_disk_spec(disk: DiskSpec) -> None:
    """An attachable disk: a device-name id and a known format."""
    if not DEVICE_ID.fullmatch(disk.id) or disk.id in ("root", "seed"):
        raise InvalidSpec(f"{disk.id!r} cannot name a disk")
    if disk.format not in ("qcow2", "raw"):
        raise InvalidSpec(f"disk format {disk.format!r} is not qcow2 or raw")
    if not disk.path:
        raise InvalidSpec(f"disk {disk.id!r} has no path")


class ComputeDriver(abc.ABC):
    """One hypervisor host, seen by its agent."""

    root_disk_storage: StorageDriver | None = None
    """The storage pool that holds this driver's root disks (volume ``<vm id>-root``),
    when it keeps them in one: the agent exports disks as images through it. None when
    the disks live elsewhere (export is then refused as not supported)."""

    @property
    @abc.abstractmethod
    def capabilities(self) -> ComputeCapabilities:
        """The optional features; constant for the life of the driver."""

    async def export_root_disk(self, vm_id: str, export_id: str) -> Path:
        """A standalone qcow2 copy of stopped ``vm_id``'s root disk, made once per export.

        For drivers whose root disks live outside a storage pool (``root_disk_storage``
        is None): the copy pins the disk as it was, whatever the VM does next. Idempotent
        per ``export_id``; a copy interrupted by a crash is redone, never served.
        """
        raise NotSupported("export", "this host keeps no root disks the agent can export")

    async def drop_root_disk_export(self, export_id: str) -> None:
        """Remove the copy made by :meth:`export_root_disk`; a missing one is fine."""
        return None

    @abc.abstractmethod
    async def host_info(self) -> HostInfo:
        """The host's architecture, capacity, GPUs and the accelerator in use."""

    @abc.abstractmethod
    async def list_vms(self) -> list[VmStatus]:
        """Every VM found on the host, sorted by id.

        Includes VMs the control plane may not know (orphans: made by an earlier agent, or
        by hand) so it can report them; never VMs whose creation has not finished.
        """

    @abc.abstractmethod
    async def get_vm(self, vm_id: str) -> VmStatus | None:
        """The VM's status, or ``None`` when it does not exist (not an error)."""

    @abc.abstractmethod
    async def ensure_vm(self, spec: VmSpec, *, stop_timeout: float = 60.0) -> VmStatus:
        """Make the VM exist and look like ``spec``; the reconcilers' one verb.

        - Creates the VM when missing: root disk from ``spec.image_id`` of
          ``spec.root_disk_gib``, then powers it on if ``spec.power_state == "running"``.
        - Idempotent: calling it again with the same spec changes nothing (a running VM is
          not restarted) and concurrent calls for one id never create two VMs.
        - Converges an existing VM: power state (a stop is graceful, forced after
          ``stop_timeout`` seconds; a crashed or guest-stopped VM whose spec says running
          is started again; a paused one resumed), size and NICs. Changes that cannot be
          applied to a running VM (shrinking, growing without the live capability, GPUs,
          NICs without ``hot_plug_nic``) raise ``InvalidState(current, "stopped")``:
          stop it, or put ``power_state="stopped"`` in the spec, and ensure again.
          The root disk is made once: ``image_id`` and ``root_disk_gib`` changes need
          :meth:`reinstall_vm`.
        - Records ``spec.generation`` as applied once everything converged; a spec whose
          generation is *older* than the applied one is stale and changes nothing.
        - A VM that would run beyond the host's memory, disk or free GPUs raises
          ``InsufficientResources``; another architecture raises ``NotSupported``.
        - A failed create cleans up after itself: nothing of the VM remains, not even
          after a failed first boot, and the same ensure can simply be retried.
        """

    @abc.abstractmethod
    async def start_vm(self, vm_id: str) -> VmStatus:
        """Power the VM on.

        Start of a running VM is a no-op; a stopped or crashed VM boots; a paused one
        raises ``InvalidState`` (resume it). ``InsufficientResources`` when the host lacks
        the memory or GPUs to run it; the VM then stays stopped.
        """

    @abc.abstractmethod
    async def stop_vm(self, vm_id: str, *, timeout: float, force: bool = False) -> VmStatus:
        """Power the VM off: ask the guest (ACPI), and pull the plug after ``timeout`` s.

        ``force=True`` pulls the plug at once. Stop of a stopped VM is a no-op; a paused VM
        is resumed so it can shut down cleanly; a crashed VM is cleaned up. The VM ends
        ``stopped`` with ``stopped_by="api"``.
        """

    @abc.abstractmethod
    async def reboot_vm(self, vm_id: str, *, hard: bool = False) -> VmStatus:
        """Restart the guest OS: soft via ACPI/ctrl-alt-del, ``hard`` via a reset.

        Needs a running VM (``InvalidState`` otherwise); the VM stays running and keeps
        its ``started_at``.
        """

    @abc.abstractmethod
    async def resize_vm(self, vm_id: str, vcpus: int, memory_mib: int, *, live: bool) -> VmStatus:
        """Change the VM's vCPUs and memory.

        - A resize to the current size is a no-op, whatever the state.
        - ``live=True`` needs a running VM (``InvalidState`` otherwise) and only grows:
          a smaller value raises ``NotSupported("live downsizing")`` and growing a
          dimension without its capability (``live_resize_cpu`` /
          ``live_resize_memory``) raises ``NotSupported`` naming the capability. Nothing
          is changed unless every dimension can be.
        - ``live=False`` needs a stopped (or crashed) VM: a running or paused VM raises
          ``InvalidState`` naming its state; any positive size is allowed.
        - Growing memory beyond the host's free memory raises ``InsufficientResources``.
        """

    @abc.abstractmethod
    async def reinstall_vm(self, spec: VmSpec) -> VmStatus:
        """Replace the root disk with a fresh one from ``spec.image_id``; the VM ends stopped.

        Needs a stopped or crashed VM (``InvalidState`` otherwise: stop it gracefully first,
        data disks may be attached). Applies the whole spec (size, hostname, password, keys,
        user data) and records its generation. The old root disk's data is gone.
        """

    @abc.abstractmethod
    async def set_password(self, vm_id: str, user: str, password: str) -> None:
        """Set a guest user's password: at once where the backend can, else at next boot.

        Works in any state; the latest call wins.
        """

    @abc.abstractmethod
    async def pause_vm(self, vm_id: str) -> VmStatus:
        """Freeze a running VM's vCPUs (memory stays allocated).

        ``NotSupported`` without the ``pause`` capability; pausing a paused VM is a no-op;
        any other state raises ``InvalidState``.
        """

    @abc.abstractmethod
    async def resume_vm(self, vm_id: str) -> VmStatus:
        """Continue a paused VM.

        ``NotSupported`` without the ``pause`` capability; resuming a running VM is a
        no-op; any other state raises ``InvalidState``.
        """

    @abc.abstractmethod
    async def console(self, vm_id: str) -> ConsoleEndpoint:
        """The VM's console endpoint with a fresh password; earlier passwords stop working.

        ``NotSupported`` without the ``console`` capability; the VM must be running or
        paused (``InvalidState`` otherwise).
        """

    @abc.abstractmethod
    def console_output(self, vm_id: str, lines: int | None = None) -> str:
        """The last ``lines`` lines of the VM's serial console log (all of it with None).

        The log spans the VM's boots and survives a stop; a VM never started has an empty
        one. ``VmNotFound`` for a missing VM. Synchronous on purpose: it only reads what
        the host already wrote and never waits for the guest.
        """

    @abc.abstractmethod
    async def vm_stats(self, vm_id: str) -> VmStats:
        """CPU time, memory, disk and network counters of a running or paused VM.

        ``VmNotFound`` for a missing VM; a VM that is not running or paused has no process
        to count and raises ``InvalidState``.
        """

    @abc.abstractmethod
    async def delete_vm(self, vm_id: str) -> None:
        """Destroy the VM in whatever state (power cut, root disk removed).

        Delete of a missing VM succeeds, so a retried delete is harmless.
        """

    # -- disks -------------------------------------------------------------------------

    async def attach_disk(self, vm_id: str, disk: DiskSpec) -> None:
        """Attach a data disk; it stays attached across stops, starts and agent restarts.

        - A stopped or crashed VM gets it at its next start; a running or paused VM gets it
          at once (hot-plug), which needs ``hot_plug_disk`` (``NotSupported`` otherwise).
        - Attaching the same spec again is a no-op; another disk under an attached id
          raises ``InvalidSpec``, as does an id that cannot name a device.
        - A failed attach leaves the VM as it was.
        """
        raise NotSupported("hot_plug_disk")

    async def detach_disk(self, vm_id: str, disk_id: str, *, timeout: float = 30.0) -> None:
        """Detach a data disk; detaching a disk that is not attached succeeds.

        On a running VM (``hot_plug_disk`` needed) the guest is asked to release the
        device and given ``timeout`` seconds (``DriverTimeout`` after that, the disk stays
        attached). The disk's file is left alone.
        """
        raise NotSupported("hot_plug_disk")

    async def list_disks(self, vm_id: str) -> list[DiskSpec]:
        """The data disks attached to the VM (not the root disk), in attachment order."""
        raise NotSupported("hot_plug_disk")

    async def snapshot_disk(
        self, vm_id: str, snapshot_id: str, *, disk_id: str = "root"
    ) -> DiskSnapshot:
        """Freeze the disk's current layer and continue on a new overlay (external snapshot).

        Works on a stopped VM; on a running or paused one it needs ``live_disk_snapshot``,
        and the VM keeps running. ``disk_id`` is ``"root"`` (data disks belong to the
        storage layer's snapshots). A snapshot id already taken raises ``InvalidSpec``.
        The overlay stays the active layer across restarts.
        """
        raise NotSupported("live_disk_snapshot")

    async def resize_disk(self, vm_id: str, disk_id: str, size_gib: int) -> None:
        """Tell a running VM that attached data disk ``disk_id`` is now ``size_gib``.

        On QEMU this is ``block_resize``: it grows the image itself (a qcow2 file QEMU holds
        cannot be grown by anyone else) and the guest sees the new size without a reboot.
        A stopped VM needs nothing (the size is read at start). ``NotSupported`` where the
        hypervisor cannot.
        """
        raise NotSupported("online_disk_resize")

    async def snapshot_attached_disk(self, vm_id: str, disk_id: str, snapshot_id: str) -> None:
        """Take an internal (in-image) snapshot of attached data disk ``disk_id`` of a
        running VM, crash-consistent, through the hypervisor that holds the image (QEMU's
        ``blockdev-snapshot-internal-sync``). The storage layer records it."""
        raise NotSupported("live_disk_snapshot")

    # -- live migration ----------------------------------------------------------------

    async def migration_manifest(self, vm_id: str) -> MigrationManifest:
        """What a destination needs to receive this running VM (``live_migration``)."""
        raise NotSupported("live_migration")

    async def prepare_incoming(self, manifest: MigrationManifest) -> IncomingMigration:
        """Get ready to receive a VM: its resources are held, it is not listed yet.

        ``InsufficientResources`` when it cannot run here, ``InvalidSpec`` when the VM
        already exists here. Undo with :meth:`abort_incoming`.
        """
        raise NotSupported("live_migration")

    async def migrate_vm(
        self,
        vm_id: str,
        target: IncomingMigration,
        *,
        downtime_limit_ms: int = 300,
        timeout: float = 600.0,
        progress: ProgressCallback | None = None,
    ) -> MigrationResult:
        """Move a running VM to ``target`` while it keeps running.

        ``progress`` is called with each look at the transfer. On success the VM is gone
        from this host (its process ended, its record removed); the destination then
        :meth:`finish_incoming`. On failure (or ``timeout``) the transfer is cancelled,
        the VM stays running here and the error is raised; the destination should
        :meth:`abort_incoming`. Needs a running VM (``InvalidState`` otherwise).
        """
        raise NotSupported("live_migration")

    async def finish_incoming(self, vm_id: str) -> VmStatus:
        """The migration into this host succeeded: the VM is now this host's, running."""
        raise NotSupported("live_migration")

    async def abort_incoming(self, vm_id: str) -> None:
        """Give up receiving ``vm_id``: nothing of it remains here (a no-op if nothing)."""
        raise NotSupported("live_migration")
