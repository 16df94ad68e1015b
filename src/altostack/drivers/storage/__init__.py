"""Storage drivers: the interface (``base``), the in-memory ``sim``, ``local`` qcow2 files,
``ceph`` RBD images."""

from altostack.drivers.storage.base import (
    ImageInfo,
    PoolInfo,
    SnapshotInfo,
    StorageCapabilities,
    StorageDriver,
    VolumeInfo,
    VolumeSpec,
)

__all__ = [
    "ImageInfo",
    "PoolInfo",
    "SnapshotInfo",
    "StorageCapabilities",
    "StorageDriver",
    "VolumeInfo",
    "VolumeSpec",
]
