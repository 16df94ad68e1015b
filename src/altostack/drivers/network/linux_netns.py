"""Named network namespaces and work done inside them from the agent's process.

``setns`` moves only the calling *thread*, so anything that must happen inside a namespace
(a sysctl, a listening socket) runs in a dedicated short-lived thread that is never
reused: a pooled thread left in a router's namespace would run someone else's work there
later. A socket keeps the namespace it was created in after the thread ends, which is how
the agent serves metadata inside every router namespace without a process per VPC.

Netlink sockets into another namespace are made the same way (:func:`netlink`), not with
pyroute2's ``netns=``: that forks the whole agent for each socket and then SIGTERMs the
child, whose inherited asyncio signal handler writes the signal into the *parent's*
wake-up pipe — the agent then believes it was told to stop and exits. It would also
create a namespace that has vanished instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2 import netns as _netns
from pyroute2.netlink.exceptions import NetlinkError

from altostack.drivers.errors import BackendFailure

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
_EEXIST = 17
_NO_DEVICE = 19


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


async def create(name: str) -> bool:
    """Make the namespace unless it exists; True when it was made now."""
    if exists(name):
        return False
    try:
        # With our libc: pyroute2 would look it up (ldconfig) in its forked child, every
        # time, against the child's 2 s answer limit.
        await asyncio.to_thread(_netns.create, name, _libc())
    except OSError as exc:
        raise BackendFailure(f"cannot create network namespace {name}: {exc}") from exc
    return True


async def remove(name: str) -> None:
    """Remove the namespace (and so every device in it); a missing one is fine."""
    if not exists(name):
        return
    try:
        await asyncio.to_thread(_netns.remove, name, _libc())
    except OSError as exc:
        if exists(name):
            raise BackendFailure(f"cannot remove network namespace {name}: {exc}") from exc


async def run_in(name: str | None, work: Callable[[], T]) -> T:
    """Run ``work`` in a fresh thread inside namespace ``name`` (None: ours)."""
    if name is None:
        return await asyncio.to_thread(work)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)  # type: ignore[arg-type]

    def thread() -> None:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            value = work()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=thread, name=f"netns-{name}", daemon=True).start()
    return await done


_CLONE_NEWNET = 0x40000000


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name`` for good: a process calls it first
    thing, so every thread and child it starts after lives there (a lab's host on one
    machine). Unlike ``ip netns exec`` it keeps the mount namespace, so the namespaces the
    process names (routers) are everyone's to see."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    """``setns(2)`` for this thread (``os.setns`` arrives only with Python 3.12)."""
    if _libc().setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def write_sysctl(path: str, value: str) -> Callable[[], None]:
    """A ``run_in`` work item: write ``/proc/sys/<path>`` (net.* is per namespace)."""

    def work() -> None:
        Path("/proc/sys", path.replace(".", "/")).write_text(value)

    return work


def listening_socket(address: str, port: int) -> Callable[[], socket.socket]:
    """A ``run_in`` work item: a bound, listening, non-blocking TCP socket."""

    def work() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    return work


# -- netlink helpers shared by the router and the lab ----------------------------------


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)


@asynccontextmanager
async def netlink(netns: str | None) -> AsyncIterator[AsyncIPRoute]:
    """An ``AsyncIPRoute`` into ``netns`` (None: ours), its socket made by a thread in
    there; ``BackendFailure`` when the namespace does not exist."""
    if netns is None:
        async with AsyncIPRoute() as conn:
            yield conn
        return
    try:
        sock = await run_in(netns, _netlink_socket)
    except OSError as exc:
        raise BackendFailure(f"cannot open netlink in namespace {netns}: {exc}") from exc
    async with AsyncIPRoute(fileno=sock.detach()) as conn:
        yield conn


@asynccontextmanager
async def ipr(netns: str | None) -> AsyncIterator[AsyncIPRoute]:
    """Netlink to ``netns`` (None: ours); the kernel's refusals become ``BackendFailure``."""
    try:
        async with netlink(netns) as conn:
            yield conn
    except NetlinkError as exc:
        raise BackendFailure(f"netlink refused the change in {netns or 'the host'}: {exc}") from exc


async def link_index(ipr: AsyncIPRoute, name: str) -> int | None:
    try:
        found = await ipr.link_lookup(ifname=name)
    except NetlinkError as exc:
        if exc.code == _NO_DEVICE:
            return None
        raise
    return int(found[0]) if found else None


async def remove_links(ipr: AsyncIPRoute, *names: str) -> None:
    for name in names:
        index = await link_index(ipr, name)
        if index is None:
            continue
        try:
            await ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != _NO_DEVICE:
                raise


async def converge_addresses(
    ipr: AsyncIPRoute, index: int, wanted: set[tuple[str, int]], *, keep_loopback: bool = False
) -> None:
    have = set()
    async for msg in await ipr.get_addr(family=2, index=index):
        have.add((msg.get_attr("IFA_ADDRESS"), int(msg.get("prefixlen"))))
    if keep_loopback:
        have.discard(("127.0.0.1", 8))
    for address, prefix in sorted(have - wanted):
        with contextlib.suppress(NetlinkError):
            await ipr.addr("del", index=index, address=address, prefixlen=prefix)
    for address, prefix in sorted(wanted - have):
        try:
            await ipr.addr("add", index=index, address=address, prefixlen=prefix)
        except NetlinkError as exc:
            if exc.code != _EEXIST:
                raise
