"""Hot-plug over QMP: data disks and NICs in and out of a running QEMU, live snapshots.

Plugging is two steps (the backend: ``blockdev-add`` / ``netdev_add``, then the guest-visible
``device_add``) and a failure of the second undoes the first, so a failed plug leaves the
VM as it was. Unplugging needs the guest: ``device_del`` only *asks* it (ACPI PCI hot-plug)
to release the device, and the backend can go only once QEMU reports ``DEVICE_DELETED``.
A guest still booting may miss the request, so it is repeated until the timeout, like the
power button.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import time
from typing import Any

from altostack.drivers.compute.base import DiskSpec
from altostack.drivers.compute.qemu_cmdline import (
    NicForward,
    PciPlacement,
    disk_blockdev_args,
    disk_device_args,
    disk_ids,
    nic_device_args,
    nic_ids,
    nic_netdev_args,
)
from altostack.drivers.compute.qemu_process import Qmp
from altostack.drivers.errors import BackendFailure, DriverError, DriverTimeout

_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def open_tap(name: str) -> int:
    """An open descriptor on the existing tap ``name`` (in this thread's namespace), with
    the flags QEMU itself uses (no packet info, virtio-net headers)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
        fcntl.ioctl(fd, _TUNSETIFF, ifr)
    except OSError as exc:
        os.close(fd)
        raise BackendFailure(f"cannot open tap {name}: {exc}") from exc
    return fd


UNPLUG_RETRY = 3.0
"""Seconds between ``device_del`` requests while the guest has not released the device."""


async def plug_disk(qmp: Qmp, disk: DiskSpec, placement: PciPlacement) -> None:
    added: list[str] = []
    try:
        for args in disk_blockdev_args(disk):
            await qmp.execute("blockdev-add", args)
            added.append(str(args["node-name"]))
        await qmp.execute("device_add", disk_device_args(disk, placement))
    except BaseException:
        for node in reversed(added):
            with contextlib.suppress(DriverError):
                await qmp.execute("blockdev-del", {"node-name": node})
        raise


async def unplug_disk(qmp: Qmp, disk: DiskSpec, *, timeout: float) -> None:
    device, node, file_node = disk_ids(disk)
    await unplug_device(qmp, device, timeout=timeout)
    for name in (node, file_node):
        with contextlib.suppress(DriverError):
            await qmp.execute("blockdev-del", {"node-name": name})


async def plug_nic(qmp: Qmp, forward: NicForward, placement: PciPlacement) -> None:
    _, netdev = nic_ids(forward.nic)
    args = nic_netdev_args(forward)
    if forward.tap is not None:
        # A running QEMU has dropped its privileges (-runas, -sandbox): it cannot open
        # /dev/net/tun itself any more. The agent opens the tap and hands QEMU the open
        # descriptor (SCM_RIGHTS + ``getfd``), as it would have opened it at launch.
        fd = open_tap(forward.tap)
        try:
            qmp.client.send_fd_scm(fd)
            await qmp.execute("getfd", {"fdname": netdev})
        finally:
            os.close(fd)
        args = {"type": "tap", "id": netdev, "fd": netdev}
    await qmp.execute("netdev_add", args)
    try:
        await qmp.execute("device_add", nic_device_args(forward.nic, placement))
    except BaseException:
        with contextlib.suppress(DriverError):
            await qmp.execute("netdev_del", {"id": netdev})
        raise


async def unplug_nic(qmp: Qmp, forward: NicForward, *, timeout: float) -> None:
    device, netdev = nic_ids(forward.nic)
    await unplug_device(qmp, device, timeout=timeout)
    with contextlib.suppress(DriverError):
        await qmp.execute("netdev_del", {"id": netdev})


async def unplug_device(qmp: Qmp, device_id: str, *, timeout: float) -> None:
    """``device_del`` (repeated) until QEMU reports ``DEVICE_DELETED`` for ``device_id``."""
    deadline = time.monotonic() + timeout
    with qmp.listen(("DEVICE_DELETED",)) as listener:
        while True:
            try:
                await qmp.execute("device_del", {"id": device_id})
            except BackendFailure as exc:
                if "not found" in exc.message:
                    return  # gone already (an earlier request completed)
                if "in the process of unplug" not in exc.message:
                    raise
            wait_until = min(deadline, time.monotonic() + UNPLUG_RETRY)
            while (remaining := wait_until - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(listener.get(), remaining)
                except TimeoutError:
                    break
                data: Any = event.get("data") or {}
                if data.get("device") == device_id:
                    return
            if time.monotonic() >= deadline:
                raise DriverTimeout(
                    f"the guest did not release {device_id} within {timeout:.0f}s "
                    "(it stays attached)"
                )


async def snapshot_root(qmp: Qmp, node: str, overlay: str, new_node: str) -> None:
    """Make the prepared qcow2 ``overlay`` (backing: the active layer) the active layer.

    ``mode=existing``: the driver created the overlay itself with a *relative* backing
    path, so the chain stays valid when its directory moves (migration hand-over).
    """
    await qmp.execute(
        "blockdev-snapshot-sync",
        {"node-name": node, "snapshot-file": overlay, "snapshot-node-name": new_node,
         "format": "qcow2", "mode": "existing"},
    )  # fmt: skip
