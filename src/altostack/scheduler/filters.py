"""Filters: each answers one yes/no question about one host, with a reason for "no".

A filter is a tiny class so the chain reads as a list and a new rule is a new class, not a
new branch in a long function (the Nomad feasibility-checker shape). ``accepts`` is the
question. ``reason`` is the short phrase a person reads in "5 hosts checked: 3 short of
memory, 2 in maintenance"; ``reason_for`` lets a filter with several ways of saying no name
the one that applied. ``applies_to`` lets the planner drop, once per plan, a filter that
cannot reject anything for this request (no GPU asked, no group), which is a third of the
cost of a plan; ``accepts`` stays correct without it. Filters must be cheap and free of
side effects: the planner may call them a thousand times for one request when nothing fits.
"""

from __future__ import annotations

from typing import Protocol

from altostack.scheduler.model import HostView, PlacementRequest, PlanContext


class Filter(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def reason(self) -> str: ...

    def applies_to(self, request: PlacementRequest) -> bool: ...

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool: ...

    def reason_for(self, host: HostView) -> str: ...


class _Reasoned:
    """Defaults: most filters always apply and have only one way of saying no."""

    reason = ""

    def applies_to(self, request: PlacementRequest) -> bool:
        return True

    def reason_for(self, host: HostView) -> str:
        return self.reason


class HostStateFilter(_Reasoned):
    """Only ``up`` hosts take new VMs; the others are named by state in the explanation,
    because "2 in maintenance" tells an operator what to do and "2 unavailable" does not."""

    name = "host_state"
    reason = "not up"
    _reasons = {"down": "down", "maintenance": "in maintenance", "disabled": "disabled"}

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        return host.state == "up"

    def reason_for(self, host: HostView) -> str:
        return self._reasons.get(host.state, self.reason)


class ExcludeFilter(_Reasoned):
    """Keeps a re-plan away from hosts that already failed this request."""

    name = "exclude"
    reason = "excluded by the caller"

    def applies_to(self, request: PlacementRequest) -> bool:
        return bool(request.exclude_hosts)

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        return host.id not in request.exclude_hosts


class ClusterFilter(_Reasoned):
    name = "cluster"
    reason = "in another cluster"

    def applies_to(self, request: PlacementRequest) -> bool:
        return request.cluster_id is not None

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        return request.cluster_id is None or host.cluster_id == request.cluster_id


class ArchitectureFilter(_Reasoned):
    name = "architecture"
    reason = "wrong architecture"

    def applies_to(self, request: PlacementRequest) -> bool:
        return request.arch is not None

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        return request.arch is None or host.arch == request.arch


class GpuFilter(_Reasoned):
    """Runs before the capacity filters so a host without GPUs says so, not "short of memory"."""

    name = "gpu"
    reason = "short of GPUs"

    def applies_to(self, request: PlacementRequest) -> bool:
        return request.gpus > 0

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        return request.gpus == 0 or host.gpus_total - host.gpus_used >= request.gpus


class HardAntiAffinityFilter(_Reasoned):
    """A hard anti-affinity group never has two members on one host."""

    name = "anti_affinity"
    reason = "holding a member of the anti-affinity group"

    def applies_to(self, request: PlacementRequest) -> bool:
        group = request.group
        return group is not None and group.mode == "hard" and group.policy == "anti-affinity"

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        group = request.group
        return group is None or not self.applies_to(request) or group.id not in host.groups


class HardAffinityFilter(_Reasoned):
    """Once a hard affinity group has members, later members go only where they are.

    The first member goes anywhere (there is nothing to be near yet).
    """

    name = "affinity"
    reason = "outside the affinity group"

    def applies_to(self, request: PlacementRequest) -> bool:
        group = request.group
        return group is not None and group.mode == "hard" and group.policy == "affinity"

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        in_group = not ctx.group_hosts or host.id in ctx.group_hosts
        return in_group or not self.applies_to(request)


class VcpuFilter(_Reasoned):
    """Overcommitted by the cluster's ``cpu_allocation_ratio`` (copied into the host view)."""

    name = "vcpus"
    reason = "short of vCPUs"

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        return host.vcpus * host.cpu_ratio - host.vcpus_used >= request.vcpus


class MemoryFilter(_Reasoned):
    """Overcommitted by ``ram_allocation_ratio`` (1.0 by default: no overcommit)."""

    name = "memory"
    reason = "short of memory"

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        return host.memory_mib * host.ram_ratio - host.memory_mib_used >= request.memory_mib


class DiskFilter(_Reasoned):
    """Never overcommitted (see ``HostView.disk_gib_free``)."""

    name = "disk"
    reason = "short of disk"

    def accepts(self, host: HostView, request: PlacementRequest, ctx: PlanContext) -> bool:
        return host.disk_gib - host.disk_gib_used >= request.disk_gib
