"""The ``ceph`` backend of the storage contract suite: a real cluster, one RBD namespace a test.

The cluster (1 mon, 1 mgr, 3 bluestore OSDs) is started once per session by
``tests.support.ceph.ceph_cluster``; each test gets a fresh RBD namespace of its pool, so
tests see an empty pool without paying for a pool creation (seconds of PG peering).
``restart`` drops the connection and makes a new driver (it keeps nothing in memory).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from altostack.drivers.faults import FaultInjector
from altostack.drivers.storage.ceph import CephConfig, CephStorageDriver
from tests.contract.conftest import StorageHarness
from tests.support.ceph import CephCluster


class CephStorageHarness(StorageHarness):
    def __init__(self, config: CephConfig) -> None:
        self.config = config
        self.faults = FaultInjector()
        self.driver = CephStorageDriver(config, faults=self.faults)

    async def restart(self) -> None:
        await self.driver.close()
        self.driver = CephStorageDriver(self.config, faults=self.faults)


@asynccontextmanager
async def ceph_storage_harness(cluster: CephCluster) -> AsyncIterator[CephStorageHarness]:
    harness = CephStorageHarness(cluster.driver_config(f"t{secrets.token_hex(6)}"))
    try:
        yield harness
    finally:
        await harness.driver.close()
