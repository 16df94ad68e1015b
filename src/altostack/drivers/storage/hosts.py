"""The storage pool a QEMU host keeps cloud disks in, from its configuration."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from altostack.drivers.storage.base import StorageDriver


def host_storage(backend: str, local_dir: Path, ceph: Mapping[str, Any]) -> StorageDriver:
    """``local`` qcow2 files under ``local_dir``, or the cluster's Ceph RBD pool described by
    ``ceph`` (the fields of ``CephConfig``; the same for every host of the cluster)."""
    if backend == "ceph":
        from altostack.drivers.storage.ceph import CephConfig, CephStorageDriver

        return CephStorageDriver(CephConfig(**ceph))
    if backend != "local":
        raise ValueError(f"storage backend must be local or ceph, not {backend!r}")
    from altostack.drivers.storage.local import LocalStorageDriver

    return LocalStorageDriver(local_dir)
