"""The ``local`` backend of the storage contract suite: qcow2 files in a temporary pool.

Each test gets a fresh pool directory, removed at the end whatever happened. ``restart``
makes a new driver over the same directory (nothing is kept in memory). Needs
``qemu-img`` and ``qemu-io`` (``qemu-utils``); without them the tests skip, or fail under
``ALTO_REQUIRE_REAL=1``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from altostack.drivers.faults import FaultInjector
from altostack.drivers.storage.local import LocalStorageDriver
from tests.contract.conftest import StorageHarness
from tests.support.real import need_real


def need_qemu_tools() -> None:
    missing = [tool for tool in ("qemu-img", "qemu-io") if shutil.which(tool) is None]
    if missing:
        need_real(f"{' and '.join(missing)} not installed (qemu-utils)")


class LocalStorageHarness(StorageHarness):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = FaultInjector()
        self.driver = LocalStorageDriver(root, faults=self.faults)

    async def restart(self) -> None:
        self.driver = LocalStorageDriver(self.root, faults=self.faults)


@asynccontextmanager
async def local_storage_harness() -> AsyncIterator[LocalStorageHarness]:
    need_qemu_tools()
    root = Path(tempfile.mkdtemp(prefix="alto-pool-"))
    try:
        yield LocalStorageHarness(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
