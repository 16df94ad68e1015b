"""The QEMU command line of a VM, as data.

:func:`build_command` turns a :class:`QemuMachine` (everything a launch depends on) into a
:class:`QemuCommand`: a list of options whose values are either plain strings or
:class:`Props` (QEMU's ``driver,key=value,...`` syntax). Tests inspect the data
(``cmd.props("-device", "virtio-blk-pci")``), the driver runs ``cmd.argv``.

Choices (see docs/qemu.md):

- ``-no-user-config -nodefaults``: nothing QEMU adds on its own; every device is listed.
- ``-sandbox on,obsolete=deny,resourcecontrol=deny``: seccomp. ``elevateprivileges`` and
  ``spawn`` stay allowed because ``-daemonize`` needs ``fork`` and ``setsid``.
- ``-daemonize -pidfile``: the VM is never a child of the agent, it outlives it.
- ``-no-shutdown``: a guest power-off leaves QEMU alive in runstate ``shutdown``, so the
  driver can tell a guest shutdown from a crash (a dead process); it quits QEMU afterwards.
- ``-S``: the driver sets the VM up over QMP (console password) before ``cont``.
- Two QMP sockets: ``qmp.sock`` for operations, ``qmp-status.sock`` for status reads, so a
  status query never waits behind a long operation (QEMU serves one client per monitor).
- The serial console is a unix socket (for interactive use) that also logs to
  ``console.log`` (appended across boots), whether or not anyone is connected.
- Disks are ``-blockdev`` nodes with fixed names (``root``, ``seed``) so QMP can address
  them: the root disk is a qcow2 overlay, the NoCloud seed a read-only raw ISO whose file
  node can be swapped live (``blockdev-reopen``).
- No NIC unless the spec has one (``-nic none``). A NIC is either the tap the network
  driver made for its port on the VPC bridge (``nic_backend="tap"``:
  ``tap<hash of the port id>``) or user-mode networking with ``restrict=on`` (the guest
  reaches nothing outside; port 80 is forwarded from a loopback port so the host can reach
  the guest's HTTP server).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from altostack.drivers.compute.base import Accel, DiskSpec, NicSpec

SANDBOX = "on,obsolete=deny,resourcecontrol=deny"
TCG_TB_SIZE_MIB = 64
"""Translation cache size under TCG. QEMU's default (1 GiB) costs memory per VM; at 32 MiB
the test guest's boot filled it twice (each flush throws every translation away: ~0.4
CPU-s of retranslation per boot), 64 MiB holds a whole boot for ~32 MiB more RSS."""
MACHINE_ALIAS = "q35"
"""The machine new VMs get (its versioned name is recorded per VM, so VMs made on
``pc``/i440fx keep it). q35 because its interrupt routing table is a static package: on
i440fx the guest's ACPI interpreter runs an AML loop of 128 entries for every PCI device it
enables, ~0.25 s of guest time per virtio device under TCG (see docs/benchmarks.md)."""


def _escape(value: str) -> str:
    """QEMU option values double their commas."""
    return value.replace(",", ",,")


@dataclass(frozen=True)
class Props:
    """``head,key=value,...``: a device, backend or machine description."""

    head: str | None
    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, head: str | None = None, /, **items: str | int | bool | Path) -> Props:
        def text(v: str | int | bool | Path) -> str:
            if isinstance(v, bool):
                return "on" if v else "off"
            return str(v)

        return cls(head, tuple((k.replace("_", "-"), text(v)) for k, v in items.items()))

    def get(self, key: str) -> str | None:
        for k, v in self.items:
            if k == key:
                return v
        return None

    def __str__(self) -> str:
        parts = [] if self.head is None else [_escape(self.head)]
        parts += [f"{k}={_escape(v)}" for k, v in self.items]
        return ",".join(parts)


OptionValue = str | Props | None


@dataclass(frozen=True)
class QemuOption:
    name: str
    value: OptionValue = None

    def argv(self) -> list[str]:
        return [self.name] if self.value is None else [self.name, str(self.value)]


@dataclass(frozen=True)
class QemuCommand:
    binary: str
    options: tuple[QemuOption, ...]

    @property
    def argv(self) -> list[str]:
        return [self.binary, *(arg for option in self.options for arg in option.argv())]

    def values(self, name: str) -> list[OptionValue]:
        """Every value given to option ``name``, in order."""
        return [o.value for o in self.options if o.name == name]

    def has(self, name: str) -> bool:
        return any(o.name == name for o in self.options)

    def props(self, name: str, head: str | None = None) -> list[Props]:
        """The :class:`Props` values of option ``name`` (whose head is ``head`` if given)."""
        return [
            v
            for v in self.values(name)
            if isinstance(v, Props) and (head is None or v.head == head)
        ]

    def __str__(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class NicForward:
    """A NIC and its backend: user-mode networking (the address DHCP hands out, a port
    forward) unless ``tap`` names the host's tap device for it (the network driver's port,
    on the VPC's bridge; the VPC's router serves its DHCP)."""

    nic: NicSpec
    http_port: int | None = None
    """Loopback port forwarded to the guest's port 80, if any (user-mode only)."""
    tap: str | None = None


@dataclass(frozen=True)
class VmPaths:
    """Where one VM's files live: ``<state_dir>/vms/<vm_id>/``."""

    dir: Path

    @property
    def record(self) -> Path:
        """The VM's configuration and power intent (JSON, written atomically)."""
        return self.dir / "vm.json"

    @property
    def creating(self) -> Path:
        """Present while the VM is being created: such a VM is not listed."""
        return self.dir / ".creating"

    @property
    def root_disk(self) -> Path:
        """The base of the root disk's chain (live snapshots add overlays on it)."""
        return self.dir / "root.qcow2"

    @property
    def incoming(self) -> Path:
        """Present while the VM is being received by a live migration: not listed yet."""
        return self.dir / ".incoming"

    @property
    def seed_json(self) -> Path:
        return self.dir / "seed.json"

    def seed_iso(self, serial: int) -> Path:
        return self.dir / f"seed-{serial}.iso"

    @property
    def events(self) -> Path:
        """One line per power event the driver caused or saw (start, reset, stop...).

        Boots (``start``, ``reset ...``) name the size ``console.log`` had before them
        (``console=<bytes>``): that boot's console output starts there.
        """
        return self.dir / "events.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def status_socket(self) -> Path:
        return self.dir / "qmp-status.sock"

    @property
    def serial_socket(self) -> Path:
        return self.dir / "serial.sock"

    @property
    def console_log(self) -> Path:
        """The serial console's output, appended across boots."""
        return self.dir / "console.log"


@dataclass(frozen=True)
class QemuMachine:
    """Everything one launch of a VM depends on."""

    vm_id: str
    paths: VmPaths
    vcpus: int
    memory_mib: int
    machine_type: str
    accel: Accel
    seed_iso: Path | None = None
    seed_node: str = "seed-file"
    """Node name of the seed's file node (changes when the seed is swapped live)."""
    vnc_host: str = "127.0.0.1"
    vnc_port: int | None = None
    nics: tuple[NicForward, ...] = ()
    extra: tuple[QemuOption, ...] = field(default=())
    root_file: Path | None = None
    """The active layer of the root disk (default ``paths.root_disk``)."""
    disks: tuple[DiskSpec, ...] = ()
    slots: Mapping[str, int] = field(default_factory=dict)
    """PCI slot per device id (NICs and data disks); unlisted devices get QEMU's choice."""
    incoming: bool = False
    """Wait for a live migration (``-incoming defer``) instead of booting."""
    incoming_paused: bool = False
    """With ``incoming``: stay paused once the state arrived (a block migration resumes
    the guest only after the root disk copy has ended)."""
    run_as: str | None = None
    sizing: tuple[QemuOption, ...] = ()
    """``-smp``/``-m`` and devices added live, when the VM can grow while running
    (see :mod:`qemu_hotadd`); empty: plain ``-smp vcpus`` and ``-m memory_mib``."""
    """The unprivileged user QEMU switches to once it opened its files (``-runas``)."""


def _slirp_net(nic: NicSpec) -> dict[str, str]:
    """User-mode network options handing ``nic.ip`` out by DHCP (its /24 as the network)."""
    try:
        ip = ipaddress.IPv4Address(nic.ip)
    except ValueError:
        return {}
    net = ipaddress.IPv4Network(f"{ip}/24", strict=False)
    host_octet = int(ip) - int(net.network_address)
    if host_octet < 4 or host_octet > 254:  # .2 is slirp's gateway, .3 its DNS
        return {"net": str(net)}
    return {"net": str(net), "dhcpstart": str(ip)}


def nic_ids(nic: NicSpec) -> tuple[str, str]:
    """The QEMU ids of a NIC: (device, netdev), derived from the port id so hot-plug can
    address them."""
    return f"nic-{nic.id}", f"net-{nic.id}"


def disk_ids(disk: DiskSpec) -> tuple[str, str, str]:
    """The QEMU ids of a data disk: (device, format node, file node)."""
    return f"disk-{disk.id}", f"disk-{disk.id}", f"disk-{disk.id}-file"


HOTPLUG_BRIDGE = "hotplug0"
"""The id of a q35 VM's PCIe-to-PCI bridge that holds its NICs and data disks."""
HOTPLUG_BRIDGE_ADDR = "0x1e"
"""Its slot on ``pcie.0`` (fixed: a migration needs the same layout on both sides)."""


def hotplug_bus(machine_type: str) -> str | None:
    """The bus NICs and data disks sit on: the root bus of an i440fx VM, the hot-plug bridge
    of a q35 one.

    ``pcie.0`` takes no hot-plug, and a ``pcie-root-port`` per hot-plug slot made the boot
    slower than i440fx (27 ports: ~+1 s of guest time under TCG, mostly enumerating them).
    One bridge with ACPI hot-plug gives the same 27 slots for the price of one device, and
    keeps q35's static interrupt routing table, which is what makes q35 boot faster."""
    q35 = machine_type == "q35" or machine_type.startswith("pc-q35-")
    return HOTPLUG_BRIDGE if q35 else None


@dataclass(frozen=True)
class PciPlacement:
    """Where NICs and data disks go: their fixed slot, on the VM's hot-plug bus."""

    slots: Mapping[str, int]
    bus: str | None

    @classmethod
    def of(cls, machine_type: str, slots: Mapping[str, int]) -> PciPlacement:
        return cls(dict(slots), hotplug_bus(machine_type))

    def args(self, device_id: str) -> dict[str, str]:
        slot = self.slots.get(device_id)
        if slot is None:
            return {}
        where = {"addr": f"0x{slot:x}"}
        return where if self.bus is None else {"bus": self.bus, **where}


def nic_netdev_args(forward: NicForward) -> dict[str, Any]:
    """The NIC's backend, as QMP ``netdev_add`` arguments: its tap, else user-mode."""
    _, netdev = nic_ids(forward.nic)
    if forward.tap is not None:  # a persistent tap the network driver made: QEMU only opens it
        return {"type": "tap", "id": netdev, "ifname": forward.tap, "script": "no",
                "downscript": "no"}  # fmt: skip
    args: dict[str, Any] = {"type": "user", "id": netdev, "restrict": True}
    args.update(_slirp_net(forward.nic))
    if forward.http_port is not None:
        args["hostfwd"] = [{"str": f"tcp:127.0.0.1:{forward.http_port}-:80"}]
    return args


def nic_device_args(nic: NicSpec, placement: PciPlacement) -> dict[str, Any]:
    """The NIC's ``virtio-net-pci`` device, as QMP ``device_add`` arguments."""
    device, netdev = nic_ids(nic)
    return {"driver": "virtio-net-pci", "id": device, "netdev": netdev, "mac": nic.mac,
            **placement.args(device)}  # fmt: skip


def disk_blockdev_args(disk: DiskSpec) -> list[dict[str, Any]]:
    """The disk's file and format nodes, as QMP ``blockdev-add`` arguments (in order)."""
    _, node, file_node = disk_ids(disk)
    source = dict(disk.protocol) or {"driver": "file", "filename": disk.path}
    return [
        {**source, "node-name": file_node, "read-only": disk.read_only},
        {"driver": disk.format, "node-name": node, "file": file_node,
         "read-only": disk.read_only},
    ]  # fmt: skip


def disk_device_args(disk: DiskSpec, placement: PciPlacement) -> dict[str, Any]:
    device, node, _ = disk_ids(disk)
    return {"driver": "virtio-blk-pci", "id": device, "drive": node, **placement.args(device)}


def _props(head: str | None, args: Mapping[str, Any], *, skip: Iterable[str] = ()) -> Props:
    items: list[tuple[str, str]] = []
    for key, value in args.items():
        if key in skip:
            continue
        if isinstance(value, bool):
            items.append((key, "on" if value else "off"))
        elif isinstance(value, list):
            items += [(key, str(v["str"])) for v in value]
        else:
            items.append((key, str(value)))
    return Props(head, tuple(items))


def _nic_options(forward: NicForward, placement: PciPlacement) -> Iterator[QemuOption]:
    netdev = nic_netdev_args(forward)
    yield QemuOption("-netdev", _props(netdev["type"], netdev, skip=("type",)))
    device = nic_device_args(forward.nic, placement)
    yield QemuOption("-device", _props("virtio-net-pci", device, skip=("driver",)))


def _disk_options(disk: DiskSpec, placement: PciPlacement) -> Iterator[QemuOption]:
    for args in disk_blockdev_args(disk):
        yield QemuOption("-blockdev", _props(None, args))
    yield QemuOption(
        "-device", _props("virtio-blk-pci", disk_device_args(disk, placement), skip=("driver",))
    )


def build_command(binary: str, m: QemuMachine) -> QemuCommand:
    """The command line that launches ``m`` (daemonized, paused until ``cont``)."""
    opts: list[QemuOption] = []

    def add(name: str, value: OptionValue = None) -> None:
        opts.append(QemuOption(name, value))

    add("-name", Props.of(m.vm_id, process=f"alto-{m.vm_id}"))
    add("-no-user-config")
    add("-nodefaults")
    add("-machine", Props.of(m.machine_type))
    if m.accel == "kvm":
        add("-accel", Props.of("kvm"))
        add("-cpu", "host")
    else:
        add("-accel", Props.of("tcg", tb_size=TCG_TB_SIZE_MIB))
        add("-cpu", "qemu64")
    if m.sizing:
        opts.extend(o for o in m.sizing if o.name in ("-smp", "-m"))
    else:
        add("-smp", Props.of(str(m.vcpus)))
        add("-m", Props.of(None, size=f"{m.memory_mib}M"))
    add("-sandbox", SANDBOX)
    add("-daemonize")
    if m.run_as is not None:
        add("-runas", m.run_as)
    p = m.paths
    add("-pidfile", str(p.pidfile))
    add("-no-shutdown")
    if not m.incoming or m.incoming_paused:
        add("-S")  # a migration destination starts by itself once the state arrived
    add("-msg", Props.of(None, timestamp=True))
    add("-qmp", Props.of(f"unix:{p.qmp_socket}", server=True, wait=False))
    add("-qmp", Props.of(f"unix:{p.status_socket}", server=True, wait=False))
    add(
        "-chardev",
        Props.of(
            "socket",
            id="serial0",
            path=p.serial_socket,
            server=True,
            wait=False,
            logfile=p.console_log,
            logappend=True,
        ),
    )
    add("-serial", "chardev:serial0")
    add("-display", "none")
    if m.vnc_port is not None:
        add("-vnc", Props.of(f"{m.vnc_host}:{m.vnc_port - 5900}", password=True))
        add("-device", Props.of("VGA", id="video0"))
    root_file = m.root_file or p.root_disk
    add("-blockdev", Props.of(None, driver="file", node_name="root-file", filename=root_file))
    add("-blockdev", Props.of(None, driver="qcow2", node_name="root", file="root-file"))
    add("-device", Props.of("virtio-blk-pci", id="root-disk", drive="root", bootindex=0))
    if m.seed_iso is not None:
        add(
            "-blockdev",
            Props.of(
                None, driver="file", node_name=m.seed_node, filename=m.seed_iso, read_only=True
            ),
        )
        add(
            "-blockdev",
            Props.of(None, driver="raw", node_name="seed", file=m.seed_node, read_only=True),
        )
        add("-device", Props.of("virtio-blk-pci", id="seed-disk", drive="seed"))
    opts.extend(o for o in m.sizing if o.name not in ("-smp", "-m"))
    placement = PciPlacement.of(m.machine_type, m.slots)
    if placement.bus is not None:
        add("-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=on")
        add("-device", Props.of("pcie-pci-bridge", id=placement.bus, addr=HOTPLUG_BRIDGE_ADDR))
    for disk in m.disks:
        opts.extend(_disk_options(disk, placement))
    if m.nics:
        for forward in m.nics:
            opts.extend(_nic_options(forward, placement))
    else:
        add("-nic", "none")
    add("-device", Props.of("pvpanic", id="pvpanic0"))
    if m.incoming:
        add("-incoming", "defer")
    opts.extend(m.extra)
    return QemuCommand(binary, tuple(opts))


def parse_machine_help(text: str, alias: str = MACHINE_ALIAS) -> str | None:
    """The versioned machine type ``alias`` stands for in ``qemu -machine help`` output."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == alias and "(alias of" in line:
            return line.rsplit("(alias of", 1)[1].strip(" )")
    return None


def argv_of(options: Iterable[QemuOption]) -> list[str]:
    return [arg for option in options for arg in option.argv()]
