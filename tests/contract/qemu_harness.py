"""The ``qemu`` backend of the compute contract suite: real QEMU guests (TCG here).

Every test gets a private temporary root with an image directory (the project's test image
under two ids, hard-linked) and a state directory; at the end every QEMU started under that
root is killed by PID and the root removed, whatever happened. The test image is built
once per session by ``scripts/build-test-image`` (cached across sessions).

The hooks act on the guest itself, through its serial console (``serial.sock``):

- ``guest_shutdown``: logs in as root and runs ``poweroff``; ``ignore_acpi``: logs in and
  kills ``acpid``; ``crash``: ``kill -9`` of the QEMU process.
- ``guest_boots``: once the guest's latest boot reached ``ALTO-GUEST-READY``, the boots
  its console shows (one ``SYSLINUX`` banner per boot, printed by its boot loader), or the
  power-ons and resets the driver logged (``events.log``) if more: a boot cut short within
  milliseconds (a reset right after power-on) shows nothing.
- ``guest_password``: the password the driver put in the VM's seed, if logging in with it
  works, after a reboot if needed ("at the next boot at the latest"); else None.

QEMU tests are marked ``slow``: :func:`pytest_collection_modifyitems` (imported into
``tests/contract/conftest.py`` with the harness) marks every ``[qemu]`` item.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from altostack.domain.ids import new_id
from altostack.drivers.compute.base import DiskSpec
from altostack.drivers.compute.local_images import LocalImageCache
from altostack.drivers.compute.qemu import QemuComputeDriver
from altostack.drivers.compute.qemu_cmdline import VmPaths
from altostack.drivers.compute.qemu_host import ensure_qemu_user
from altostack.drivers.compute.qemu_process import kill_now, live_pid, pids_with, qmp_session
from altostack.drivers.compute.qemu_record import read_events
from altostack.drivers.compute.qemu_seed import read_seed
from altostack.drivers.errors import DriverError
from altostack.drivers.faults import FaultInjector
from tests.contract.conftest import ComputeHarness
from tests.support.real import need_real

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-test-image"
BOOT_MARK = "SYSLINUX "
READY_MARK = "ALTO-GUEST-READY"
GUEST_TIMEOUT = float(os.environ.get("ALTO_GUEST_TIMEOUT", "120"))
"""Seconds a guest may take to boot or answer (TCG on a busy 2-core machine is slow)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("compute") == "qemu":
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.real)


@functools.cache
def _build_test_image() -> Path | str:
    """The test image's path, or why there is none (built at most once per process)."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        return "QEMU is not installed (scripts/install-system-deps installs it)"
    try:
        done = subprocess.run(
            [str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scripts/build-test-image failed: {exc}"
    if done.returncode != 0:
        return f"scripts/build-test-image failed: {done.stderr.strip()[-2000:]}"
    return Path(done.stdout.strip().splitlines()[-1])


def guest_image() -> Path:
    """The test guest image (built on first use); ``need_real`` when it cannot be had."""
    image = _build_test_image()
    if isinstance(image, str):
        need_real(image)
        raise AssertionError("unreachable")
    return image


def kill_qemus_under(root: Path) -> None:
    """Kill (SIGKILL, by PID) every process whose command line names a path under ``root``:
    the QEMUs of its VMs, also one whose start was cut short before it wrote its pidfile."""
    marker = f"{root}/"
    for pid in pids_with(marker):
        kill_now(pid, marker)


# -- the guest's serial console ----------------------------------------------------------------


class LoginFailed(Exception):
    pass


class SerialConsole:
    """A root shell on a guest's serial console (``serial.sock``).

    QEMU drops what a client typed but the guest did not read yet when the client hangs
    up, so every exchange waits for the guest's answer before the connection closes.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seen = b""
        self.logged_in = False

    @classmethod
    @asynccontextmanager
    async def login(cls, paths: VmPaths, user: str, password: str) -> AsyncIterator[SerialConsole]:
        reader, writer = await asyncio.open_unix_connection(str(paths.serial_socket))
        console = cls(reader, writer)
        try:
            await console._login(user, password)
            yield console
            if console.logged_in:
                await console._logout()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _expect(
        self, *patterns: bytes, timeout: float = GUEST_TIMEOUT, start: int = 0
    ) -> bytes:
        """The first of ``patterns`` to show up in what the console printed from ``start``."""
        deadline = time.monotonic() + timeout
        while True:
            for pattern in patterns:
                if pattern in self.seen[start:]:
                    return pattern
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"console never showed {patterns}: ...{self.seen[-300:]!r}")
            try:
                chunk = await asyncio.wait_for(self.reader.read(4096), remaining)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError(f"console closed: ...{self.seen[-300:]!r}")
            self.seen += chunk

    async def _send(self, text: str) -> None:
        self.writer.write(text.encode())
        await self.writer.drain()

    async def _logout(self) -> None:
        self.seen = b""
        await self._send("exit\n")
        await self._expect(b"login: ")
        self.logged_in = False

    async def _login(self, user: str, password: str) -> None:
        self.seen = b""
        await self._send("\n")
        if await self._expect(b"login: ", b"# ") == b"# ":  # a shell left logged in
            self.logged_in = True
            await self._logout()
        self.seen = b""
        await self._send(f"{user}\n")
        await self._expect(b"assword: ")
        await asyncio.sleep(0.5)  # login turns echo off only after its prompt
        self.seen = b""
        await self._send(f"{password}\n")
        found = await self._expect(b"# ", b"Login incorrect")
        if found == b"Login incorrect":
            await self._expect(b"login: ")
            raise LoginFailed(f"{user} cannot log in with that password")
        self.logged_in = True

    async def run(self, command: str, timeout: float = GUEST_TIMEOUT) -> str:
        """Run ``command``; its output (stdout and stderr)."""
        marker = f"ALTO-DONE-{time.monotonic_ns()}"
        self.seen = b""
        await self._send(f"{command}; echo {marker[:5]}''{marker[5:]}\n")
        done = marker.encode() + b"\r\n"
        await self._expect(done, timeout=timeout)
        # The next prompt too: a command typed before it would race the shell's return to
        # its line editor (and be echoed twice).
        await self._expect(b"# ", timeout=timeout, start=self.seen.index(done) + len(done))
        text = self.seen.decode(errors="replace").replace("\r", "")
        # The output starts after the echo of the command line (found by the quoted
        # marker only it contains), not simply after the first line: a prompt or message
        # still on its way when ``seen`` was reset would otherwise pass for the echo. The
        # *last* echo counts: a line typed before the shell's line editor took the
        # terminal is echoed twice, once by the tty and again behind the prompt.
        echoed = f"{marker[:5]}''{marker[5:]}"
        after = text.rsplit(echoed, 1)[1] if echoed in text else text
        body = after.split("\n", 1)[1] if "\n" in after else ""
        return body.split(marker, 1)[0]

    async def poweroff(self) -> None:
        """Power the guest off from inside; returns once it is going down."""
        self.seen = b""
        await self._send("poweroff\n")
        await self._expect(b"going down")
        self.logged_in = False


# -- the harness -------------------------------------------------------------------------------


def _count(text: str, mark: str) -> int:
    return text.count(mark)


class QemuComputeHarness(ComputeHarness):
    def __init__(
        self, root: Path, image: Path, host: str = "contract-host", run_as: str | None = None
    ) -> None:
        self.root, self.image, self.host, self.run_as = root, image, host, run_as
        self.images = LocalImageCache(root / "images")
        self.image_id, self.other_image_id = "img-alto-test-1", "img-alto-test-2"
        self.images.add(self.image_id, image)
        self.images.add(self.other_image_id, image)
        self.faults = FaultInjector()
        self.driver: QemuComputeDriver = self._new_driver()

    def _new_driver(self) -> QemuComputeDriver:
        return QemuComputeDriver(
            self.root / self.host,
            self.images,
            faults=self.faults,
            hostname=self.host,
            soft_reboot_timeout=GUEST_TIMEOUT,
            run_as=self.run_as,
        )

    async def restart(self) -> None:
        self.driver = self._new_driver()

    def paths(self, vm_id: str) -> VmPaths:
        return self.driver.paths(vm_id)

    def _console(self, vm_id: str) -> str:
        return self.driver.console_output(vm_id)

    def _alive(self, vm_id: str) -> bool:
        paths = self.paths(vm_id)
        return live_pid(paths.pidfile, str(paths.dir)) is not None

    async def wait_ready(self, vm_id: str, timeout: float = GUEST_TIMEOUT) -> None:
        """Until the guest's latest boot reached readiness (or its QEMU is gone)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self._console(vm_id)
            expected = self._boots_started(vm_id)
            # The latest boot's output starts where the driver's last boot event says.
            last_boot = text[self._last_boot_offset(vm_id) :]
            if not self._alive(vm_id) or expected == 0 or READY_MARK in last_boot:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{vm_id}: boot {expected} not ready after {timeout:.0f}s: ...{text[-500:]}"
                )
            await asyncio.sleep(0.1)

    async def _root_password(self, vm_id: str) -> str:
        password = read_seed(self.paths(vm_id).seed_json).password_of("root")
        assert password is not None, "the VM's seed sets no root password"
        return password

    async def guest_shutdown(self, vm_id: str) -> None:
        await self.wait_ready(vm_id)
        paths = self.paths(vm_id)
        async with SerialConsole.login(paths, "root", await self._root_password(vm_id)) as sh:
            await sh.poweroff()
        await self._wait_runstate(paths, "shutdown")

    async def _wait_runstate(self, paths: VmPaths, wanted: str) -> None:
        deadline = time.monotonic() + GUEST_TIMEOUT
        while time.monotonic() < deadline:
            if live_pid(paths.pidfile, str(paths.dir)) is None:
                return
            with contextlib.suppress(DriverError):
                async with qmp_session(paths.status_socket, "harness", timeout=5) as qmp:
                    if await qmp.runstate() == wanted:
                        return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{paths.dir.name} never reached runstate {wanted}")

    async def crash(self, vm_id: str) -> None:
        paths = self.paths(vm_id)
        pid = live_pid(paths.pidfile, str(paths.dir))
        assert pid is not None, f"{vm_id} has no QEMU to crash"
        kill_now(pid, str(paths.dir))

    async def ignore_acpi(self, vm_id: str) -> None:
        await self.wait_ready(vm_id)
        paths = self.paths(vm_id)
        async with SerialConsole.login(paths, "root", await self._root_password(vm_id)) as sh:
            await sh.run("killall acpid")

    async def guest_boots(self, vm_id: str) -> int:
        await self.wait_ready(vm_id)
        shown = _count(self._console(vm_id), BOOT_MARK)
        # A boot cut short within milliseconds (a reset right after power-on) shows nothing.
        return max(shown, self._boots_started(vm_id))

    def _boot_events(self, vm_id: str) -> list[str]:
        events = read_events(self.paths(vm_id).events)
        return [e for e in events if e.split()[0] in ("start", "reset")]

    def _boots_started(self, vm_id: str) -> int:
        return len(self._boot_events(vm_id))

    def _last_boot_offset(self, vm_id: str) -> int:
        boots = self._boot_events(vm_id)
        found = re.search(r"console=(\d+)", boots[-1]) if boots else None
        return int(found.group(1)) if found else 0

    async def guest_password(self, vm_id: str, user: str) -> str | None:
        password = read_seed(self.paths(vm_id).seed_json).password_of(user)
        if password is None:
            return None
        for attempt in range(2):
            await self.wait_ready(vm_id)
            try:
                async with SerialConsole.login(self.paths(vm_id), user, password) as sh:
                    who = await sh.run("id -un")
                assert who.strip() == user
                return password
            except LoginFailed:
                if attempt == 0:  # the new password applies at the next boot: boot it
                    await self.driver.reboot_vm(vm_id, hard=True)
        return None

    # -- hot-plug, snapshots, migration: what the guest and QEMU say ------------------------

    async def make_disk(self, size_mib: int) -> DiskSpec:
        disks = self.root / "volumes"
        disks.mkdir(exist_ok=True)
        disk_id = new_id("disk")
        disk = DiskSpec(disk_id, str(disks / f"{disk_id}.qcow2"))
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "create", "-q", "-f", "qcow2", disk.path, f"{size_mib}M"
        )
        assert await proc.wait() == 0
        return disk

    async def http_get(self, vm_id: str, path: str, timeout: float = 1.0) -> str | None:
        """The body the guest's HTTP server answers on ``path``, None if it does not."""
        try:
            endpoint = self.driver.http_endpoint(vm_id)
        except DriverError:
            return None
        if endpoint is None:
            return None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(*endpoint)
                try:
                    writer.write(f"GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n".encode())
                    await writer.drain()
                    answer = await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return None
        head, _, body = answer.decode(errors="replace").partition("\r\n\r\n")
        return body if head.startswith("HTTP/1.") and " 200 " in head.split("\r\n")[0] else None

    async def _guest_shows(self, vm_id: str, path: str, wanted: str, present: bool) -> bool:
        await self.wait_ready(vm_id)
        deadline = time.monotonic() + GUEST_TIMEOUT
        while time.monotonic() < deadline:
            body = await self.http_get(vm_id, path)
            if body is not None and (wanted in body.split()) == present:
                return True
            await asyncio.sleep(0.2)
        return False

    async def guest_sees_disk(self, vm_id: str, size_mib: int, *, present: bool = True) -> bool:
        return await self._guest_shows(vm_id, "/cgi-bin/disks", str(size_mib << 20), present)

    async def guest_sees_nic(self, vm_id: str, mac: str, *, present: bool = True) -> bool:
        return await self._guest_shows(vm_id, "/cgi-bin/nics", mac.lower(), present)

    async def active_root_layer(self, vm_id: str) -> str:
        paths = self.paths(vm_id)
        async with qmp_session(paths.status_socket, "harness", timeout=5) as qmp:
            blocks = await qmp.execute("query-block")
        for block in blocks:
            if (
                block.get("qdev", "").endswith("root-disk/virtio-backend")
                or block.get("qdev") == "root-disk"
            ):
                name = str(block["inserted"]["file"])
                # An overlay opened without its backing in the options is described as json.
                if name.startswith("json:"):
                    name = str(json.loads(name[5:])["file"]["filename"])
                return name
        raise AssertionError(f"no root disk in {blocks}")

    async def guest_answers(self, vm_id: str) -> bool:
        return await self.http_get(vm_id, "/", timeout=0.5) is not None

    @asynccontextmanager
    async def second_host(self) -> AsyncIterator[ComputeHarness]:
        # Under the same root: the first harness's clean-up kills its QEMUs too.
        yield QemuComputeHarness(self.root, self.image, "contract-host-2", self.run_as)


@asynccontextmanager
async def qemu_compute_harness() -> AsyncIterator[QemuComputeHarness]:
    image = guest_image()
    root = Path(tempfile.mkdtemp(prefix="alto-qemu-contract-"))
    # As root, QEMU drops to its own user (-runas), which must reach the VM directories.
    user = ensure_qemu_user()
    os.chmod(root, 0o711)
    try:
        yield QemuComputeHarness(root, image, run_as=None if user is None else user.name)
    finally:
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)
