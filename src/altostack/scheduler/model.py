"""What the planner sees: frozen snapshots of hosts, clusters and groups, and what it answers.

Everything here is a plain value so a plan is a pure function of its inputs: the caller
builds the views from the database (or from its in-memory copy), the planner never reads
anything else, and the same inputs always give the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Arch = Literal["x86_64", "aarch64"]
HostState = Literal["up", "down", "maintenance", "disabled"]
ClusterPolicy = Literal["spread", "pack"]
GroupPolicy = Literal["anti-affinity", "affinity"]
GroupMode = Literal["hard", "soft"]


@dataclass(frozen=True, slots=True)
class HostView:
    """One host as of the snapshot.

    ``vcpus``, ``memory_mib`` and ``disk_gib`` are what the scheduler may hand out (the
    caller subtracts any host reservation first); the ratios come from the host's cluster
    and are copied here so the hot loop never looks the cluster up. ``groups`` holds the
    placement groups that already have a VM here, which is all anti-affinity needs.
    """

    id: str
    cluster_id: str
    arch: Arch
    state: HostState
    vcpus: int
    memory_mib: int
    disk_gib: int
    vcpus_used: int = 0
    memory_mib_used: int = 0
    disk_gib_used: int = 0
    gpus_total: int = 0
    gpus_used: int = 0
    cpu_ratio: float = 4.0
    ram_ratio: float = 1.0
    load: float = 0.0
    groups: frozenset[str] = frozenset()

    @property
    def vcpus_capacity(self) -> float:
        return self.vcpus * self.cpu_ratio

    @property
    def memory_mib_capacity(self) -> float:
        return self.memory_mib * self.ram_ratio

    @property
    def vcpus_free(self) -> float:
        """Overcommitted: a ratio of 4.0 lets four vCPUs share each physical core."""
        return self.vcpus * self.cpu_ratio - self.vcpus_used

    @property
    def memory_mib_free(self) -> float:
        return self.memory_mib * self.ram_ratio - self.memory_mib_used

    @property
    def disk_gib_free(self) -> int:
        """Never overcommitted: a thin disk that cannot grow corrupts its guest."""
        return self.disk_gib - self.disk_gib_used

    @property
    def gpus_free(self) -> int:
        """GPUs are passed through whole, so they are never shared."""
        return self.gpus_total - self.gpus_used


@dataclass(frozen=True, slots=True)
class ClusterView:
    id: str
    arch: Arch
    policy: ClusterPolicy = "spread"


@dataclass(frozen=True, slots=True)
class GroupView:
    id: str
    policy: GroupPolicy
    mode: GroupMode = "hard"


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """One VM to place. ``request_id`` seeds the visiting order, so it makes a plan replayable.

    ``exclude_hosts`` lists hosts the caller already tried (a failed boot, a lost claim)
    so a re-plan does not pick them again.
    """

    request_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    gpus: int = 0
    arch: Arch | None = None
    cluster_id: str | None = None
    group: GroupView | None = None
    exclude_hosts: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.vcpus < 1:
            raise ValueError("vcpus must be at least 1")
        if min(self.memory_mib, self.disk_gib, self.gpus) < 0:
            raise ValueError("memory_mib, disk_gib and gpus must not be negative")


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Per-request facts that filters and weighers share, computed once per plan.

    ``group_hosts`` is only filled for affinity groups (the hosts that already hold a
    member); anti-affinity reads ``HostView.groups`` directly and needs no scan.
    """

    clusters: Mapping[str, ClusterView]
    group_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Plan:
    """The planner's answer. ``host_id`` is None when nothing fits.

    ``rejections`` counts every checked host that failed, under the reason of the first
    filter that said no. ``score`` is the weighted sum of the winner's weigher scores and is
    only comparable with other hosts in the same plan.
    """

    host_id: str | None
    score: float
    candidates_checked: int
    rejections: Mapping[str, int] = field(default_factory=dict)
    explanation: str = ""

    @property
    def placed(self) -> bool:
        return self.host_id is not None
