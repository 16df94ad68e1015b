"""Request and response bodies of block storage (API.md: storage; storage pools: admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from altostack.api.compute_schemas import Strict
from altostack.api.schemas import OperationOut

CLASS = Field(None, min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9-]*$")


class StoragePoolCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    backend: Literal["local", "ceph", "sim"]
    storage_classes: list[str] = Field([], max_length=16)
    cluster_ids: list[str] = Field([], max_length=64)
    allocation_ratio: float = Field(1.0, ge=1.0, le=100.0, description="thin provisioning")
    description: str | None = Field(None, max_length=255)


class StoragePoolUpdate(Strict):
    storage_classes: list[str] | None = Field(None, max_length=16)
    cluster_ids: list[str] | None = Field(None, max_length=64)
    allocation_ratio: float | None = Field(None, ge=1.0, le=100.0)
    description: str | None = Field(None, max_length=255)


class PoolHost(BaseModel):
    host_id: str
    health: str
    reported_at: datetime


class StoragePoolOut(BaseModel):
    id: str
    name: str
    backend: str
    shared: bool
    storage_classes: list[str]
    cluster_ids: list[str]
    allocation_ratio: float
    description: str | None
    capacity_bytes: int
    allocated_bytes: int
    provisioned_bytes: int
    provisioned_gib: int
    health: str
    health_detail: str | None
    hosts: list[PoolHost]
    created_at: datetime


class DiskCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    size_gib: int | None = Field(None, ge=1, le=16384, description="default: the source's size")
    storage_class: str | None = CLASS
    image_id: str | None = Field(None, max_length=40)
    snapshot_id: str | None = Field(None, max_length=40)
    source_disk_id: str | None = Field(None, max_length=40)


class DiskAttach(Strict):
    vm_id: str = Field(max_length=40)


class DiskResize(Strict):
    size_gib: int = Field(ge=1, le=16384)


class DiskClone(Strict):
    name: str = Field(min_length=1, max_length=64)
    size_gib: int | None = Field(None, ge=1, le=16384)


class DiskOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    size_gib: int
    storage_class: str
    pool_id: str
    host_id: str | None
    source_type: str | None
    source_id: str | None
    vm_id: str | None
    state: str
    reason: str | None
    snapshot_count: int
    generation: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    purge_after: datetime | None


class DiskAccepted(BaseModel):
    operation: OperationOut
    disk: DiskOut


class SnapshotCreate(Strict):
    disk_id: str | None = Field(None, max_length=40, description="a data disk")
    vm_id: str | None = Field(None, max_length=40, description="a VM's root disk")
    name: str = Field(min_length=1, max_length=64)


class SnapshotOut(BaseModel):
    id: str
    tenant_id: str
    disk_id: str | None
    vm_id: str | None = None
    name: str
    size_gib: int
    state: str
    reason: str | None
    created_at: datetime


class SnapshotAccepted(BaseModel):
    operation: OperationOut
    snapshot: SnapshotOut
