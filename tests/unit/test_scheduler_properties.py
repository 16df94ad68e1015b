"""Properties of the planner over random clouds and requests (hypothesis)."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from altostack.scheduler import (
    ClusterView,
    GroupView,
    HostView,
    PlacementRequest,
    PlanContext,
    Planner,
)
from altostack.scheduler.model import HostState

CLUSTERS = {
    "c1": ClusterView("c1", "x86_64", "spread"),
    "c2": ClusterView("c2", "x86_64", "pack"),
    "c3": ClusterView("c3", "aarch64", "spread"),
}
GROUPS = [
    GroupView("g1", "anti-affinity", "hard"),
    GroupView("g2", "anti-affinity", "soft"),
    GroupView("g3", "affinity", "hard"),
    GroupView("g4", "affinity", "soft"),
]
GROUP_IDS = [g.id for g in GROUPS]
PLANNER = Planner()
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Usage as a fraction of capacity; fixed strategies keep generation cheap (hypothesis spends
# most of its time building strategies with bounds that depend on earlier draws).
FRACTIONS = st.sampled_from([0.0, 0.0, 0.25, 0.5, 0.9, 0.99, 1.0])


def _host(
    i: int,
    cluster: str,
    state: HostState,
    size: tuple[int, int, int, int],
    ratios: tuple[float, float],
    used: tuple[float, float, float, float],
    load: float,
    groups: frozenset[str],
) -> HostView:
    vcpus, memory, disk, gpus = size
    cpu_ratio, ram_ratio = ratios
    return HostView(
        id=f"h{i}",
        cluster_id=cluster,
        arch=CLUSTERS[cluster].arch,
        state=state,
        vcpus=vcpus,
        memory_mib=memory,
        disk_gib=disk,
        vcpus_used=int(vcpus * cpu_ratio * used[0]),
        memory_mib_used=int(memory * ram_ratio * used[1]),
        disk_gib_used=int(disk * used[2]),
        gpus_total=gpus,
        gpus_used=int(gpus * used[3]),
        cpu_ratio=cpu_ratio,
        ram_ratio=ram_ratio,
        load=load,
        groups=groups,
    )


HOST_PARTS = st.tuples(
    st.sampled_from(sorted(CLUSTERS)),
    st.sampled_from(["up", "up", "up", "down", "maintenance", "disabled"]),
    st.tuples(st.integers(1, 64), st.integers(0, 65536), st.integers(0, 2000), st.integers(0, 4)),
    st.tuples(st.sampled_from([1.0, 1.5, 4.0]), st.sampled_from([1.0, 1.5])),
    st.tuples(FRACTIONS, FRACTIONS, FRACTIONS, FRACTIONS),
    st.floats(0.0, 1.0),
    st.frozensets(st.sampled_from(GROUP_IDS), max_size=2),
)


def clouds(max_hosts: int = 20) -> st.SearchStrategy[list[HostView]]:
    return st.lists(HOST_PARTS, max_size=max_hosts).map(
        lambda parts: [_host(i, *p) for i, p in enumerate(parts)]
    )


def requests() -> st.SearchStrategy[PlacementRequest]:
    return st.builds(
        PlacementRequest,
        request_id=st.sampled_from(["r", "vm-1", "vm-2", "x"]),
        vcpus=st.integers(1, 32),
        memory_mib=st.integers(0, 32768),
        disk_gib=st.integers(0, 500),
        gpus=st.sampled_from([0, 0, 0, 1, 2]),
        arch=st.sampled_from([None, "x86_64", "aarch64"]),
        cluster_id=st.sampled_from([None, None, "c1", "c2", "c3"]),
        group=st.one_of(st.none(), st.sampled_from(GROUPS)),
        exclude_hosts=st.frozensets(st.sampled_from(["h0", "h1", "h2"]), max_size=2),
    )


def context(request: PlacementRequest, hosts: list[HostView]) -> PlanContext:
    group = request.group
    if group is None or group.policy != "affinity":
        return PlanContext(CLUSTERS)
    return PlanContext(CLUSTERS, frozenset(h.id for h in hosts if group.id in h.groups))


def fits(host: HostView) -> bool:
    return min(host.vcpus_free, host.memory_mib_free, host.disk_gib_free, host.gpus_free) >= 0


@SETTINGS
@given(hosts=clouds(), request=requests())
def test_a_chosen_host_passes_every_filter(
    hosts: list[HostView], request: PlacementRequest
) -> None:
    result = PLANNER.plan(request, hosts, CLUSTERS)
    ctx = context(request, hosts)
    if result.host_id is None:
        # Nothing fits: every host was checked and each failed exactly one counted reason.
        assert result.candidates_checked == len(hosts) == sum(result.rejections.values())
        for host in hosts:
            assert not all(f.accepts(host, request, ctx) for f in PLANNER.filters)
        return
    chosen = next(h for h in hosts if h.id == result.host_id)
    assert all(f.accepts(chosen, request, ctx) for f in PLANNER.filters)
    assert sum(result.rejections.values()) < result.candidates_checked <= len(hosts)


@SETTINGS
@given(hosts=clouds(), request=requests())
def test_plans_are_deterministic(hosts: list[HostView], request: PlacementRequest) -> None:
    assert Planner().plan(request, hosts, CLUSTERS) == PLANNER.plan(request, list(hosts), CLUSTERS)


@SETTINGS
@given(hosts=clouds(), request=requests())
def test_filters_that_do_not_apply_accept_everything(
    hosts: list[HostView], request: PlacementRequest
) -> None:
    ctx = context(request, hosts)
    for f in PLANNER.filters:
        if not f.applies_to(request):
            assert all(f.accepts(h, request, ctx) for h in hosts), f.name


@SETTINGS
@given(hosts=clouds(), request=requests())
def test_weigher_scores_stay_in_range(hosts: list[HostView], request: PlacementRequest) -> None:
    ctx = context(request, hosts)
    for host in hosts:
        if all(f.accepts(host, request, ctx) for f in PLANNER.filters):
            for w in PLANNER.weighers:
                assert 0.0 <= w.score(host, request, ctx) <= 1.0, w.name


@SETTINGS
@given(
    hosts=clouds(max_hosts=12),
    batch=st.lists(requests(), min_size=1, max_size=25),
)
def test_plan_many_never_overbooks_and_keeps_hard_groups(
    hosts: list[HostView], batch: list[PlacementRequest]
) -> None:
    batch = [
        PlacementRequest(
            f"r{i}", r.vcpus, r.memory_mib, r.disk_gib, r.gpus, r.arch, r.cluster_id, r.group
        )
        for i, r in enumerate(batch)
    ]
    plans, after = PLANNER.plan_many(batch, hosts, CLUSTERS)
    assert all(fits(h) for h in after)
    placed: dict[str, list[str]] = defaultdict(list)
    for request, result in zip(batch, plans, strict=True):
        if result.host_id is not None and request.group is not None:
            placed[request.group.id].append(result.host_id)
    had = {g: {h.id for h in hosts if g in h.groups} for g in GROUP_IDS}
    hard_anti = placed["g1"]
    assert len(hard_anti) == len(set(hard_anti)), "two members of a hard group on one host"
    assert not had["g1"] & set(hard_anti), "a member joined a host that already had one"
    hard_aff = set(placed["g3"])
    # The first member decides where the group lives; the rest follow it.
    assert hard_aff <= had["g3"] if had["g3"] else len(hard_aff) <= 1
    # Usage grew by exactly what was placed.
    added = sum(r.memory_mib for r, p in zip(batch, plans, strict=True) if p.placed)
    assert sum(h.memory_mib_used for h in after) - sum(h.memory_mib_used for h in hosts) == added


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_thousands_of_placements_fill_hosts_without_overbooking(seed: int) -> None:
    rng = random.Random(seed)
    hosts = [
        HostView(f"h{i}", "c1", "x86_64", "up", 8, 16384, 200, cpu_ratio=2.0) for i in range(20)
    ]
    batch = [
        PlacementRequest(
            f"r{i}",
            rng.choice([1, 2, 4]),
            rng.choice([512, 1024, 4096]),
            rng.choice([10, 20]),
            group=rng.choice([None, None, GROUPS[0], GROUPS[1]]),
        )
        for i in range(600)
    ]
    plans, after = PLANNER.plan_many(batch, hosts, CLUSTERS)
    assert all(fits(h) for h in after)
    g1 = [p.host_id for r, p in zip(batch, plans, strict=True) if p.placed and r.group == GROUPS[0]]
    assert len(g1) == len(set(g1)) > 10  # one member per host at most
    assert any(not p.placed for p in plans)  # the cloud did fill up
