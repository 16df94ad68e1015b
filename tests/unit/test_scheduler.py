"""Scheduler building blocks: host views and overcommit, each filter, each weigher."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

import altostack.scheduler as scheduler_pkg
from altostack.scheduler import ClusterView, GroupView, HostView, PlacementRequest, PlanContext
from altostack.scheduler.filters import (
    ArchitectureFilter,
    ClusterFilter,
    DiskFilter,
    ExcludeFilter,
    GpuFilter,
    HardAffinityFilter,
    HardAntiAffinityFilter,
    HostStateFilter,
    MemoryFilter,
    VcpuFilter,
)
from altostack.scheduler.weighers import (
    LoadWeigher,
    SoftAffinityWeigher,
    SoftAntiAffinityWeigher,
    SpreadPackWeigher,
    free_after,
)

CLUSTERS = {
    "spread": ClusterView("spread", "x86_64", "spread"),
    "pack": ClusterView("pack", "x86_64", "pack"),
}
CTX = PlanContext(CLUSTERS)


def host(id: str = "h1", **kw: Any) -> HostView:
    base: dict[str, Any] = {
        "cluster_id": "spread",
        "arch": "x86_64",
        "state": "up",
        "vcpus": 16,
        "memory_mib": 65536,
        "disk_gib": 1000,
    }
    return HostView(id=id, **{**base, **kw})


def req(vcpus: int = 1, memory_mib: int = 1024, disk_gib: int = 10, **kw: Any) -> PlacementRequest:
    return PlacementRequest(kw.pop("request_id", "r1"), vcpus, memory_mib, disk_gib, **kw)


# ---- host view and overcommit ------------------------------------------------------------


def test_cpu_ratio_four_lets_four_vcpus_per_core() -> None:
    h = host(vcpus=4, cpu_ratio=4.0)
    assert h.vcpus_capacity == 16
    assert VcpuFilter().accepts(h, req(vcpus=16), CTX)
    assert not VcpuFilter().accepts(h, req(vcpus=17), CTX)
    used = host(vcpus=4, cpu_ratio=4.0, vcpus_used=15)
    assert used.vcpus_free == 1
    assert VcpuFilter().accepts(used, req(vcpus=1), CTX)
    assert not VcpuFilter().accepts(used, req(vcpus=2), CTX)


def test_ram_ratio_one_means_no_memory_overcommit() -> None:
    h = host(memory_mib=8192, ram_ratio=1.0, memory_mib_used=4096)
    assert h.memory_mib_free == 4096
    assert MemoryFilter().accepts(h, req(memory_mib=4096), CTX)
    assert not MemoryFilter().accepts(h, req(memory_mib=4097), CTX)


def test_ram_ratio_above_one_overcommits_memory() -> None:
    h = host(memory_mib=8192, ram_ratio=1.5)
    assert MemoryFilter().accepts(h, req(memory_mib=12288), CTX)
    assert not MemoryFilter().accepts(h, req(memory_mib=12289), CTX)


def test_disk_is_never_overcommitted() -> None:
    h = host(disk_gib=100, disk_gib_used=60, cpu_ratio=16.0, ram_ratio=4.0)
    assert h.disk_gib_free == 40
    assert DiskFilter().accepts(h, req(disk_gib=40), CTX)
    assert not DiskFilter().accepts(h, req(disk_gib=41), CTX)


def test_gpus_are_never_shared() -> None:
    assert host(gpus_total=2, gpus_used=1).gpus_free == 1


@pytest.mark.parametrize("kw", [{"vcpus": 0}, {"memory_mib": -1}, {"disk_gib": -1}, {"gpus": -1}])
def test_request_rejects_impossible_sizes(kw: dict[str, int]) -> None:
    args = {"vcpus": 1, "memory_mib": 1, "disk_gib": 1, "gpus": 0, **kw}
    with pytest.raises(ValueError):
        PlacementRequest("r", args["vcpus"], args["memory_mib"], args["disk_gib"], args["gpus"])


# ---- filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "reason"),
    [("down", "down"), ("maintenance", "in maintenance"), ("disabled", "disabled")],
)
def test_only_up_hosts_take_vms_and_the_reason_names_the_state(state: str, reason: str) -> None:
    f = HostStateFilter()
    assert f.accepts(host(), req(), CTX)
    h = host(state=state)
    assert not f.accepts(h, req(), CTX)
    assert f.reason_for(h) == reason


def test_exclude_filter_skips_hosts_already_tried() -> None:
    f = ExcludeFilter()
    r = req(exclude_hosts=frozenset({"h1"}))
    assert not f.accepts(host("h1"), r, CTX)
    assert f.accepts(host("h2"), r, CTX)
    assert f.reason_for(host("h1")) == "excluded by the caller"
    assert not f.applies_to(req()) and f.applies_to(r)


def test_cluster_filter() -> None:
    f = ClusterFilter()
    assert f.accepts(host(cluster_id="pack"), req(), CTX)
    assert f.accepts(host(cluster_id="pack"), req(cluster_id="pack"), CTX)
    assert not f.accepts(host(cluster_id="spread"), req(cluster_id="pack"), CTX)
    assert f.reason == "in another cluster"


def test_architecture_filter() -> None:
    f = ArchitectureFilter()
    arm = host(arch="aarch64")
    assert f.accepts(arm, req(), CTX)
    assert f.accepts(arm, req(arch="aarch64"), CTX)
    assert not f.accepts(arm, req(arch="x86_64"), CTX)
    assert f.reason == "wrong architecture"


def test_gpu_filter_counts_free_gpus() -> None:
    f = GpuFilter()
    assert f.accepts(host(), req(), CTX)
    assert not f.accepts(host(), req(gpus=1), CTX)
    assert f.accepts(host(gpus_total=4, gpus_used=2), req(gpus=2), CTX)
    assert not f.accepts(host(gpus_total=4, gpus_used=3), req(gpus=2), CTX)
    assert f.reason == "short of GPUs"


def test_hard_anti_affinity_filter_rejects_hosts_holding_a_member() -> None:
    f = HardAntiAffinityFilter()
    hard = GroupView("g", "anti-affinity", "hard")
    taken = host(groups=frozenset({"g"}))
    assert not f.accepts(taken, req(group=hard), CTX)
    assert f.accepts(host(groups=frozenset({"other"})), req(group=hard), CTX)
    # Soft anti-affinity and affinity are not this filter's business.
    assert f.accepts(taken, req(group=GroupView("g", "anti-affinity", "soft")), CTX)
    assert f.accepts(taken, req(group=GroupView("g", "affinity", "hard")), CTX)


def test_hard_affinity_filter_keeps_members_together_once_the_group_has_hosts() -> None:
    f = HardAffinityFilter()
    r = req(group=GroupView("g", "affinity", "hard"))
    assert f.accepts(host("h1"), r, PlanContext(CLUSTERS))  # first member: anywhere
    ctx = PlanContext(CLUSTERS, frozenset({"h2"}))
    assert not f.accepts(host("h1"), r, ctx)
    assert f.accepts(host("h2"), r, ctx)
    assert f.accepts(host("h1"), req(group=GroupView("g", "affinity", "soft")), ctx)
    assert f.reason == "outside the affinity group"


@pytest.mark.parametrize(
    ("filter_", "reason"),
    [
        (VcpuFilter(), "short of vCPUs"),
        (MemoryFilter(), "short of memory"),
        (DiskFilter(), "short of disk"),
    ],
)
def test_capacity_reasons(filter_: Any, reason: str) -> None:
    assert filter_.reason_for(host()) == reason


# ---- weighers -----------------------------------------------------------------------------


def test_free_after_balances_cpu_and_memory() -> None:
    h = host(vcpus=4, cpu_ratio=1.0, memory_mib=1000, ram_ratio=1.0)
    assert free_after(h, req(vcpus=2, memory_mib=0)) == pytest.approx(0.75)
    assert free_after(h, req(vcpus=2, memory_mib=1000)) == pytest.approx(0.25)


def test_spread_prefers_the_emptier_host_and_pack_the_fuller() -> None:
    w = SpreadPackWeigher()
    empty, half = host("a"), host("b", vcpus_used=32, memory_mib_used=32768)
    assert w.score(empty, req(), CTX) > w.score(half, req(), CTX)
    empty_p, half_p = (
        host("a", cluster_id="pack"),
        host("b", cluster_id="pack", vcpus_used=32, memory_mib_used=32768),
    )
    assert w.score(empty_p, req(), CTX) < w.score(half_p, req(), CTX)
    for h in (empty, half, empty_p, half_p):
        assert 0.0 <= w.score(h, req(), CTX) <= 1.0


def test_unknown_cluster_spreads() -> None:
    w = SpreadPackWeigher()
    assert w.score(host(cluster_id="nowhere"), req(), CTX) == w.score(host(), req(), CTX)


def test_load_weigher_prefers_quiet_hosts_and_clamps() -> None:
    w = LoadWeigher()
    assert w.score(host(load=0.1), req(), CTX) > w.score(host(load=0.9), req(), CTX)
    assert w.score(host(load=-1.0), req(), CTX) == 1.0
    assert w.score(host(load=7.0), req(), CTX) == 0.0


def test_soft_group_weighers() -> None:
    anti, aff = SoftAntiAffinityWeigher(), SoftAffinityWeigher()
    soft_anti = req(group=GroupView("g", "anti-affinity", "soft"))
    soft_aff = req(group=GroupView("g", "affinity", "soft"))
    with_g, without = host("h1", groups=frozenset({"g"})), host("h2")
    assert anti.score(with_g, soft_anti, CTX) == 0.0
    assert anti.score(without, soft_anti, CTX) == 1.0
    ctx = PlanContext(CLUSTERS, frozenset({"h1"}))
    assert aff.score(with_g, soft_aff, ctx) == 1.0
    assert aff.score(without, soft_aff, ctx) == 0.0
    # Nothing to say about other requests, and the planner skips them.
    for w in (anti, aff):
        assert not w.applies_to(req())
        assert w.score(with_g, req(), ctx) == 0.0
    assert not anti.applies_to(soft_aff) and not aff.applies_to(soft_anti)


# ---- purity -------------------------------------------------------------------------------


def test_scheduler_imports_only_the_stdlib_and_itself() -> None:
    """No I/O layers: the planner must stay a pure function (and cheap to import)."""
    allowed = {"__future__", "collections", "dataclasses", "hashlib", "math", "types", "typing"}
    root = Path(scheduler_pkg.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert name.startswith("altostack.scheduler") or top in allowed, (path, name)
