"""bench/scale.py end to end at toy size: 20 hosts, 300 VMs, on SQLite and PostgreSQL.

The same code path as the full benchmark (the cloud built by ``build``, hosts joined with
a token, VMs created by ``VmService.create`` with count=1 and count=10 requests and hard
anti-affinity groups, HTTP reads over ASGI, the claims checked against the database), so
CI proves the script still runs and still measures something real.
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.scale import Options, ScaleResult, percentile, run, summary, workload


def test_workload_mixes_batches_singles_and_groups() -> None:
    windows = workload(1000, 500, 0.1, 0.2, random.Random(1))
    requests = [r for w in windows for r in w]
    assert len(windows) == 2
    assert sum(r.count for r in requests) == 1000
    assert sum(r.count for r in requests if not r.batch) == 200
    assert {r.count for r in requests if r.batch and not r.group} <= set(range(1, 11))
    assert all(r.count == 3 for r in requests if r.group)
    assert any(r.group and r.batch for r in requests)
    assert any(r.group and not r.batch for r in requests)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


async def test_small_run(db_url: str, tmp_path: Path) -> None:
    opts = Options(
        hosts=20,
        vms=300,
        tenants=2,
        concurrency=2,
        group_share=0.2,
        single_share=0.2,
        window=150,
        samples=5,
        small_every=7,
    )
    database = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    result: ScaleResult = await run(database, db_url, tmp_path / "data", opts)
    assert result.vms == 300 and result.failures == 0
    assert result.groups > 0
    assert result.checks["ok"], result.checks["problems"]
    assert result.checks["grouped_vms"] == 3 * result.groups
    assert result.per_sec > 0 and result.single_per_sec > 0 and result.batch_per_sec > 0
    assert [w.vms for w in result.windows] == [150, 300]
    assert result.refreshes.count >= 1
    assert set(result.reads) >= {
        f"{read} ({who})"
        for who in ("owner", "admin")
        for read in ("list first page", "list deep page", "get one VM")
    }
    assert {"list first page (small tenant)", "get one VM (small tenant)"} <= set(result.reads)
    assert all(lat.samples == 5 and lat.p99_ms > 0 for lat in result.reads.values())
    assert set(result.plans) == {k for k in result.reads if k.startswith("list")}
    assert all("vms" in plan or "ix_" in plan for plan in result.plans.values()), result.plans
    assert result.rss_mib > 0
    text = summary([result])
    assert f"{database}: 20 hosts, 300 VMs" in text and "goal list p99 < 100 ms" in text
