"""Scheduler benchmark: place 100,000 VMs on a 1,000-host cloud in one Python process.

The cloud: 1,000 hosts of 64 cores, 256 GiB and 2 TiB in four clusters (two x86_64 spread,
one x86_64 pack, one aarch64 spread), with 6% of hosts down, in maintenance or disabled,
twenty with four GPUs each, and a small current load per host. The VMs: a mix of sizes from
1 vCPU / 512 MiB to 8 vCPU / 16 GiB, 30% pinned to a cluster, 5% aarch64, a few with a GPU,
and one in ten in an anti-affinity group of three (most hard, some soft). Every placement
is applied to the snapshot before the next one is planned, as a scheduler keeping its
in-memory copy current does; by default through ``Snapshot.hosts_for`` (a pinned request
is planned over its cluster's hosts), with ``--flat`` over all 1,000 hosts every time.

It prints placements per second (plan + apply; wall clock and CPU time, since a shared
machine steals wall time), p50/p99 plan latency, how many hosts a plan visits, how tight
the pack cluster is, how even the spread clusters are, and checks that no host is over
capacity and no hard anti-affinity group shares a host. The baseline, measured in the
same run on the first 2,000 requests, is a full scan (``limit`` = every eligible host):
``limit_speedup`` is what the candidate limit buys.

    .venv/bin/python bench/scheduler.py [--hosts 1000] [--vms 100000] [--seed 1] [--flat] [--json]
    .venv/bin/python bench/scheduler.py --pack-study   # pack tightness per candidate limit

Exit status: 0 when at least 1,000 placements/s (wall clock), 1 when not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from altostack.scheduler import (
    ClusterView,
    GroupView,
    HostView,
    PlacementRequest,
    Planner,
    Snapshot,
    candidate_limit,
)
from altostack.scheduler.model import Arch, GroupMode, HostState

TARGET_PER_SEC = 1_000
GIB = 1024
HOST_MEMORY_MIB = 256 * GIB
# (weight, vcpus, memory MiB, disk GiB): about 1.75 GiB of memory per VM on average, so
# 100,000 VMs fill the x86_64 memory to ~80% and the last plans see many full hosts.
SIZES = [
    (35, 1, 512, 10),
    (30, 1, 1 * GIB, 10),
    (20, 2, 2 * GIB, 20),
    (10, 2, 4 * GIB, 20),
    (4, 4, 8 * GIB, 40),
    (1, 8, 16 * GIB, 80),
]
CLUSTERS = {
    "c-spread-a": ClusterView("c-spread-a", "x86_64", "spread"),
    "c-spread-b": ClusterView("c-spread-b", "x86_64", "spread"),
    "c-pack": ClusterView("c-pack", "x86_64", "pack"),
    "c-arm": ClusterView("c-arm", "aarch64", "spread"),
}
SHARES = {"c-spread-a": 0.4, "c-spread-b": 0.3, "c-pack": 0.2, "c-arm": 0.1}


def make_hosts(count: int, rng: random.Random) -> list[HostView]:
    hosts: list[HostView] = []
    bounds = []
    edge = 0.0
    for cid, share in SHARES.items():
        edge += share
        bounds.append((edge, cid))
    for i in range(count):
        cid = next(c for edge, c in bounds if i < edge * count or c == "c-arm")
        roll = rng.random()
        state: HostState = "up"
        if roll < 0.06:  # 2% down, 3% in maintenance, 1% disabled
            state = "down" if roll < 0.02 else "maintenance" if roll < 0.05 else "disabled"
        hosts.append(
            HostView(
                id=f"host-{i:04d}",
                cluster_id=cid,
                arch=CLUSTERS[cid].arch,
                state=state,
                vcpus=64,
                memory_mib=HOST_MEMORY_MIB,
                disk_gib=2048,
                gpus_total=4 if cid == "c-spread-a" and i % 20 == 0 else 0,
                load=rng.random() * 0.2,
            )
        )
    return hosts


def make_requests(count: int, rng: random.Random) -> list[PlacementRequest]:
    weights = [s[0] for s in SIZES]
    requests: list[PlacementRequest] = []
    group: GroupView | None = None
    x86 = [c for c, v in CLUSTERS.items() if v.arch == "x86_64"]
    for i in range(count):
        _, vcpus, memory, disk = rng.choices(SIZES, weights)[0]
        arch: Arch = "aarch64" if rng.random() < 0.05 else "x86_64"
        cluster = None
        if rng.random() < 0.3:
            cluster = "c-arm" if arch == "aarch64" else rng.choice(x86)
        if i % 30 == 0:  # three VMs in every thirty: one in ten
            mode: GroupMode = "soft" if rng.random() < 0.2 else "hard"
            group = GroupView(f"g-{i}", "anti-affinity", mode)
        member = group if i % 30 < 3 else None
        gpus = 1 if arch == "x86_64" and rng.random() < 0.0005 else 0
        requests.append(
            PlacementRequest(
                request_id=f"vm-{i:06d}",
                vcpus=vcpus,
                memory_mib=memory,
                disk_gib=disk,
                gpus=gpus,
                arch=arch,
                cluster_id=cluster,
                group=member,
            )
        )
    return requests


@dataclass
class Result:
    hosts: int
    vms: int
    index: str
    placed: int
    failed: int
    seconds: float
    cpu_seconds: float
    placements_per_sec: float
    placements_per_cpu_sec: float
    p50_us: float
    p99_us: float
    mean_hosts_checked: float
    full_scan_per_sec: float
    limit_speedup: float
    pack_hosts_used: int
    pack_hosts_lower_bound: int
    spread_memory_stdev_pct: float
    over_capacity_hosts: int
    hard_anti_affinity_violations: int


@dataclass
class Run:
    latencies_ns: list[int]
    checked: list[int]
    chosen: list[str | None]
    seconds: float
    cpu_seconds: float
    hosts: list[HostView]


def place_all(
    planner: Planner,
    requests: Sequence[PlacementRequest],
    hosts: Sequence[HostView],
    *,
    flat: bool = False,
    full_scan: bool = False,
) -> Run:
    """Plan every request and apply each placement to the snapshot before the next plan.

    ``flat`` plans over every host instead of the cluster's (or architecture's) hosts;
    ``full_scan`` sets the candidate limit to every host, the baseline.
    """
    snapshot = Snapshot(hosts)
    latencies: list[int] = []
    checked: list[int] = []
    chosen: list[str | None] = []
    clock = time.perf_counter_ns
    plan = planner.plan
    start, cpu_start = clock(), time.process_time()
    for request in requests:
        t0 = clock()
        candidates = snapshot.hosts if flat else snapshot.hosts_for(request)
        limit = (len(candidates) or 1) if full_scan else None
        result = plan(request, candidates, CLUSTERS, limit=limit)
        latencies.append(clock() - t0)
        checked.append(result.candidates_checked)
        chosen.append(result.host_id)
        if result.host_id is not None:
            snapshot.apply(result.host_id, request)
    seconds = (clock() - start) / 1e9
    return Run(latencies, checked, chosen, seconds, time.process_time() - cpu_start, snapshot.hosts)


def over_capacity(hosts: Sequence[HostView]) -> int:
    """Hosts past any capacity: 0 by construction, checked because a fast wrong planner is
    worthless."""
    return sum(
        1
        for h in hosts
        if h.vcpus_free < 0 or h.memory_mib_free < 0 or h.disk_gib_free < 0 or h.gpus_free < 0
    )


def anti_affinity_violations(
    requests: Sequence[PlacementRequest], chosen: Sequence[str | None]
) -> int:
    seen: set[tuple[str, str]] = set()
    bad = 0
    for request, host_id in zip(requests, chosen, strict=True):
        group = request.group
        if host_id is None or group is None or group.mode != "hard":
            continue
        if (group.id, host_id) in seen:
            bad += 1
        seen.add((group.id, host_id))
    return bad


def measure(n_hosts: int, n_vms: int, seed: int, *, flat: bool) -> Result:
    rng = random.Random(seed)
    hosts = make_hosts(n_hosts, rng)
    requests = make_requests(n_vms, rng)
    planner = Planner()
    # Baseline and like-for-like sample: the first 2,000 VMs with and without the limit.
    sample = requests[: min(2_000, n_vms)]
    full = place_all(planner, sample, hosts, flat=flat, full_scan=True)
    limited = place_all(planner, sample, hosts, flat=flat)
    run = place_all(planner, requests, hosts, flat=flat)
    latencies = sorted(run.latencies_ns)
    failed = run.chosen.count(None)
    pack = [h for h in run.hosts if h.cluster_id == "c-pack"]
    spread_sd = max(
        statistics.pstdev(
            100 * h.memory_mib_used / h.memory_mib
            for h in run.hosts
            if h.state == "up" and h.cluster_id == cluster.id
        )
        for cluster in CLUSTERS.values()
        if cluster.policy == "spread"
    )
    return Result(
        hosts=n_hosts,
        vms=n_vms,
        index="flat list" if flat else "by cluster/arch (Snapshot.hosts_for)",
        placed=n_vms - failed,
        failed=failed,
        seconds=round(run.seconds, 3),
        cpu_seconds=round(run.cpu_seconds, 3),
        placements_per_sec=round(n_vms / run.seconds),
        placements_per_cpu_sec=round(n_vms / run.cpu_seconds),
        p50_us=round(latencies[len(latencies) // 2] / 1000, 1),
        p99_us=round(latencies[int(len(latencies) * 0.99)] / 1000, 1),
        mean_hosts_checked=round(statistics.fmean(run.checked), 1),
        full_scan_per_sec=round(len(sample) / full.seconds),
        limit_speedup=round(full.seconds / limited.seconds, 1),
        pack_hosts_used=sum(1 for h in pack if h.memory_mib_used),
        pack_hosts_lower_bound=math.ceil(sum(h.memory_mib_used for h in pack) / HOST_MEMORY_MIB),
        spread_memory_stdev_pct=round(spread_sd, 2),
        over_capacity_hosts=over_capacity(run.hosts),
        hard_anti_affinity_violations=anti_affinity_violations(requests, run.chosen),
    )


def pack_study(n_hosts: int, seed: int) -> list[dict[str, float]]:
    """How tight pack is for several candidate limits: one pack cluster, filled to ~40%.

    The numbers behind ``candidate_limit``'s choice for pack (docs/scheduler.md).
    """
    clusters = {"p": ClusterView("p", "x86_64", "pack")}
    hosts = [
        HostView(f"h{i}", "p", "x86_64", "up", 64, HOST_MEMORY_MIB, 2048) for i in range(n_hosts)
    ]
    rng = random.Random(seed)
    weights = [s[0] for s in SIZES]
    requests = []
    for i in range(n_hosts * 50):
        _, vcpus, memory, disk = rng.choices(SIZES, weights)[0]
        requests.append(PlacementRequest(f"r{i}", vcpus, memory, disk, cluster_id="p"))
    rows = []
    default = candidate_limit(n_hosts, pack=True)
    for limit in sorted({max(2, math.ceil(math.log2(n_hosts))), 32, default, 100, n_hosts}):
        start = time.process_time()
        _, after = Planner().plan_many(requests, hosts, clusters, limit=limit)
        seconds = time.process_time() - start
        used = sum(1 for h in after if h.memory_mib_used)
        bound = math.ceil(sum(h.memory_mib_used for h in after) / HOST_MEMORY_MIB)
        rows.append(
            {
                "limit": limit,
                "hosts_used": used,
                "lower_bound": bound,
                "above_bound_pct": round(100 * (used - bound) / bound, 1),
                "plans_per_cpu_sec": round(len(requests) / seconds),
            }
        )
    return rows


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1_000)
    parser.add_argument("--vms", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--flat", action="store_true", help="plan over all hosts, not the request's cluster"
    )
    parser.add_argument(
        "--pack-study", action="store_true", help="compare pack tightness across limits"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if args.pack_study:
        rows = pack_study(args.hosts, args.seed)
        print(json.dumps(rows, indent=2) if args.json else "\n".join(map(str, rows)))
        return 0
    result = measure(args.hosts, args.vms, args.seed, flat=args.flat)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()} x{os.cpu_count()} ({platform.machine()})",
        "python": platform.python_version(),
        **asdict(result),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:26} {value}")
    return 0 if result.placements_per_sec >= TARGET_PER_SEC else 1


if __name__ == "__main__":
    sys.exit(main())
