"""Weighers: each scores one feasible host in [0, 1]; the planner adds ``multiplier * score``.

Scores are bounded so the multipliers alone say how much each concern matters: a soft
group preference (multiplier 10) outweighs any capacity or load difference (at most 1 and
0.5), and capacity outweighs load. A weigher that has nothing to say about a request
says so in ``applies_to`` and the planner skips it for that plan; ``score`` still returns 0
for every host then, which would leave the ranking unchanged.
"""

from __future__ import annotations

from typing import Protocol

from altostack.scheduler.model import HostView, PlacementRequest, PlanContext


class Weigher(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def multiplier(self) -> float: ...

    def applies_to(self, request: PlacementRequest) -> bool: ...

    def score(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> float: ...


def free_after(host: HostView, request: PlacementRequest) -> float:
    """Fraction of (overcommitted) vCPU and memory capacity left if the VM lands here.

    The mean of the two, so a host with plenty of CPU but little memory is not mistaken
    for an empty one; disk is left out because it is rarely what fills a host first. It
    lies in [0, 1] for any host the filters accepted.
    """
    cpu_cap = host.vcpus * host.cpu_ratio
    mem_cap = host.memory_mib * host.ram_ratio
    cpu = (cpu_cap - host.vcpus_used - request.vcpus) / cpu_cap if cpu_cap > 0 else 0.0
    mem = (mem_cap - host.memory_mib_used - request.memory_mib) / mem_cap if mem_cap > 0 else 0.0
    return (cpu + mem) / 2


class SpreadPackWeigher:
    """Follows the host's cluster policy: spread keeps hosts evenly loaded (fewer noisy
    neighbours, smaller blast radius), pack fills hosts before opening new ones (room for
    big VMs, idle hosts that can be powered down). A host whose cluster is unknown spreads."""

    name = "spread_pack"

    def __init__(self, multiplier: float = 1.0) -> None:
        self.multiplier = multiplier

    def applies_to(self, request: PlacementRequest) -> bool:
        return True

    def score(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> float:
        free = free_after(host, request)
        cluster = ctx.clusters.get(host.cluster_id)
        return 1.0 - free if cluster is not None and cluster.policy == "pack" else free


class LoadWeigher:
    """Prefers hosts that are quiet right now; overcommit makes allocation a poor proxy for
    what guests actually use. Unknown load is reported as 0 and so costs nothing."""

    name = "load"

    def __init__(self, multiplier: float = 0.5) -> None:
        self.multiplier = multiplier

    def applies_to(self, request: PlacementRequest) -> bool:
        return True

    def score(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> float:
        load = host.load
        return 1.0 if load <= 0.0 else 0.0 if load >= 1.0 else 1.0 - load


class SoftAntiAffinityWeigher:
    """Soft anti-affinity: a host without a member scores 1, a host with one scores 0."""

    name = "soft_anti_affinity"

    def __init__(self, multiplier: float = 10.0) -> None:
        self.multiplier = multiplier

    def applies_to(self, request: PlacementRequest) -> bool:
        group = request.group
        return group is not None and group.mode == "soft" and group.policy == "anti-affinity"

    def score(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> float:
        group = request.group
        if group is None or not self.applies_to(request):
            return 0.0
        return 0.0 if group.id in host.groups else 1.0


class SoftAffinityWeigher:
    """Soft affinity: a host that already holds a member scores 1, others 0."""

    name = "soft_affinity"

    def __init__(self, multiplier: float = 10.0) -> None:
        self.multiplier = multiplier

    def applies_to(self, request: PlacementRequest) -> bool:
        group = request.group
        return group is not None and group.mode == "soft" and group.policy == "affinity"

    def score(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> float:
        if not self.applies_to(request):
            return 0.0
        return 1.0 if host.id in ctx.group_hosts else 0.0
