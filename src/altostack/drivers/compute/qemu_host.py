"""Facts about the host the ``qemu`` driver runs on: accelerator, capacity, QEMU itself."""

from __future__ import annotations

import os
import platform
import re
import shutil
from pathlib import Path

from altostack.drivers.compute.base import Accel

GIB = 1024**3

QEMU_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def detect_accel(dev_kvm: Path = Path("/dev/kvm"), cpuinfo: Path = Path("/proc/cpuinfo")) -> Accel:
    """KVM only when it can really run stock guests: /dev/kvm AND vmx|svm in the CPU flags.

    (Some hosts have a paravirtual /dev/kvm without hardware virtualisation; QMP's
    ``query-kvm`` says enabled there, yet guest kernels hang. They get TCG.)
    """
    if not dev_kvm.exists():
        return "tcg"
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "tcg"
    for line in text.splitlines():
        if line.startswith("flags") and re.search(r"\b(vmx|svm)\b", line):
            return "kvm"
    return "tcg"


def host_arch() -> str:
    machine = platform.machine()
    return QEMU_ARCH.get(machine, machine)


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def host_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no MemTotal in {meminfo}")


def disk_gib(path: Path) -> int:
    """Size of the filesystem holding ``path`` (its total, not what is free)."""
    return shutil.disk_usage(path).total // GIB


def qemu_binary(arch: str) -> str | None:
    """The ``qemu-system-<arch>`` on PATH, or None."""
    return shutil.which(f"qemu-system-{arch}")
