"""Compute at scale: 1,000 sim hosts and 100,000 VMs in one process, through the services.

The cloud is built by the real code: ``build(settings, run_worker=False)`` and
``container.start()`` (migrations, the seeded region, cluster, instance types and image),
then ``--hosts`` hosts join the seeded cluster with ``InfraService.register_host`` and a
join token, as agents do (64 cores, 384 GiB, 4 TiB each; no agent runs). Tenants are made
with ``TenantService.create`` and get unlimited quotas from ``QuotaService.set_limits``.

The VMs are created with ``VmService.create``, exactly what ``POST /v1/vms`` runs: one unit
of work resolves the type and image, consumes the quotas, plans and claims a host for each
VM (conditional UPDATE, plus an anti-affinity slot for hard groups) and inserts the VM and
its ``vm.create`` operation. The worker is not started (``run_worker=False``), so the
operations stay pending: what is measured is the control plane's admission path, not the
agents' boot work. Sizes are mixed (c1.small 60%, c1.medium 30%, c1.large 8%, m1.xlarge
2%); ``--group-share`` of the VMs (10% by default) go in threes into a new hard
anti-affinity placement group (``PlacementService.create_group`` is part of the timed work).
Each window of ``--window`` VMs is created half with ``count=1`` requests and half with
``count=10`` requests (groups: one request of ``count=3``), so both rates are measured at
every size of the database; ``--concurrency`` requests are in flight at once.

Then, at that size, ``httpx.AsyncClient`` over ``ASGITransport`` against
``create_app(container, manage_lifecycle=False)`` reads, as a tenant owner (bearer token)
and as the platform administrator: ``GET /v1/vms?limit=100`` (first page), the same with a
cursor 90% of the way down the tenant's VMs (a deep page), and ``GET /v1/vms/{id}`` of
random VMs; p50/p99 of each. Finally every claim is checked against the database: host
usage equals the sum of its VMs, no hard group has two VMs on one host.

    .venv/bin/python bench/scale.py [--db sqlite|postgresql|both] [--hosts 1000]
        [--vms 100000] [--concurrency 4] [--json]

PostgreSQL is a private server started with ``tests.support.real.start_postgres`` and
stopped at the end (or ``--pg-url`` names one). RSS is this process's (the control plane:
API, services, SQLite's page cache), not the PostgreSQL server's.

Exit status: 0 when every goal is met (1,000 placements/s, RSS under 2 GiB, list p99
under 100 ms), 1 when not, 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import platform
import random
import re
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from altostack.api.app import create_app
from altostack.bootstrap import Container, build
from altostack.db.models import Tenant, User
from altostack.db.models_compute import AntiAffinitySlot, Cluster, Host, Image, Vm
from altostack.logging import configure as configure_logging
from altostack.services.auth import principal_for
from altostack.services.context import SYSTEM, RequestContext
from altostack.settings import Settings

ADMIN_PASSWORD = "Bench-Admin-Pass-1"
OWNER_PASSWORD = "Bench-Owner-Pass-1"
GIB = 1024
HOST_REPORT: dict[str, Any] = {
    "arch": "x86_64",
    "accel": "sim",
    "cores": 64,
    "memory_mib": 384 * GIB,
    "disk_gib": 4096,
    "gpus": [],
    "capabilities": {},
}
# (weight, instance type): the seeded types of allinone.SEED_TYPES.
MIX = [(60, "c1.small"), (30, "c1.medium"), (8, "c1.large"), (2, "m1.xlarge")]
TARGET_PER_SEC = 1_000.0
TARGET_RSS_MIB = 2 * 1024.0
TARGET_LIST_P99_MS = 100.0


class BenchError(Exception):
    """The benchmark could not run (as opposed to: it ran and missed a goal)."""


# --------------------------------------------------------------------------- results


@dataclass
class Latency:
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ms = sorted(s * 1000.0 for s in seconds)
        if not ms:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(len(ms), percentile(ms, 50), percentile(ms, 99), ms[-1])


@dataclass
class Window:
    """One slice of the run: how fast VMs were placed while the tables grew past ``vms``."""

    vms: int  # VMs in the database at the end of the window
    per_sec: float  # all placements of the window / its wall time
    single_per_sec: float  # count=1 requests only
    batch_per_sec: float  # count=10 (and count=3 group) requests only
    cpu_ms_per_vm: float  # this process's CPU time (all threads) per placement
    rss_mib: float


@dataclass
class ScaleResult:
    database: str
    hosts: int
    vms: int
    groups: int
    tenants: int
    concurrency: int
    setup_seconds: float
    seconds: float
    per_sec: float
    cpu_ms_per_vm: float
    load_before: float  # 1-minute load average of the machine, before and after
    load_after: float
    single_per_sec: float
    batch_per_sec: float
    request_single: Latency
    request_batch: Latency
    failures: int
    rss_mib: float
    peak_rss_mib: float
    windows: list[Window]
    refreshes: Refreshes
    reads: dict[str, Latency]
    plans: dict[str, str]  # the database's plan for each list query
    checks: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def list_p99_ms(self) -> float:
        return max(v.p99_ms for k, v in self.reads.items() if k.startswith("list"))

    def goals(self) -> dict[str, bool]:
        return {
            "placements/s >= 1000": self.per_sec >= TARGET_PER_SEC,
            "RSS < 2 GiB": self.peak_rss_mib < TARGET_RSS_MIB,
            "list p99 < 100 ms": self.list_p99_ms < TARGET_LIST_P99_MS,
        }


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(pct / 100.0 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(len(sorted_values), rank) - 1]


def rss_mib() -> float:
    """Resident set size now (``VmRSS``), MiB."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return peak_rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Request:
    """One ``VmService.create`` call: ``count`` VMs, in a new group when ``group``."""

    count: int
    instance_type: str
    group: bool
    batch: bool  # counted as a batch request (count=10, or a group's count=3)


def workload(
    vms: int, window: int, group_share: float, single_share: float, rng: random.Random
) -> list[list[Request]]:
    """The requests, window by window: ``single_share`` of each window's VMs as ``count=1``
    requests, the rest as ``count=10``; a ``group_share`` of the VMs in new groups of three
    (three ``count=1`` requests, or one ``count=3``)."""
    types = [name for _, name in MIX]
    weights = [w for w, _ in MIX]
    windows: list[list[Request]] = []
    made = 0
    while made < vms:
        size = min(window, vms - made)
        singles = round(size * single_share)
        requests: list[Request] = []
        for batch, share in ((False, singles), (True, size - singles)):
            left = share
            while left > 0:
                itype = rng.choices(types, weights)[0]
                if left >= 3 and rng.random() < group_share:
                    requests.append(Request(3, itype, True, batch))
                    left -= 3
                elif batch:
                    n = min(10, left)
                    requests.append(Request(n, itype, False, True))
                    left -= n
                else:
                    requests.append(Request(1, itype, False, False))
                    left -= 1
        windows.append(requests)
        made += size
    return windows


# --------------------------------------------------------------------------- the cloud


@dataclass
class Cloud:
    container: Container
    admin: RequestContext
    owners: list[RequestContext]
    small: RequestContext  # a tenant with few VMs among everyone else's
    image_id: str
    cluster_id: str

    def owner_for(self, n: int, small_every: int) -> RequestContext:
        """Request ``n``'s tenant: the small one every ``small_every`` requests, else the
        big ones in turn."""
        if small_every and n % small_every == 0:
            return self.small
        return self.owners[n % len(self.owners)]


def make_settings(db_url: str, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        db=db_url,
        driver="sim",
        sim_hosts=0,
        seed=True,
        bootstrap_admin_password=ADMIN_PASSWORD,
        password_hash_time_cost=1,
        password_hash_memory_kib=8,
        log_format="console",
        log_level="warning",
    )


@contextlib.asynccontextmanager
async def cloud(db_url: str, data_dir: Path, hosts: int, tenants: int) -> AsyncIterator[Cloud]:
    container = build(make_settings(db_url, data_dir), run_worker=False)
    await container.start()
    try:
        yield await _populate(container, hosts, tenants)
    finally:
        gc.unfreeze()
        await container.stop()


async def _populate(container: Container, hosts: int, tenants: int) -> Cloud:
    async with container.db.uow(write=False) as uow:
        cluster = await uow.session.scalar(select(Cluster).where(Cluster.name == "default"))
        image = await uow.session.scalar(select(Image).where(Image.name == "cirros-sim"))
        system = await uow.tenants.by_name("system")
        admin_user = await uow.users.by_login(system.id, "admin") if system else None
    if cluster is None or image is None or admin_user is None or system is None:
        raise BenchError("the seeded cluster, image or admin is missing")
    token = "join_" + secrets.token_urlsafe(24)
    await container.infra.set_join_token(cluster.id, token)
    for i in range(hosts):
        await container.infra.register_host(token, hostname=f"sim-{i + 1:04d}", report=HOST_REPORT)
    container.placement.invalidate()
    admin = RequestContext(principal_for(admin_user, system, "token", None, ("*:*",)))
    owners = []
    for name in [f"bench-{i + 1}" for i in range(tenants)] + ["bench-small"]:
        view = await container.tenants.create(
            RequestContext(SYSTEM), name, None, "owner", OWNER_PASSWORD
        )
        await container.quotas.set_limits(
            RequestContext(SYSTEM), view["id"], {"vms": -1, "vcpus": -1, "memory_mib": -1}
        )
        async with container.db.uow(write=False) as uow:
            user = await uow.users.by_login(view["id"], "owner")
            tenant = await uow.tenants.get(view["id"])
        assert user is not None and tenant is not None
        owners.append(RequestContext(principal_for(user, tenant, "token", None, ("*:*",))))
    return Cloud(container, admin, owners[:-1], owners[-1], image.id, cluster.id)


# --------------------------------------------------------------------------- placements


@dataclass
class CreateStats:
    vm_ids: dict[str, list[str]] = field(default_factory=dict)  # tenant id -> VM ids
    groups: int = 0
    failures: int = 0
    single_seconds: list[float] = field(default_factory=list)  # per request
    batch_seconds: list[float] = field(default_factory=list)
    single_vms: int = 0
    batch_vms: int = 0
    single_wall: float = 0.0  # wall time of the count=1 phases
    batch_wall: float = 0.0


async def create_vms(
    c: Cloud,
    windows: list[list[Request]],
    concurrency: int,
    progress: Callable[[str], None],
    small_every: int = 0,
) -> tuple[CreateStats, list[Window], float]:
    """Run the windows; in each, the count=1 requests and then the count=10 ones, with
    ``concurrency`` requests in flight."""
    stats = CreateStats()
    timeline: list[Window] = []
    counter = itertools.count(1)
    total = 0
    started = time.perf_counter()
    for requests in windows:
        cpu = time.process_time()
        times = {False: 0.0, True: 0.0}
        made = {False: 0, True: 0}
        for batch in (False, True):
            queue = [r for r in reversed(requests) if r.batch == batch]
            made[batch] = sum(r.count for r in queue)

            async def worker(queue: list[Request] = queue) -> None:
                while queue:
                    n = next(counter)
                    await _create(c, c.owner_for(n, small_every), queue.pop(), n, stats)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            times[batch] = time.perf_counter() - t0
        stats.single_wall += times[False]
        stats.batch_wall += times[True]
        total += made[False] + made[True]
        timeline.append(
            Window(
                vms=total,
                per_sec=(made[False] + made[True]) / (times[False] + times[True]),
                single_per_sec=made[False] / times[False] if made[False] else 0.0,
                batch_per_sec=made[True] / times[True] if made[True] else 0.0,
                cpu_ms_per_vm=(time.process_time() - cpu) * 1000.0 / (made[False] + made[True]),
                rss_mib=rss_mib(),
            )
        )
        w = timeline[-1]
        progress(
            f"  {total:>7} VMs  {w.per_sec:6.0f}/s  (count=1 {w.single_per_sec:5.0f}/s, "
            f"count=10 {w.batch_per_sec:5.0f}/s)  CPU {w.cpu_ms_per_vm:4.2f} ms/VM  "
            f"RSS {w.rss_mib:5.0f} MiB  load {os.getloadavg()[0]:4.1f}  "
            f"{time.perf_counter() - started:5.0f}s"
        )
    return stats, timeline, time.perf_counter() - started


async def _create(c: Cloud, ctx: RequestContext, req: Request, n: int, stats: CreateStats) -> None:
    """One request, or for a group: the group, then its three VMs (one request of count=3
    in batch mode, three requests of count=1 otherwise)."""
    body: dict[str, Any] = {"instance_type": req.instance_type, "image_id": c.image_id}
    if req.group:
        group = await c.container.placement.create_group(
            _fresh(ctx), f"g-{n}", "anti-affinity", "hard"
        )
        stats.groups += 1
        body["placement_group_id"] = group["id"]
    counts = [req.count] if req.batch or not req.group else [1] * req.count
    for i, count in enumerate(counts):
        t0 = time.perf_counter()
        try:
            created = await c.container.vms.create(
                _fresh(ctx), {**body, "name": f"vm-{n}-{i}", "count": count}
            )
        except Exception:
            stats.failures += 1
            raise
        elapsed = time.perf_counter() - t0
        stats.vm_ids.setdefault(ctx.principal.tenant_id, []).extend(vm.id for vm, _ in created)
        if req.batch:
            stats.batch_seconds.append(elapsed)
            stats.batch_vms += len(created)
        else:
            stats.single_seconds.append(elapsed)
            stats.single_vms += len(created)


def _fresh(ctx: RequestContext) -> RequestContext:
    """A new request context (its audit record is per request), as the middleware makes."""
    return RequestContext(ctx.principal)


# --------------------------------------------------------------------------- HTTP reads


async def read_latencies(
    c: Cloud, vm_ids: dict[str, list[str]], samples: int, rng: random.Random
) -> tuple[dict[str, Latency], dict[str, str]]:
    """p50/p99 of the list and get routes, as the owner of a big tenant, as the owner of
    the small tenant (whose VMs are few among many: the case an index must serve) and as
    the platform admin; and the plan the database chose for each list query."""
    app = create_app(c.container, manage_lifecycle=False)
    transport = httpx.ASGITransport(app=app)
    small_id = c.small.principal.tenant_id
    big_id = max((t for t in vm_ids if t != small_id), key=lambda t: len(vm_ids[t]))
    callers: list[tuple[str, RequestContext | None, list[str]]] = [
        ("owner", next(o for o in c.owners if o.principal.tenant_id == big_id), vm_ids[big_id])
    ]
    if vm_ids.get(small_id):
        callers.append(("small tenant", c.small, vm_ids[small_id]))
    callers.append(("admin", None, [v for ids in vm_ids.values() for v in ids]))
    reads: dict[str, Latency] = {}
    plans: dict[str, str] = {}
    async with httpx.AsyncClient(transport=transport, base_url="http://alto.test") as client:
        for who, ctx, ids in callers:
            if ctx is None:
                headers = await _login(client, "admin", ADMIN_PASSWORD, "system")
            else:
                headers = await _login(client, "owner", OWNER_PASSWORD, ctx.principal.tenant_name)
            newest_first = sorted(ids, reverse=True)
            lists = {"list first page": ("/v1/vms?limit=100", min(100, len(ids)))}
            deep = _deep_cursor(newest_first)
            if deep is not None:
                lists["list deep page"] = (f"/v1/vms?limit=100&cursor={deep}", 100)
            for name, (url, items) in lists.items():
                reads[f"{name} ({who})"] = await _time_get(client, headers, [url] * samples, items)
                plans[f"{name} ({who})"] = await explain(c, client, headers, url)
            urls = [f"/v1/vms/{rng.choice(ids)}" for _ in range(samples)]
            reads[f"get one VM ({who})"] = await _time_get(client, headers, urls)
    return reads, plans


async def explain(c: Cloud, client: httpx.AsyncClient, headers: dict[str, str], url: str) -> str:
    """The plan of the VM query that ``GET url`` runs: the statement is captured from the
    request and explained with its own parameters."""
    engine = c.container.db.engine.sync_engine
    captured: list[tuple[str, Any]] = []

    def grab(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM vms" in statement:
            captured.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        await client.get(url, headers=headers)
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    if not captured:
        return "(no VM query seen)"
    statement, params = captured[-1]
    prefix = "EXPLAIN QUERY PLAN " if c.container.db.is_sqlite else "EXPLAIN "
    async with c.container.db.engine.connect() as conn:
        rows = (await conn.exec_driver_sql(prefix + statement, params)).all()
    lines = (re.sub(r"\s*\(cost=[^)]*\)", "", str(row[-1])).strip() for row in rows)
    return " | ".join(line for line in lines if line)


def _deep_cursor(newest_first: Sequence[str]) -> str | None:
    """A cursor 90% of the way down the list, with a full page still after it."""
    if len(newest_first) < 101:
        return None
    return newest_first[min(int(len(newest_first) * 0.9), len(newest_first) - 101)]


async def _login(
    client: httpx.AsyncClient, user: str, password: str, tenant: str
) -> dict[str, str]:
    r = await client.post(
        "/v1/auth/tokens", json={"username": user, "password": password, "tenant": tenant}
    )
    if r.status_code != 201:
        raise BenchError(f"login as {tenant}/{user}: {r.status_code} {r.text}")
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _time_get(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    urls: Sequence[str],
    items: int | None = None,
) -> Latency:
    # One warm-up request (authentication cache, statement cache), not counted.
    r = await client.get(urls[0], headers=headers)
    if r.status_code != 200:
        raise BenchError(f"GET {urls[0]}: {r.status_code} {r.text[:300]}")
    seconds = []
    for url in urls:
        t0 = time.perf_counter()
        r = await client.get(url, headers=headers)
        seconds.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise BenchError(f"GET {url}: {r.status_code} {r.text[:300]}")
        if items is not None and len(r.json()["items"]) != items:
            raise BenchError(f"GET {url}: {len(r.json()['items'])} items, {items} expected")
    return Latency.of(seconds)


# --------------------------------------------------------------------------- checks


async def verify(c: Cloud, expected_vms: int) -> dict[str, Any]:
    """Every claim against the database: usage = sum of VMs, hard groups one per host."""
    async with c.container.db.uow(write=False) as uow:
        s = uow.session
        vms = int(await s.scalar(select(func.count()).select_from(Vm)) or 0)
        sums = {
            host_id: (int(cpu), int(mem), int(disk))
            for host_id, cpu, mem, disk in (
                await s.execute(
                    select(
                        Vm.host_id,
                        func.sum(Vm.vcpus),
                        func.sum(Vm.memory_mib),
                        func.sum(Vm.root_disk_gib),
                    ).group_by(Vm.host_id)
                )
            ).all()
        }
        usage = {
            h: (cpu, mem, disk)
            for h, cpu, mem, disk in (
                await s.execute(
                    select(Host.id, Host.vcpus_used, Host.memory_mib_used, Host.disk_gib_used)
                )
            ).all()
        }
        mismatched = sum(1 for h, u in usage.items() if u != sums.get(h, (0, 0, 0)))
        doubled = int(
            await s.scalar(
                select(func.count()).select_from(
                    select(Vm.placement_group_id, Vm.host_id)
                    .where(Vm.placement_group_id.is_not(None))
                    .group_by(Vm.placement_group_id, Vm.host_id)
                    .having(func.count() > 1)
                    .subquery()
                )
            )
            or 0
        )
        slots = int(await s.scalar(select(func.count()).select_from(AntiAffinitySlot)) or 0)
        grouped = int(
            await s.scalar(
                select(func.count()).select_from(Vm).where(Vm.placement_group_id.is_not(None))
            )
            or 0
        )
        tenants = int(await s.scalar(select(func.count()).select_from(Tenant)) or 0)
        users = int(await s.scalar(select(func.count()).select_from(User)) or 0)
    checks: dict[str, Any] = {
        "vms": vms,
        "hosts_used": len([h for h in sums if h]),
        "hosts_mismatched": mismatched,
        "groups_doubled_on_a_host": doubled,
        "anti_affinity_slots": slots,
        "grouped_vms": grouped,
        "tenants": tenants,
        "users": users,
    }
    problems = []
    if vms != expected_vms:
        problems.append(f"{vms} VMs in the database, {expected_vms} created")
    if mismatched:
        problems.append(f"{mismatched} hosts' usage differs from the sum of their VMs")
    if doubled:
        problems.append(f"{doubled} hard anti-affinity groups have two VMs on one host")
    if slots != grouped:
        problems.append(f"{slots} anti-affinity slots for {grouped} grouped VMs")
    checks["ok"] = not problems
    checks["problems"] = problems
    return checks


# --------------------------------------------------------------------------- one run


@dataclass
class Options:
    hosts: int = 1000
    vms: int = 100_000
    tenants: int = 10
    concurrency: int = 4
    group_share: float = 0.1
    single_share: float = 0.1
    window: int = 10_000
    samples: int = 300
    small_every: int = 500  # one request in this many is the small tenant's
    gc_freeze: bool = False  # gc.freeze() once the cloud is built, as a tuned server would
    seed: int = 1


async def run(
    database: str,
    db_url: str,
    data_dir: Path,
    opts: Options,
    progress: Callable[[str], None] = lambda _: None,
) -> ScaleResult:
    rng = random.Random(opts.seed)
    windows = workload(opts.vms, opts.window, opts.group_share, opts.single_share, rng)
    t0 = time.perf_counter()
    async with cloud(db_url, data_dir, opts.hosts, opts.tenants) as c:
        setup = time.perf_counter() - t0
        progress(f"{database}: {opts.hosts} hosts, {opts.tenants} tenants ready in {setup:.1f}s")
        gc.collect()
        if opts.gc_freeze:
            gc.freeze()
        refreshes = time_refreshes(c.container)
        load_before = os.getloadavg()[0]
        cpu = time.process_time()
        stats, timeline, seconds = await create_vms(
            c, windows, opts.concurrency, progress, opts.small_every
        )
        cpu = time.process_time() - cpu
        load_after = os.getloadavg()[0]
        created = stats.single_vms + stats.batch_vms
        gc.collect()
        now_rss = rss_mib()
        progress(f"{database}: {created} VMs in {seconds:.1f}s; reading over HTTP")
        reads, plans = await read_latencies(c, stats.vm_ids, opts.samples, rng)
        checks = await verify(c, created)
        checks["small_tenant_vms"] = len(stats.vm_ids.get(c.small.principal.tenant_id, []))
    return ScaleResult(
        database=database,
        hosts=opts.hosts,
        vms=created,
        groups=stats.groups,
        tenants=opts.tenants,
        concurrency=opts.concurrency,
        setup_seconds=setup,
        seconds=seconds,
        per_sec=created / seconds,
        cpu_ms_per_vm=cpu * 1000.0 / created,
        load_before=load_before,
        load_after=load_after,
        single_per_sec=stats.single_vms / stats.single_wall if stats.single_wall else 0.0,
        batch_per_sec=stats.batch_vms / stats.batch_wall if stats.batch_wall else 0.0,
        request_single=Latency.of(stats.single_seconds),
        request_batch=Latency.of(stats.batch_seconds),
        failures=stats.failures,
        rss_mib=now_rss,
        peak_rss_mib=peak_rss_mib(),
        windows=timeline,
        refreshes=refreshes,
        reads=reads,
        plans=plans,
        checks=checks,
        notes=[f"--single-share {opts.single_share:g}", f"--group-share {opts.group_share:g}"]
        + (["--gc-freeze"] if opts.gc_freeze else []),
    )


@dataclass
class Refreshes:
    """How often the placement snapshot was re-read from the database, and its cost."""

    count: int = 0
    seconds: float = 0.0
    max_ms: float = 0.0


def time_refreshes(container: Container) -> Refreshes:
    """Wrap ``PlacementService.refresh`` of this container to count and time it."""
    found = Refreshes()
    placement = container.placement
    original = placement.refresh

    async def timed() -> None:
        t0 = time.perf_counter()
        await original()
        elapsed = time.perf_counter() - t0
        found.count += 1
        found.seconds += elapsed
        found.max_ms = max(found.max_ms, elapsed * 1000.0)

    placement.refresh = timed  # type: ignore[method-assign]
    return found


# --------------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def private_postgres() -> Any:
    """A throw-away PostgreSQL server (the tests' ``start_postgres``)."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.support.real import start_postgres

    try:
        with contextlib.redirect_stdout(sys.stderr):  # it prints its port: keep --json clean
            server = start_postgres()
    except BaseException as exc:  # pytest.skip raises an exception outside pytest too
        raise BenchError(f"PostgreSQL could not start: {exc}") from exc
    try:
        yield server.url
    finally:
        server.stop()


async def create_database(admin_url: str, name: str) -> None:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            await conn.execute(text(f"CREATE DATABASE {name}"))
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- report


def summary(results: Sequence[ScaleResult]) -> str:
    lines = []
    for r in results:
        lines += [
            "",
            f"{r.database}: {r.hosts} hosts, {r.vms} VMs ({r.groups} hard anti-affinity groups "
            f"of 3), {r.tenants} tenants + a small one, {r.concurrency} requests in flight"
            + (f" ({', '.join(r.notes)})" if r.notes else ""),
            f"  placements/s          {r.per_sec:8.0f}   ({r.vms} VMs in {r.seconds:.1f}s)",
            f"    count=1 requests    {r.single_per_sec:8.0f}   p50 {r.request_single.p50_ms:.1f}"
            f" ms, p99 {r.request_single.p99_ms:.1f} ms per request",
            f"    count=10 requests   {r.batch_per_sec:8.0f}   p50 {r.request_batch.p50_ms:.1f}"
            f" ms, p99 {r.request_batch.p99_ms:.1f} ms per request",
            f"  first / last window   {r.windows[0].per_sec:8.0f} / {r.windows[-1].per_sec:.0f}"
            "  placements/s",
            f"  CPU per placement     {r.cpu_ms_per_vm:8.2f} ms (this process, all threads);"
            f" load average {r.load_before:.1f} -> {r.load_after:.1f}",
            f"  RSS                   {r.rss_mib:8.0f} MiB (peak {r.peak_rss_mib:.0f} MiB)",
            f"  snapshot refreshes    {r.refreshes.count:8d}   ({r.refreshes.seconds:.1f}s in all,"
            f" slowest {r.refreshes.max_ms:.0f} ms)",
            f"  {'read':34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
        ]
        for name, lat in r.reads.items():
            lines.append(f"  {name:34} {lat.p50_ms:8.2f} {lat.p99_ms:8.2f} {lat.max_ms:8.2f}")
        for name, plan in r.plans.items():
            lines.append(f"  plan {name:29} {plan[:160]}")
        lines.append("  checks: " + ("ok" if r.checks["ok"] else "; ".join(r.checks["problems"])))
        for goal, met in r.goals().items():
            lines.append(f"  goal {goal:24} {'met' if met else 'MISSED'}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--pg-url", help="an existing PostgreSQL server (admin URL, asyncpg)")
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--vms", type=int, default=100_000)
    p.add_argument("--tenants", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--group-share", type=float, default=0.1, help="VMs in groups of 3")
    p.add_argument(
        "--single-share", type=float, default=0.1, help="VMs created by count=1 requests"
    )
    p.add_argument("--window", type=int, default=10_000, help="VMs per timeline window")
    p.add_argument("--samples", type=int, default=300, help="timed requests per read")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() after setup: full collections then skip the startup objects",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> list[ScaleResult]:
    opts = Options(
        hosts=args.hosts,
        vms=args.vms,
        tenants=args.tenants,
        concurrency=args.concurrency,
        group_share=args.group_share,
        single_share=args.single_share,
        window=args.window,
        samples=args.samples,
        seed=args.seed,
        gc_freeze=args.gc_freeze,
    )

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="alto-scale-") as tmp:
        if args.db in ("sqlite", "both"):
            url = f"sqlite+aiosqlite:///{tmp}/sqlite/alto.db"
            results.append(await run("sqlite", url, Path(tmp) / "sqlite", opts, progress))
        if args.db in ("postgresql", "both"):
            with contextlib.ExitStack() as stack:
                admin_url: Callable[..., str]
                if args.pg_url:
                    base = args.pg_url.rsplit("/", 1)[0]

                    def admin_url(name: str = "postgres") -> str:
                        return f"{base}/{name}"
                else:
                    admin_url = stack.enter_context(private_postgres())
                await create_database(admin_url(), "alto_scale")
                pg = Path(tmp) / "postgresql"
                results.append(await run("postgresql", admin_url("alto_scale"), pg, opts, progress))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("console", "warning")
    try:
        results = asyncio.run(amain(args))
    except BenchError as exc:
        print(f"scale benchmark could not run: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": machine(),
                    "results": [
                        {**asdict(r), "list_p99_ms": r.list_p99_ms, "goals": r.goals()}
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    else:
        print(f"{machine()}\n{summary(results)}")
    met = all(all(r.goals().values()) and r.checks["ok"] for r in results)
    return 0 if met else 1


def machine() -> str:
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}),"
        f" Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


if __name__ == "__main__":
    sys.exit(main())
