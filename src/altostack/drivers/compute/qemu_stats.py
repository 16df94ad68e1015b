"""Per-VM resource counters of a QEMU process: ``/proc`` for CPU and memory, QMP for disks.

What the agent reports for monitoring and accounting (:class:`~altostack.drivers.compute.
base.VmStats`). The CPU time is the whole process's (vCPU threads and device emulation),
which is what the VM costs the host. Disk counters come from QMP ``query-blockstats``,
named by the guest device (``root-disk``, ``seed-disk``, hot-plugged ones by their id).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from altostack.drivers.compute.base import DiskStats, NicStats
from altostack.drivers.errors import BackendFailure

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PERIPHERAL = "/machine/peripheral/"


def process_counters(pid: int, proc: Path = Path("/proc")) -> tuple[int, int]:
    """(CPU time in ns, resident memory in bytes) of a live process."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        status = (proc / str(pid) / "status").read_text()
    except OSError as exc:
        raise BackendFailure(f"cannot read the counters of process {pid}: {exc}") from exc
    # The command name may contain spaces and parentheses: split after the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    utime, stime = int(fields[11]), int(fields[12])
    cpu_ns = (utime + stime) * 1_000_000_000 // _CLOCK_TICKS
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
            break
    return cpu_ns, rss


def disk_name(entry: dict[str, Any]) -> str:
    """The guest device's id from a ``query-blockstats`` entry (its node name otherwise)."""
    qdev = str(entry.get("qdev") or "")
    if qdev.startswith(_PERIPHERAL):
        return qdev[len(_PERIPHERAL) :].split("/", 1)[0]
    return str(entry.get("device") or entry.get("node-name") or qdev or "?")


def disk_stats(blockstats: Iterable[dict[str, Any]]) -> tuple[DiskStats, ...]:
    """Counters of each disk a guest device uses, from QMP ``query-blockstats``."""
    found = []
    for entry in blockstats:
        stats = entry.get("stats") or {}
        found.append(
            DiskStats(
                name=disk_name(entry),
                read_bytes=int(stats.get("rd_bytes", 0)),
                write_bytes=int(stats.get("wr_bytes", 0)),
                read_ops=int(stats.get("rd_operations", 0)),
                write_ops=int(stats.get("wr_operations", 0)),
            )
        )
    return tuple(sorted(found, key=lambda d: d.name))


def link_stats(ifname: str, sys_net: Path = Path("/sys/class/net")) -> NicStats | None:
    """Counters of a host network device (a VM's tap), from the host's side: what the
    guest sent is the tap's ``rx``. None when the device does not exist."""
    base = sys_net / ifname / "statistics"

    def read(name: str) -> int:
        return int((base / name).read_text().strip())

    try:
        return NicStats(
            name=ifname,
            rx_bytes=read("tx_bytes"),
            tx_bytes=read("rx_bytes"),
            rx_packets=read("tx_packets"),
            tx_packets=read("rx_packets"),
        )
    except (OSError, ValueError):
        return None
