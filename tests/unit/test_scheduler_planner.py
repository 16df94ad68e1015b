"""The planner: choices, limits, determinism, explanations, batches and the snapshot."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from altostack.scheduler import (
    ClusterView,
    GroupView,
    HostView,
    PlacementRequest,
    Planner,
    Snapshot,
    apply_placement,
    candidate_limit,
    plan,
    plan_many,
)
from altostack.scheduler.order import seed_of, visit_order

CLUSTERS = {
    "spread": ClusterView("spread", "x86_64", "spread"),
    "pack": ClusterView("pack", "x86_64", "pack"),
    "arm": ClusterView("arm", "aarch64", "spread"),
}


def host(id: str, **kw: Any) -> HostView:
    base: dict[str, Any] = {
        "cluster_id": "spread",
        "arch": "x86_64",
        "state": "up",
        "vcpus": 16,
        "memory_mib": 65536,
        "disk_gib": 1000,
    }
    return HostView(id=id, **{**base, **kw})


def hosts(n: int, **kw: Any) -> list[HostView]:
    return [host(f"h{i:04d}", **kw) for i in range(n)]


def req(
    request_id: str = "r1", vcpus: int = 1, memory_mib: int = 1024, disk_gib: int = 10, **kw: Any
) -> PlacementRequest:
    return PlacementRequest(request_id, vcpus, memory_mib, disk_gib, **kw)


# ---- spread, pack, load -------------------------------------------------------------------


def test_spread_and_pack_choose_differently() -> None:
    def two(cluster: str) -> list[HostView]:
        return [
            host("empty", cluster_id=cluster),
            host("busy", cluster_id=cluster, vcpus_used=32, memory_mib_used=32768),
        ]

    assert plan(req(), two("spread"), CLUSTERS).host_id == "empty"
    assert plan(req(), two("pack"), CLUSTERS).host_id == "busy"


def test_pack_fills_one_host_before_opening_another() -> None:
    requests = [req(f"r{i}", memory_mib=8192, cluster_id="pack") for i in range(16)]
    plans, after = plan_many(requests, hosts(8, cluster_id="pack"), CLUSTERS)
    assert all(p.placed for p in plans)
    assert sum(1 for h in after if h.memory_mib_used) == 2  # 8 x 8 GiB per 64 GiB host


def test_spread_balances_hosts() -> None:
    requests = [req(f"r{i}", memory_mib=8192) for i in range(16)]
    _, after = plan_many(requests, hosts(8), CLUSTERS, limit=8)
    assert {h.memory_mib_used for h in after} == {16384}
    # With the default limit (best of 3 here) balance is close, not exact.
    _, after = plan_many(requests, hosts(8), CLUSTERS)
    assert all(8192 <= h.memory_mib_used <= 24576 for h in after)


def test_load_breaks_ties_between_equal_hosts() -> None:
    pool = [host("hot", load=0.9), host("cool", load=0.1)]
    for i in range(10):
        assert plan(req(f"r{i}"), pool, CLUSTERS).host_id == "cool"


def test_capacity_outweighs_load() -> None:
    pool = [
        host("busy-but-quiet", vcpus_used=48, memory_mib_used=49152, load=0.0),
        host("empty-but-loud", load=1.0),
    ]
    assert plan(req(), pool, CLUSTERS).host_id == "empty-but-loud"


# ---- groups -------------------------------------------------------------------------------


def test_hard_anti_affinity_never_co_locates_even_within_a_batch() -> None:
    g = GroupView("g", "anti-affinity", "hard")
    plans, after = plan_many([req(f"r{i}", group=g) for i in range(4)], hosts(3), CLUSTERS)
    chosen = [p.host_id for p in plans]
    assert len(set(chosen[:3])) == 3
    assert chosen[3] is None
    assert plans[3].explanation == (
        "no host fits 1 vCPU / 1024 MiB / 10 GiB (hard anti-affinity group g): "
        "3 hosts checked: 3 holding a member of the anti-affinity group"
    )
    assert all(h.groups == {"g"} for h in after)


def test_soft_anti_affinity_prefers_other_hosts_beyond_the_limit() -> None:
    g = GroupView("g", "anti-affinity", "soft")
    pool = [*hosts(50, groups=frozenset({"g"})), host("free")]
    for i in range(20):
        result = plan(req(f"r{i}", group=g), pool, CLUSTERS, limit=2)
        assert result.host_id == "free"


def test_soft_anti_affinity_still_places_when_every_host_has_the_group() -> None:
    g = GroupView("g", "anti-affinity", "soft")
    plans, _ = plan_many([req(f"r{i}", group=g) for i in range(6)], hosts(3), CLUSTERS)
    assert all(p.placed for p in plans)
    assert Counter(p.host_id for p in plans[:3]).most_common(1)[0][1] == 1


def test_hard_affinity_keeps_the_group_on_its_host() -> None:
    g = GroupView("g", "affinity", "hard")
    plans, _ = plan_many(
        [req(f"r{i}", group=g, memory_mib=16384) for i in range(5)], hosts(30), CLUSTERS
    )
    first = plans[0].host_id
    assert [p.host_id for p in plans[:4]] == [first] * 4
    assert plans[4].host_id is None  # the group's host is full; no other host may take it
    assert plans[4].rejections == {"outside the affinity group": 29, "short of memory": 1}


def test_hard_affinity_stops_once_a_group_host_fits() -> None:
    g = GroupView("g", "affinity", "hard")
    pool = hosts(1000)
    pool[500] = host("h0500", groups=frozenset({"g"}))
    result = plan(req(group=g), pool, CLUSTERS)
    assert result.host_id == "h0500"
    assert result.candidates_checked == 1


def test_soft_affinity_prefers_the_group_host_but_goes_elsewhere_when_full() -> None:
    g = GroupView("g", "affinity", "soft")
    pool = hosts(200)
    pool[123] = host("h0123", groups=frozenset({"g"}), memory_mib_used=60000)
    assert plan(req(group=g, memory_mib=4096), pool, CLUSTERS).host_id == "h0123"
    elsewhere = plan(req(group=g, memory_mib=8192), pool, CLUSTERS)
    assert elsewhere.host_id not in (None, "h0123")


# ---- GPUs, clusters, architectures, exclusions --------------------------------------------


def test_gpu_requests_land_only_on_hosts_with_free_gpus() -> None:
    pool = [*hosts(20), host("gpu-full", gpus_total=1, gpus_used=1), host("gpu", gpus_total=2)]
    for i in range(10):
        assert plan(req(f"r{i}", gpus=1), pool, CLUSTERS).host_id == "gpu"
    result = plan(req(gpus=3), pool, CLUSTERS)
    assert result.rejections == {"short of GPUs": 22}


def test_cluster_and_architecture_constraints() -> None:
    pool = [*hosts(5), host("arm1", cluster_id="arm", arch="aarch64")]
    assert plan(req(arch="aarch64"), pool, CLUSTERS).host_id == "arm1"
    assert plan(req(cluster_id="arm"), pool, CLUSTERS).host_id == "arm1"
    none = plan(req(arch="aarch64", cluster_id="spread"), pool, CLUSTERS)
    assert none.rejections == {"in another cluster": 1, "wrong architecture": 5}


def test_excluded_hosts_are_not_chosen_again() -> None:
    pool = hosts(3)
    first = plan(req(), pool, CLUSTERS).host_id
    assert first is not None
    again = plan(req(exclude_hosts=frozenset({first})), pool, CLUSTERS)
    assert again.host_id not in (None, first)


# ---- determinism --------------------------------------------------------------------------


def test_same_request_id_same_host() -> None:
    pool = hosts(100)
    first = plan(req("vm-42"), pool, CLUSTERS)
    for _ in range(5):
        again = Planner().plan(req("vm-42"), list(pool), dict(CLUSTERS))
        assert again == first


def test_different_request_ids_spread_over_identical_hosts() -> None:
    pool = hosts(100)
    chosen = {plan(req(f"vm-{i}"), pool, CLUSTERS).host_id for i in range(50)}
    assert len(chosen) >= 35


def test_visit_order_is_a_seeded_permutation() -> None:
    order = list(visit_order(100, "vm-1"))
    assert sorted(order) == list(range(100))
    assert order == list(visit_order(100, "vm-1"))
    assert order != list(visit_order(100, "vm-2"))
    preferred = list(visit_order(100, "vm-1", first=[7, 3, 9]))
    assert sorted(preferred[:3]) == [3, 7, 9] and sorted(preferred) == list(range(100))


def test_visit_order_is_stable_across_processes_and_versions() -> None:
    """Replaying a placement needs the same order tomorrow: these values must not change."""
    assert seed_of("vm-1") == 0x8B41178A589A1232
    assert list(visit_order(10, "vm-1")) == [9, 2, 7, 5, 8, 6, 0, 4, 3, 1]


def test_visit_order_is_roughly_uniform() -> None:
    firsts = Counter(next(visit_order(10, f"r{i}")) for i in range(5000))
    assert min(firsts.values()) > 400 and max(firsts.values()) < 600


# ---- the candidate limit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "pack", "limit"),
    [
        (0, False, 1),
        (1, False, 1),
        (2, False, 2),
        (3, False, 2),
        (1000, False, 10),
        (1000, True, 64),
        (30, True, 30),
        (10**6, True, 64),
    ],
)
def test_candidate_limit(n: int, pack: bool, limit: int) -> None:
    assert candidate_limit(n, pack) == limit


def test_checks_few_hosts_when_many_fit() -> None:
    result = plan(req(), hosts(1000), CLUSTERS)
    assert result.candidates_checked == 10
    assert result.rejections == {}
    assert result.explanation.endswith(": 10 of 10 hosts checked fit")


def test_pack_clusters_score_more_candidates() -> None:
    pool = hosts(1000, cluster_id="pack")
    assert plan(req(cluster_id="pack"), pool, CLUSTERS).candidates_checked == 64
    only_pack = {"pack": CLUSTERS["pack"], "arm": CLUSTERS["arm"]}
    assert plan(req(arch="x86_64"), pool, only_pack).candidates_checked == 64
    # A request that may also land in a spread cluster keeps the cheap limit.
    assert plan(req(), pool, CLUSTERS).candidates_checked == 10


def test_checks_every_host_when_none_fit() -> None:
    pool = hosts(1000, memory_mib_used=65536)
    result = plan(req(), pool, CLUSTERS)
    assert result.host_id is None
    assert result.candidates_checked == 1000
    assert result.rejections == {"short of memory": 1000}


def test_explicit_limit() -> None:
    assert plan(req(), hosts(100), CLUSTERS, limit=100).candidates_checked == 100
    with pytest.raises(ValueError):
        plan(req(), hosts(3), CLUSTERS, limit=0)


# ---- explanations -------------------------------------------------------------------------


def test_no_fit_explanation_counts_each_reason() -> None:
    pool = [host(f"m{i}", memory_mib=4096) for i in range(3)] + [
        host(f"x{i}", state="maintenance") for i in range(2)
    ]
    result = plan(req(vcpus=4, memory_mib=8192, disk_gib=40), pool, CLUSTERS)
    assert result.host_id is None
    assert result.explanation == (
        "no host fits 4 vCPU / 8192 MiB / 40 GiB: 5 hosts checked: "
        "3 short of memory, 2 in maintenance"
    )
    assert dict(result.rejections) == {"short of memory": 3, "in maintenance": 2}


def test_every_host_state_is_named() -> None:
    pool = [
        host("a", state="down"),
        host("b", state="down"),
        host("c", state="disabled"),
        host("d", state="maintenance"),
        host("e", vcpus=1, cpu_ratio=1.0),
    ]
    result = plan(req(vcpus=2, gpus=0, arch="x86_64"), pool, CLUSTERS)
    assert result.explanation == (
        "no host fits 2 vCPU / 1024 MiB / 10 GiB (x86_64): 5 hosts checked: "
        "2 down, 1 disabled, 1 in maintenance, 1 short of vCPUs"
    )


def test_no_hosts_at_all() -> None:
    result = plan(req(gpus=1), [], CLUSTERS)
    assert result.explanation == "no host fits 1 vCPU / 1024 MiB / 10 GiB / 1 GPU: no hosts"


def test_success_explanation_names_rejections() -> None:
    pool = [host("ok"), host("down", state="down")]
    result = plan(req(), pool, CLUSTERS, limit=2)
    assert result.host_id == "ok"
    assert result.explanation.startswith("placed on ok (score ")
    assert result.explanation.endswith("1 of 2 hosts checked fit; rejected 1 down")


def test_plan_rejections_are_read_only() -> None:
    result = plan(req(), [host("down", state="down")], CLUSTERS)
    with pytest.raises(TypeError):
        result.rejections["down"] = 0  # type: ignore[index]


# ---- applying placements: plan_many and Snapshot -----------------------------------------


def test_apply_placement_adds_usage_and_group() -> None:
    g = GroupView("g", "anti-affinity", "hard")
    r = req(vcpus=2, memory_mib=2048, disk_gib=20, gpus=1, group=g)
    after = apply_placement(host("h", gpus_total=1, groups=frozenset({"x"})), r)
    assert (after.vcpus_used, after.memory_mib_used, after.disk_gib_used, after.gpus_used) == (
        2,
        2048,
        20,
        1,
    )
    assert after.groups == {"x", "g"}
    assert apply_placement(after, r).groups == {"x", "g"}


def test_plan_many_leaves_the_snapshot_alone_for_failed_plans() -> None:
    pool = hosts(2, memory_mib=4096)
    plans, after = plan_many([req("a", memory_mib=8192), req("b", memory_mib=4096)], pool, CLUSTERS)
    assert [p.placed for p in plans] == [False, True]
    assert sum(h.memory_mib_used for h in after) == 4096
    assert all(h.memory_mib_used == 0 for h in pool)  # the input is not modified


def test_snapshot_narrows_by_cluster_and_architecture() -> None:
    snap = Snapshot(
        [*hosts(3), host("p1", cluster_id="pack"), host("a1", cluster_id="arm", arch="aarch64")]
    )
    assert [h.id for h in snap.hosts_for(req(cluster_id="pack"))] == ["p1"]
    assert [h.id for h in snap.hosts_for(req(arch="aarch64"))] == ["a1"]
    assert len(snap.hosts_for(req(arch="x86_64"))) == 4
    assert snap.hosts_for(req(cluster_id="nowhere")) == []
    assert len(snap.hosts_for(req())) == len(snap) == 5
    aff = req(cluster_id="pack", group=GroupView("g", "affinity", "hard"))
    assert len(snap.hosts_for(aff)) == 5  # must see the group's hosts wherever they are


def test_snapshot_apply_updates_every_view() -> None:
    snap = Snapshot([*hosts(2), host("p1", cluster_id="pack")])
    r = req(cluster_id="pack", memory_mib=4096)
    updated = snap.apply("p1", r)
    assert updated.memory_mib_used == 4096
    assert snap["p1"] == updated
    assert snap.hosts_for(r)[0] == updated
    assert snap.hosts_for(req(arch="x86_64"))[2] == updated


def test_snapshot_rejects_duplicate_hosts() -> None:
    with pytest.raises(ValueError, match="twice"):
        Snapshot([host("a"), host("a")])


def test_custom_chains() -> None:
    """A planner is its chains: with no filters every host fits, with no weighers the first
    visited wins."""
    bare = Planner(filters=[], weighers=[])
    result = bare.plan(req(), [host("down", state="down")], CLUSTERS)
    assert result.host_id == "down"
