"""Adding vCPUs and memory to a running QEMU guest (ACPI hot-plug).

A VM can only grow live if it was started with room to grow: ``-smp cpus=N,maxcpus=M``
leaves empty CPU sockets, ``-m size=S,slots=K,maxmem=X`` leaves DIMM slots and address
space. Both cost the guest almost nothing until used, but they are fixed for the life of
the QEMU process, so the driver decides them at each cold start (``HotAddLimits``).

What was added is recorded (the QOM type and topology QEMU gave each CPU, each DIMM's
size) because a migration destination must be started with the same devices, and a cold
start folds them back into plain ``-smp``/``-m`` values. The guest sees the new devices
at once; onlining them is the guest's business (udev or a kernel option in real images).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from altostack.drivers.compute.qemu_cmdline import Props, QemuOption
from altostack.drivers.errors import InsufficientResources, NotSupported

if TYPE_CHECKING:
    from altostack.drivers.compute.qemu_process import Qmp
    from altostack.drivers.compute.qemu_record import VmRecord

MIB = 1024 * 1024
DIMM_SLOTS = 8
"""DIMM slots a hot-add VM starts with: each live memory growth takes one."""
DIMM_ALIGN_MIB = 128
"""Linux onlines hot-added memory in 128 MiB blocks: smaller steps would be unusable."""


@dataclass(frozen=True)
class HotAddLimits:
    """How far VMs started on this host may grow without a restart."""

    max_vcpus: int = 16
    max_memory_mib: int = 64 * 1024

    def for_vm(self, vcpus: int, memory_mib: int, host_memory_mib: int) -> tuple[int, int]:
        """(maxcpus, maxmem MiB) for a VM booting with ``vcpus`` and ``memory_mib``."""
        max_vcpus = max(vcpus, min(self.max_vcpus, 255))
        ceiling = min(self.max_memory_mib, host_memory_mib)
        max_memory = max(memory_mib, ceiling - ceiling % DIMM_ALIGN_MIB)
        return max_vcpus, max_memory


def limits(max_vcpus: int, max_memory_mib: int) -> HotAddLimits | None:
    """The host's hot-add room from its settings; either at 0 turns hot-add off."""
    if max_vcpus <= 0 or max_memory_mib <= 0:
        return None
    return HotAddLimits(max_vcpus, max_memory_mib)


def boot_sizes(record: VmRecord) -> tuple[int, int]:
    """The (vCPUs, MiB) the running QEMU was started with, before anything was added."""
    added_mib = sum(int(d["size_mib"]) for d in record.dimms)
    return record.vcpus - len(record.hot_cpus), record.memory_mib - added_mib


def sizing_options(record: VmRecord) -> Iterator[QemuOption]:
    """``-smp`` and ``-m``, plus the devices added live (for a migration destination)."""
    vcpus, memory_mib = boot_sizes(record)
    if record.max_vcpus is None:
        yield QemuOption("-smp", Props.of(str(vcpus)))
    else:
        yield QemuOption("-smp", Props.of(None, cpus=vcpus, maxcpus=record.max_vcpus))
    if record.max_memory_mib is None:
        yield QemuOption("-m", Props.of(None, size=f"{memory_mib}M"))
    else:
        yield QemuOption(
            "-m",
            Props.of(
                None, size=f"{memory_mib}M", slots=DIMM_SLOTS, maxmem=f"{record.max_memory_mib}M"
            ),
        )
    for cpu in record.hot_cpus:
        props = {k.replace("-", "_"): v for k, v in cpu["props"].items()}
        yield QemuOption("-device", Props.of(str(cpu["driver"]), id=str(cpu["id"]), **props))
    for dimm in record.dimms:
        memdev = f"mem-{dimm['id']}"
        yield QemuOption(
            "-object",
            Props.of("memory-backend-ram", id=memdev, size=f"{dimm['size_mib']}M"),
        )
        yield QemuOption("-device", Props.of("pc-dimm", id=str(dimm["id"]), memdev=memdev))


def check_growth(record: VmRecord, vcpus: int, memory_mib: int) -> None:
    """Refuse, before touching anything, a growth the running QEMU has no room for."""
    if vcpus > record.vcpus:
        if record.max_vcpus is None:
            raise NotSupported(
                "live_resize_cpu",
                f"{record.id} was started without room for more vCPUs; restart it to grow live",
            )
        if vcpus > record.max_vcpus:
            raise NotSupported(
                "live_resize_cpu",
                f"{record.id} can grow to {record.max_vcpus} vCPUs while running "
                "(its limit since it started); stop it to go further",
            )
    if memory_mib > record.memory_mib:
        if record.max_memory_mib is None:
            raise NotSupported(
                "live_resize_memory",
                f"{record.id} was started without room for more memory; restart it to grow live",
            )
        if memory_mib > record.max_memory_mib:
            raise InsufficientResources(
                f"{record.id} can grow to {record.max_memory_mib} MiB while running "
                "(its limit since it started); stop it to go further"
            )
        delta = memory_mib - record.memory_mib
        if delta % DIMM_ALIGN_MIB:
            raise NotSupported(
                "live_resize_memory",
                f"memory grows live in steps of {DIMM_ALIGN_MIB} MiB (asked: +{delta} MiB)",
            )
        if len(record.dimms) >= DIMM_SLOTS:
            raise NotSupported(
                "live_resize_memory", f"all {DIMM_SLOTS} memory slots of {record.id} are used"
            )


async def add_cpu(qmp: Qmp) -> dict[str, Any]:
    """Plug one vCPU into the first free socket; its record entry."""
    slots = await qmp.execute("query-hotpluggable-cpus")
    free = [s for s in slots if "qom-path" not in s]
    if not free:
        raise NotSupported("live_resize_cpu", "no free CPU slot is left in this VM")
    slot = min(free, key=lambda s: sorted(s["props"].items()))
    props = {k: v for k, v in slot["props"].items() if k.endswith("-id")}
    device_id = "cpu-" + "-".join(str(props[k]) for k in sorted(props))
    await qmp.execute("device_add", {"driver": slot["type"], "id": device_id, **props})
    return {"id": device_id, "driver": slot["type"], "props": props}


async def add_dimm(qmp: Qmp, index: int, size_mib: int) -> dict[str, Any]:
    """Plug a DIMM of ``size_mib``; its record entry."""
    device_id = f"dimm{index}"
    memdev = f"mem-{device_id}"
    await qmp.execute(
        "object-add", {"qom-type": "memory-backend-ram", "id": memdev, "size": size_mib * MIB}
    )
    try:
        await qmp.execute("device_add", {"driver": "pc-dimm", "id": device_id, "memdev": memdev})
    except BaseException:
        await qmp.execute("object-del", {"id": memdev})
        raise
    return {"id": device_id, "size_mib": size_mib}
