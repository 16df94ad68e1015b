"""Facts about the host the ``qemu`` driver runs on: accelerator, capacity, QEMU itself."""

from __future__ import annotations

import grp
import os
import platform
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
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


QEMU_USER = "alto-qemu"
"""The unprivileged user QEMU drops to (``-runas``) when the agent runs as root."""


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int


def lookup_user(name: str) -> RunAs | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return RunAs(name, entry.pw_uid, entry.pw_gid)


def ensure_qemu_user(name: str = QEMU_USER) -> RunAs | None:
    """The dedicated user for QEMU, created when absent (a system user with its own group,
    no home, no login shell, in group ``kvm`` if there is one). None when this process is
    not root (QEMU then runs as the agent's user) or the user cannot be made."""
    if os.geteuid() != 0:
        return None
    found = lookup_user(name)
    if found is not None:
        return found
    useradd = shutil.which("useradd")
    if useradd is None:
        return None
    try:
        grp.getgrnam("kvm")
        groups = ["--groups", "kvm"]
    except KeyError:
        groups = []
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", *groups, name],
        check=False, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return lookup_user(name)


def traversable_by(path: Path, user: RunAs) -> bool:
    """Whether ``user`` may pass through every directory down to ``path`` (execute bit
    of the owner, group or others, as applies; supplementary groups are not counted)."""
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except OSError:
            return False
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def choose_run_as(state_dir: Path, wanted: str = "auto") -> tuple[str | None, str]:
    """The user QEMU should drop to (``-runas``), and why, for a host's state directory.

    ``wanted``: a user name (used as given), ``""`` (QEMU stays the agent's user), or
    ``auto``: the dedicated ``alto-qemu`` user where the host allows it, i.e. the agent is
    root, the user exists or can be made, and it can reach ``state_dir`` (a data directory
    under a 0700 home cannot: then QEMU stays root and the reason says so).
    """
    if wanted != "auto":
        return (wanted or None), ("configured" if wanted else "disabled by configuration")
    if os.geteuid() != 0:
        return None, "the agent is not root: QEMU runs as the agent's user"
    user = ensure_qemu_user()
    if user is None:
        return None, f"the user {QEMU_USER} cannot be made here (no useradd?)"
    state_dir.mkdir(parents=True, exist_ok=True)
    if not traversable_by(state_dir, user):
        return None, (
            f"{user.name} cannot reach {state_dir} (a parent directory is not searchable "
            "for it); put the data directory elsewhere (e.g. /var/lib/altostack) to drop "
            "QEMU's privileges"
        )
    return user.name, "the host allows it"
