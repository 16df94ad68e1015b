"""The planner: a pure function of (request, snapshot) that returns a plan with reasons.

It works like Nomad's: visit hosts in a shuffled order seeded from the request id, run the
filter chain on each (stopping at the first "no" and counting its reason), stop once
``limit`` hosts fit, score only those and return the best. When nothing fits every host has
been visited, so the explanation counts every host.

The planner does not claim anything. The caller commits the plan with a conditional UPDATE
and re-plans on conflict (docs/scheduler.md); ``Snapshot`` keeps an in-memory copy of the
hosts current between database reads, and ``plan_many`` plans a batch against one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from altostack.scheduler import explain
from altostack.scheduler.filters import (
    ArchitectureFilter,
    ClusterFilter,
    DiskFilter,
    ExcludeFilter,
    Filter,
    GpuFilter,
    HardAffinityFilter,
    HardAntiAffinityFilter,
    HostStateFilter,
    MemoryFilter,
    VcpuFilter,
)
from altostack.scheduler.model import (
    ClusterView,
    HostView,
    PlacementRequest,
    Plan,
    PlanContext,
)
from altostack.scheduler.order import visit_order
from altostack.scheduler.snapshot import Snapshot
from altostack.scheduler.weighers import (
    LoadWeigher,
    SoftAffinityWeigher,
    SoftAntiAffinityWeigher,
    SpreadPackWeigher,
    Weigher,
)

PACK_CANDIDATES = 64


def candidate_limit(n_hosts: int, pack: bool) -> int:
    """How many feasible hosts to score before choosing.

    Spread: ``max(2, ceil(log2(n)))`` as in Nomad. The best of k random hosts is already
    among the emptiest 1/(k+1) of them, a small k keeps a plan cheap, and concurrent
    planners then rarely pick the same host.

    Pack: ``max(spread limit, min(n, 64))``, so clusters of up to 64 hosts get an exact
    best fit. Packing is only as tight as the chance that the few part-filled hosts are
    among the candidates: on 1,000 pack hosts filled to a third with mixed sizes
    (``bench/scheduler.py --pack-study``), 10 candidates used 70% more hosts than the lower
    bound, 32 used 27%, 64 16%, 100 13% and a full scan 6%, at 12k, 5.7k, 3.4k, 2.3k and
    0.3k plans per CPU second. Sixty-four halves the waste of 32 and keeps a pack-only
    cloud at thousands of plans per second.
    """
    if n_hosts <= 1:
        return 1
    spread = max(2, math.ceil(math.log2(n_hosts)))
    return max(spread, min(n_hosts, PACK_CANDIDATES)) if pack else spread


class Planner:
    """A filter chain and a weigher chain; ``plan`` is a pure function over them."""

    def __init__(
        self,
        filters: Sequence[Filter] | None = None,
        weighers: Sequence[Weigher] | None = None,
    ) -> None:
        # Filters run in this order and stop at the first "no", so each rejected host is
        # counted once, under the first reason: cheap string compares before arithmetic,
        # and the reason an operator acts on first (a host in maintenance is reported "in
        # maintenance", not "short of memory").
        self.filters: tuple[Filter, ...] = (
            tuple(filters)
            if filters is not None
            else (
                HostStateFilter(),  # only "up" hosts; the reason names the state
                ExcludeFilter(),  # hosts this request already failed on
                ClusterFilter(),  # the cluster the caller asked for, if any
                ArchitectureFilter(),  # x86_64 images do not boot on aarch64
                GpuFilter(),  # before capacity: "short of GPUs" says more than "memory"
                HardAntiAffinityFilter(),  # never two members of the group on one host
                HardAffinityFilter(),  # once the group has hosts, only those hosts
                VcpuFilter(),  # overcommitted by cpu_allocation_ratio
                MemoryFilter(),  # overcommitted by ram_allocation_ratio
                DiskFilter(),  # never overcommitted
            )
        )
        # Weighers only rank hosts that passed every filter. Soft group wishes outweigh
        # everything else (10), capacity (spread/pack) outweighs momentary load (0.5).
        self.weighers: tuple[Weigher, ...] = (
            tuple(weighers)
            if weighers is not None
            else (
                SpreadPackWeigher(1.0),
                LoadWeigher(0.5),
                SoftAntiAffinityWeigher(10.0),
                SoftAffinityWeigher(10.0),
            )
        )

    def plan(
        self,
        request: PlacementRequest,
        hosts: Sequence[HostView],
        clusters: Mapping[str, ClusterView],
        *,
        limit: int | None = None,
    ) -> Plan:
        """Choose a host for ``request`` among ``hosts``; pure, and replayable by request id.

        ``limit`` overrides ``candidate_limit``. For an affinity group, pass every host that
        may hold a member: the group's hosts are learned from ``HostView.groups``.
        """
        members = _affinity_members(request, hosts)
        ctx = PlanContext(clusters, frozenset(hosts[i].id for i in members))
        if limit is None:
            limit = candidate_limit(len(hosts), _targets_pack(request, clusters))
        if limit < 1:
            raise ValueError("limit must be at least 1")
        candidates, checked, rejections = self._scan(request, hosts, ctx, limit, members)
        counts = MappingProxyType(rejections)
        if not candidates:
            return Plan(None, 0.0, checked, counts, explain.no_fit(request, checked, counts))
        best, score = self._best(candidates, request, ctx)
        text = explain.placed(best.id, score, checked, len(candidates), counts)
        return Plan(best.id, score, checked, counts, text)

    def _scan(
        self,
        request: PlacementRequest,
        hosts: Sequence[HostView],
        ctx: PlanContext,
        limit: int,
        members: Sequence[int],
    ) -> tuple[list[HostView], int, dict[str, int]]:
        """Visit hosts until ``limit`` fit (or all were seen); returns the ones that fit,
        how many were visited and how many failed for each reason."""
        group = request.group
        # Hosts that already hold a soft anti-affinity member fit but are set aside, so they
        # are chosen only when too few other hosts fit (a weigher alone could not see the
        # better hosts the limit stopped us from visiting).
        avoid = (
            group.id if group and group.mode == "soft" and group.policy == "anti-affinity" else None
        )
        # With hard affinity only the group's hosts (visited first) can fit, so once one of
        # them does, visiting the rest would only confirm that they do not.
        members_only = len(members) if group and group.mode == "hard" and members else -1
        # Drop, for this plan, the links that cannot matter (no GPU asked, no group): a
        # third of the per-host cost. Bound methods save an attribute lookup per call.
        checks = [(f.accepts, f) for f in self.filters if f.applies_to(request)]
        rejections: dict[str, int] = {}
        candidates: list[HostView] = []
        deferred: list[HostView] = []
        checked = 0
        for index in visit_order(len(hosts), request.request_id, members):
            if checked == members_only and candidates:
                break
            host = hosts[index]
            checked += 1
            for accepts, check in checks:
                if not accepts(host, request, ctx):
                    reason = check.reason_for(host)
                    rejections[reason] = rejections.get(reason, 0) + 1
                    break
            else:
                if avoid is not None and avoid in host.groups:
                    deferred.append(host)
                    continue
                candidates.append(host)
                if len(candidates) >= limit:
                    break
        if len(candidates) < limit:
            candidates.extend(deferred[: limit - len(candidates)])
        return candidates, checked, rejections

    def _best(
        self, candidates: Iterable[HostView], request: PlacementRequest, ctx: PlanContext
    ) -> tuple[HostView, float]:
        """Highest weighted score; ties go to the host visited first (the seeded order)."""
        weighers = [(w.multiplier, w.score) for w in self.weighers if w.applies_to(request)]
        best: HostView | None = None
        best_score = -math.inf
        for host in candidates:
            score = 0.0
            for multiplier, weigh in weighers:
                score += multiplier * weigh(host, request, ctx)
            if score > best_score:
                best, best_score = host, score
        assert best is not None
        return best, best_score

    def plan_many(
        self,
        requests: Iterable[PlacementRequest],
        hosts: Sequence[HostView],
        clusters: Mapping[str, ClusterView],
        *,
        limit: int | None = None,
    ) -> tuple[list[Plan], list[HostView]]:
        """Plan a batch, each VM against the snapshot as the previous ones left it.

        That is what keeps hard anti-affinity and capacity true inside one batch. A VM
        that does not fit gets a plan with ``host_id`` None and leaves the snapshot as it
        was; whether the batch is all-or-nothing is the caller's decision.
        """
        snapshot = Snapshot(hosts)
        plans: list[Plan] = []
        for request in requests:
            result = self.plan(request, snapshot.hosts_for(request), clusters, limit=limit)
            if result.host_id is not None:
                snapshot.apply(result.host_id, request)
            plans.append(result)
        return plans, snapshot.hosts


def _affinity_members(request: PlacementRequest, hosts: Sequence[HostView]) -> list[int]:
    """Positions of the hosts that already hold a member of the request's affinity group."""
    group = request.group
    if group is None or group.policy != "affinity":
        return []
    gid = group.id
    return [i for i, host in enumerate(hosts) if gid in host.groups]


def _targets_pack(request: PlacementRequest, clusters: Mapping[str, ClusterView]) -> bool:
    """Whether every cluster the request may land in packs (then the pack limit applies).

    A request that may also land in a spread cluster keeps the cheap limit: its pack
    candidates compete with spread ones anyway, so sampling more of them buys little.
    """
    if request.cluster_id is not None:
        cluster = clusters.get(request.cluster_id)
        return cluster is not None and cluster.policy == "pack"
    eligible = [c for c in clusters.values() if request.arch is None or c.arch == request.arch]
    return bool(eligible) and all(c.policy == "pack" for c in eligible)


_DEFAULT = Planner()


def plan(
    request: PlacementRequest,
    hosts: Sequence[HostView],
    clusters: Mapping[str, ClusterView],
    *,
    limit: int | None = None,
) -> Plan:
    """Plan one VM with the default filter and weigher chains (see ``Planner``)."""
    return _DEFAULT.plan(request, hosts, clusters, limit=limit)


def plan_many(
    requests: Iterable[PlacementRequest],
    hosts: Sequence[HostView],
    clusters: Mapping[str, ClusterView],
    *,
    limit: int | None = None,
) -> tuple[list[Plan], list[HostView]]:
    """Plan a batch with the default chains (see ``Planner.plan_many``)."""
    return _DEFAULT.plan_many(requests, hosts, clusters, limit=limit)
