"""Request and response models of the compute routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Arch = Literal["x86_64", "aarch64"]


class RegionCreate(Strict):
    name: str = Field(min_length=1, max_length=63)
    description: str | None = Field(None, max_length=255)


class RegionOut(BaseModel):
    id: str
    name: str
    description: str | None
    created_at: datetime


class ClusterCreate(Strict):
    region_id: str = Field(max_length=40)
    name: str = Field(min_length=1, max_length=63)
    arch: Arch = "x86_64"
    cpu_allocation_ratio: float = Field(4.0, ge=1.0, le=32.0)
    ram_allocation_ratio: float = Field(1.0, ge=1.0, le=4.0)
    policy: Literal["spread", "pack"] = "spread"


class ClusterUpdate(Strict):
    cpu_allocation_ratio: float | None = Field(None, ge=1.0, le=32.0)
    ram_allocation_ratio: float | None = Field(None, ge=1.0, le=4.0)
    policy: Literal["spread", "pack"] | None = None


class ClusterOut(BaseModel):
    id: str
    region_id: str
    name: str
    arch: Arch
    cpu_allocation_ratio: float
    ram_allocation_ratio: float
    policy: Literal["spread", "pack"]
    created_at: datetime


class JoinToken(BaseModel):
    cluster_id: str
    join_token: str = Field(description="Shown once; `alto agent --join URL --token …`")


class GpuIn(Strict):
    pci_address: str = Field(max_length=32)
    model: str = Field(max_length=128)


class HostRegister(Strict):
    join_token: str = Field(min_length=1, max_length=128)
    hostname: str = Field(min_length=1, max_length=255)
    arch: Arch
    cores: int = Field(ge=1, le=4096)
    memory_mib: int = Field(ge=1)
    disk_gib: int = Field(ge=0)
    gpus: list[GpuIn] = []
    accel: Literal["kvm", "tcg", "sim"] = "sim"
    capabilities: dict[str, bool] = {}
    underlay_ip: IPvAnyAddress | None = Field(
        None, description="where other hosts' VXLAN tunnels reach this host"
    )
    network_host: bool = Field(False, description="run the VPC routers here")


class HostResources(BaseModel):
    vcpus: int
    memory_mib: int
    disk_gib: int
    gpus: int


class HostCapacity(BaseModel):
    cores: int
    memory_mib: int
    disk_gib: int
    gpus: list[dict[str, Any]]


class HostOut(BaseModel):
    id: str
    hostname: str
    cluster_id: str
    state: Literal["up", "down", "maintenance", "disabled"]
    admin_state: Literal["enabled", "disabled", "maintenance"]
    liveness: Literal["up", "down"]
    arch: str
    accel: str
    capacity: HostCapacity
    allocatable: HostResources
    usage: HostResources
    load: float
    underlay_ip: str | None = None
    network_host: bool = False
    last_heartbeat_at: datetime | None
    created_at: datetime


class HostRegistered(BaseModel):
    host: HostOut
    agent_token: str
    bus: str


class InstanceTypeCreate(Strict):
    name: str = Field(min_length=1, max_length=63)
    vcpus: int = Field(ge=1, le=240)
    memory_mib: int = Field(ge=128, le=1024 * 1024)
    min_disk_gib: int = Field(10, ge=1, le=32000)
    max_disk_gib: int = Field(2048, ge=1, le=32000)
    gpus: Literal[0, 1, 2, 4] = 0
    description: str | None = Field(None, max_length=255)


class InstanceTypeOut(BaseModel):
    id: str
    name: str
    vcpus: int
    memory_mib: int
    min_disk_gib: int
    max_disk_gib: int
    gpus: int
    description: str | None
    enabled: bool
    created_at: datetime


class InstanceTypeList(BaseModel):
    items: list[InstanceTypeOut]
    next_cursor: str | None = None


class ImageCreate(Strict):
    name: str = Field(min_length=1, max_length=128)
    os_family: Literal["linux", "windows", "bsd", "other"] = "linux"
    os_version: str | None = Field(None, max_length=64)
    arch: Arch = "x86_64"
    min_disk_gib: int = Field(1, ge=1, le=32000)
    visibility: Literal["private", "public", "shared"] = "private"
    shared_with: list[str] = Field([], max_length=100)
    source_url: str | None = Field(None, max_length=2048, description="http(s) URL to import")
    checksum_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")


class ImageUpdate(Strict):
    name: str | None = Field(None, min_length=1, max_length=128)
    visibility: Literal["private", "public", "shared"] | None = None
    shared_with: list[str] | None = Field(None, max_length=100)
    min_disk_gib: int | None = Field(None, ge=1, le=32000)


class ImageOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    os_family: str
    os_version: str | None
    arch: str
    format: str | None
    size_bytes: int | None
    virtual_size_bytes: int | None
    checksum_sha256: str | None
    min_disk_gib: int
    visibility: Literal["private", "public", "shared"]
    shared_with: list[str]
    state: Literal["importing", "available", "error"]
    error: str | None
    created_at: datetime
    updated_at: datetime


class VmExportImage(Strict):
    """``POST /v1/vms/{id}/actions/export-image``: the new image's name; OS family and
    version default to those of the image the VM was made from."""

    name: str = Field(min_length=1, max_length=128)
    os_family: Literal["linux", "windows", "bsd", "other"] | None = None
    os_version: str | None = Field(None, max_length=64)


class PlacementGroupCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    policy: Literal["anti-affinity", "affinity"]
    mode: Literal["hard", "soft"] = "hard"


class PlacementGroupOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    policy: Literal["anti-affinity", "affinity"]
    mode: Literal["hard", "soft"]
    created_at: datetime
    vm_ids: list[str] | None = None


class PlacementGroupList(BaseModel):
    items: list[PlacementGroupOut]
    next_cursor: str | None = None


class VmCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    instance_type: str = Field(min_length=1, max_length=64, description="name or id")
    image_id: str = Field(max_length=40)
    root_disk_gib: int | None = Field(None, ge=1, le=32000)
    subnet_id: str | None = Field(None, max_length=40)
    security_group_ids: list[str] = Field([], max_length=5)
    password: str | None = Field(None, min_length=1, max_length=128)
    ssh_keys: list[str] = Field([], max_length=10)
    user_data: str | None = Field(None, max_length=1024 * 1024 * 2)
    placement_group_id: str | None = Field(None, max_length=40)
    count: int = Field(1, ge=1, le=10)
    tags: dict[str, str] = Field({}, max_length=20)


class VmOut(BaseModel):
    id: str
    name: str
    hostname: str
    tenant_id: str
    state: str
    power_state: Literal["running", "stopped"]
    reason: str | None
    instance_type: str
    vcpus: int
    memory_mib: int
    root_disk_gib: int
    gpus: int
    gpu_addresses: list[str] = []
    image_id: str
    arch: str
    host_id: str | None
    subnet_id: str | None
    private_ip: str | None
    placement_group_id: str | None
    tags: dict[str, str]
    generation: int
    observed_generation: int
    accel: str | None = Field(
        None, description="What its host runs it with (kvm, tcg, sim), as the host reported"
    )
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    purge_after: datetime | None


class StopArgs(Strict):
    force: bool = False
    timeout: float = Field(60.0, ge=0, le=3600, description="graceful seconds before forcing")


class ReinstallArgs(Strict):
    image_id: str | None = Field(None, max_length=40)
    password: str | None = Field(None, min_length=1, max_length=128)


class ResizeArgs(Strict):
    instance_type: str = Field(min_length=1, max_length=64)
    allow_restart: bool = False


class MigrateArgs(Strict):
    host_id: str | None = Field(
        None, max_length=40, description="the destination (default: the scheduler's choice)"
    )
    block_migration: bool = Field(
        False,
        description="a running VM: copy its host-local root disk while it runs (required "
        "for VMs whose root disk is on local storage)",
    )


class PasswordArgs(Strict):
    password: str = Field(min_length=1, max_length=128)
    user: str | None = Field(None, max_length=32)


class ConsoleOutput(BaseModel):
    vm_id: str
    host_id: str
    lines: int = Field(description="How many lines ``output`` holds")
    output: str = Field(description="The tail of the serial console, lines ending in \\n")


class DiskStatsOut(BaseModel):
    name: str
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


class NicStatsOut(BaseModel):
    name: str
    rx_bytes: int = Field(description="Received by the guest")
    tx_bytes: int = Field(description="Sent by the guest")
    rx_packets: int
    tx_packets: int


class VmStatsOut(BaseModel):
    vm_id: str
    host_id: str
    collected_at: datetime
    started_at: datetime | None = Field(description="Counters count from here (a new value: reset)")
    cpu_time_ns: int = Field(description="CPU time of the VM's process (vCPUs + emulation)")
    memory_rss_bytes: int = Field(description="Host memory the VM's process holds")
    memory_mib: int
    vcpus: int
    disks: list[DiskStatsOut]
    nics: list[NicStatsOut] = Field(description="NICs whose backend the host can count")


class Console(BaseModel):
    url: str
    token: str
    expires_at: datetime
    protocol: str = "vnc"
