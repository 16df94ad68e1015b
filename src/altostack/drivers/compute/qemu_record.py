"""A VM's record on the host: ``vm.json``, the configuration the driver applied.

It holds what the QEMU command line and the status reports need (size, machine type,
generation, power intent, when it was started) and never a secret (passwords live in the
seed). It is written atomically (temporary file + rename), so readers never see half of
one, and it is the only thing besides the QEMU process that the driver consults: a new
driver instance reads the same records and finds the same VMs.

``power`` is the driver's intent: ``running`` (it powered the VM on; a dead QEMU then
means a crash), ``stopping`` (a stop is under way), ``stopped``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from altostack.drivers.compute.base import Accel, DiskSpec, NicSpec, StoppedBy, VmSpec
from altostack.drivers.compute.qemu_cmdline import PciPlacement

PowerIntent = Literal["running", "stopping", "stopped"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class VmRecord:
    id: str
    name: str
    generation: int
    vcpus: int
    memory_mib: int
    root_disk_gib: int
    image_id: str
    arch: str
    machine_type: str
    accel: Accel
    hostname: str | None = None
    ssh_keys: list[str] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    gpus: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    power: PowerIntent = "stopped"
    stopped_by: StoppedBy | None = "api"
    started_at: str | None = None
    vnc_port: int | None = None
    http_ports: list[int] = field(default_factory=list)
    """Loopback ports forwarded to port 80 of each NIC (user-mode networking), this boot."""
    seed_serial: int = 1
    """The seed ISO in use is ``seed-<seed_serial>.iso``."""
    install_serial: int = 1
    """1 + the number of reinstalls; part of the seed's instance-id."""
    created_at: str = field(default_factory=now_iso)
    disks: list[DiskSpec] = field(default_factory=list)
    """Attached data disks (hot-plugged or not), in attachment order."""
    root_layers: list[str] = field(default_factory=lambda: ["root.qcow2"])
    """The root disk's chain in the VM directory, base first; the last takes the writes
    (each overlay names the one before by a relative backing path)."""
    root_node: str = "root"
    """The block node of the active root layer in the running QEMU (changes with live
    snapshots; ``root`` after every start)."""
    max_vcpus: int | None = None
    """``-smp maxcpus`` of the running QEMU (None: started with no room to add vCPUs)."""
    max_memory_mib: int | None = None
    """``-m maxmem`` of the running QEMU (None: started with no room to add memory)."""
    hot_cpus: list[dict[str, Any]] = field(default_factory=list)
    """vCPUs added live to the running QEMU (QOM type, id, topology); folded into
    ``vcpus`` at the next cold start."""
    dimms: list[dict[str, Any]] = field(default_factory=list)
    """DIMMs added live to the running QEMU (id, size); folded into ``memory_mib`` at
    the next cold start."""
    pci_slots: dict[str, int] = field(default_factory=dict)
    """Fixed PCI slots of NICs and data disks (device id -> slot), so a cold start and a
    migration destination lay the devices out as hot-plug left them."""

    FIRST_SLOT = 5
    """On i440fx slots 0-4 hold the host bridge, the ISA bridge, VGA, root and seed disks;
    the q35 hot-plug bridge keeps the same numbers."""
    LAST_SLOT = 31

    def slot(self, device_id: str) -> int:
        """The device's PCI slot, given the lowest free one on first use."""
        if device_id not in self.pci_slots:
            used = set(self.pci_slots.values())
            free = [s for s in range(self.FIRST_SLOT, self.LAST_SLOT + 1) if s not in used]
            if not free:
                raise ValueError("no free PCI slot")
            self.pci_slots[device_id] = free[0]
        return self.pci_slots[device_id]

    def release_slot(self, device_id: str) -> None:
        self.pci_slots.pop(device_id, None)

    def placement(self) -> PciPlacement:
        return PciPlacement.of(self.machine_type, self.pci_slots)

    @classmethod
    def from_spec(cls, spec: VmSpec, *, machine_type: str, accel: Accel) -> VmRecord:
        rec = cls(
            id=spec.id,
            name=spec.name,
            generation=spec.generation,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            root_disk_gib=spec.root_disk_gib,
            image_id=spec.image_id,
            arch=spec.arch,
            machine_type=machine_type,
            accel=accel,
        )
        rec.apply_guest_config(spec)
        return rec

    def apply_guest_config(self, spec: VmSpec) -> None:
        """Take the spec's descriptive and device fields (not size, disk or power)."""
        self.name = spec.name
        self.hostname = spec.hostname
        self.ssh_keys = list(spec.ssh_keys)
        self.nics = list(spec.nics)
        self.gpus = list(spec.gpus)
        self.metadata = dict(spec.metadata)

    @property
    def instance_id(self) -> str:
        return f"{self.id}-{self.install_serial}"

    @property
    def started(self) -> datetime | None:
        return None if self.started_at is None else datetime.fromisoformat(self.started_at)

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VmRecord:
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["nics"] = [NicSpec(**nic) for nic in data.get("nics", [])]
        data["disks"] = [DiskSpec(**disk) for disk in data.get("disks", [])]
        return cls(**data)


def load_record(path: Path) -> VmRecord | None:
    try:
        return VmRecord.from_json(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None


def save_record(path: Path, record: VmRecord) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(record.to_json())
    os.replace(tmp, path)


def append_event(path: Path, event: str) -> None:
    """One line in the VM's power event log: ``<UTC time> <event>``."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), path.open("a") as f:
        f.write(f"{now_iso()} {event}\n")


def read_events(path: Path) -> list[str]:
    """The events (without their times), oldest first."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line.split(" ", 1)[1] for line in lines if " " in line]
