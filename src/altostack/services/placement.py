"""Placement: placement groups, and turning a scheduler plan into a durable claim.

The planner (``altostack.scheduler``) is pure and works on an in-memory snapshot of the
hosts that this service keeps warm, so a placement costs no full table read. The snapshot
may be stale; the claim is not: it is a conditional UPDATE (``used + n <= capacity``)
inside the caller's transaction, plus, for hard anti-affinity, a row whose primary key
forbids two group members on one host. A lost race refreshes the snapshot and re-plans.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Float,
    Insert,
    Integer,
    Table,
    bindparam,
    case,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import manager_of_class

from altostack.db.database import Database
from altostack.db.models_compute import AntiAffinitySlot, Cluster, Host, PlacementGroup, Vm
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain.errors import Conflict, DomainError, InvalidRequest
from altostack.domain.ids import new_id
from altostack.scheduler.model import ClusterView, GroupView, HostView, PlacementRequest, Plan
from altostack.scheduler.planner import Planner
from altostack.scheduler.snapshot import apply_placement
from altostack.services import authz
from altostack.services.context import RequestContext
from altostack.services.infra import host_state

MAX_ATTEMPTS = 4


class NoCapacity(DomainError):
    """Nothing fits; the detail says why, filter by filter."""

    status = 409
    code = "InsufficientCapacity"
    title = "Insufficient capacity"


@dataclass(frozen=True)
class Claim:
    host_id: str
    cluster_id: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    gpus: int


def group_view(g: PlacementGroup) -> dict[str, Any]:
    return {
        "id": g.id,
        "tenant_id": g.tenant_id,
        "name": g.name,
        "policy": g.policy,
        "mode": g.mode,
        "created_at": g.created_at,
    }


class PlacementService:
    def __init__(self, db: Database, *, refresh_seconds: float = 5.0) -> None:
        self.db = db
        self.refresh_seconds = refresh_seconds
        self.planner = Planner()
        self._hosts: dict[str, HostView] = {}
        # The same views as a list (what the planner scans) and each one's position in it,
        # so recording a placement replaces one entry instead of rebuilding the list.
        self._host_list: list[HostView] = []
        self._position: dict[str, int] = {}
        self._clusters: dict[str, ClusterView] = {}
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    # ---- placement groups ------------------------------------------------------------
    async def create_group(
        self, ctx: RequestContext, name: str, policy: str, mode: str
    ) -> dict[str, Any]:
        authz.require(ctx, "placement-group:create")
        row = {
            "id": new_id("pg"),
            "tenant_id": ctx.principal.tenant_id,
            "name": name,
            "policy": policy,
            "mode": mode,
            "host_id": None,
            "members": 0,
            "created_at": utcnow(),
        }
        async with self.db.uow() as uow, uow.inline_statements():
            # One statement: the (tenant, name) unique key settles a taken name, also
            # against a concurrent create, instead of a read before the insert.
            conn = await uow.connection()
            created = await conn.execute(self._insert_ignoring(_GROUPS).values(row))
            if created.rowcount != 1:
                raise Conflict(f"a placement group named {name!r} already exists")
            await uow.commit()
        group: PlacementGroup = manager_of_class(PlacementGroup).new_instance()
        group.__dict__.update(row)
        return group_view(group)

    async def load_group(
        self, uow: UnitOfWork, ctx: RequestContext, group_id: str, perm: str
    ) -> PlacementGroup:
        group = await uow.session.get(PlacementGroup, group_id)
        authz.require(
            ctx,
            perm,
            tenant_id=group.tenant_id if group else None,
            kind="placement group",
            ident=group_id,
        )
        assert group is not None
        return group

    async def read_group(
        self, uow: UnitOfWork, ctx: RequestContext, group_id: str, perm: str
    ) -> PlacementGroup:
        """``load_group`` for a reader that only looks at the group (a VM create): its
        row by primary key as plain columns, not through the ORM's identity map and
        loading; the object is not tracked by the session."""
        conn = await uow.connection()
        row = (await conn.execute(_GROUP_BY_ID, {"group_id": group_id})).first()
        group: PlacementGroup | None = None
        if row is not None:
            group = manager_of_class(PlacementGroup).new_instance()
            group.__dict__.update(row._mapping)
        authz.require(
            ctx,
            perm,
            tenant_id=group.tenant_id if group else None,
            kind="placement group",
            ident=group_id,
        )
        assert group is not None
        return group

    async def get_group(self, ctx: RequestContext, group_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            group = await self.load_group(uow, ctx, group_id, "placement-group:read")
            members = list(
                await uow.session.scalars(
                    select(Vm.id).where(Vm.placement_group_id == group_id, Vm.state != "deleted")
                )
            )
        return {**group_view(group), "vm_ids": members}

    async def list_groups(self, ctx: RequestContext, tenant_id: str | None) -> list[dict[str, Any]]:
        authz.require(ctx, "placement-group:read")
        target = authz.tenant_filter(ctx, tenant_id)
        async with self.db.uow(write=False) as uow:
            stmt = select(PlacementGroup).order_by(PlacementGroup.id.desc())
            if target:
                stmt = stmt.where(PlacementGroup.tenant_id == target)
            return [group_view(g) for g in await uow.session.scalars(stmt)]

    async def delete_group(self, ctx: RequestContext, group_id: str) -> None:
        async with self.db.uow() as uow:
            group = await self.load_group(uow, ctx, group_id, "placement-group:delete")
            member = await uow.session.scalar(
                select(Vm.id).where(Vm.placement_group_id == group_id).limit(1)
            )
            if member is not None:
                raise Conflict(f"placement group {group.name!r} still holds VM {member}")
            await uow.session.delete(group)
            await uow.commit()

    # ---- snapshot --------------------------------------------------------------------
    async def refresh(self) -> None:
        """Rebuild the snapshot from the database: plain rows, no ORM objects, so a
        thousand hosts and every grouped VM load in a few milliseconds."""
        async with self.db.uow(write=False) as uow:
            clusters = {c.id: c for c in await uow.session.scalars(select(Cluster))}
            groups: dict[str, set[str]] = {}
            # Members in the recycle bin do not count: their anti-affinity slot and
            # affinity membership were given up at delete (restore takes them back).
            rows = await uow.session.execute(
                select(Vm.host_id, Vm.placement_group_id).where(
                    Vm.placement_group_id.is_not(None),
                    Vm.host_id.is_not(None),
                    Vm.state != "deleted",
                )
            )
            for host_id, group_id in rows.all():
                if host_id and group_id:
                    groups.setdefault(host_id, set()).add(group_id)
            hosts = (
                await uow.session.execute(
                    select(
                        Host.id,
                        Host.cluster_id,
                        Host.arch,
                        Host.admin_state,
                        Host.liveness,
                        Host.cores,
                        Host.memory_mib,
                        Host.disk_gib,
                        Host.vcpus_used,
                        Host.memory_mib_used,
                        Host.disk_gib_used,
                        Host.gpus,
                        Host.gpus_used,
                        Host.load,
                    )
                )
            ).all()
        self._clusters = {
            c.id: ClusterView(c.id, cast(Any, c.arch), cast(Any, c.policy))
            for c in clusters.values()
        }
        views: dict[str, HostView] = {}
        for h in hosts:
            cluster = clusters.get(h.cluster_id)
            if cluster is None:
                continue
            views[h.id] = HostView(
                id=h.id,
                cluster_id=h.cluster_id,
                arch=cast(Any, h.arch),
                state=cast(Any, host_state(cast(Any, h))),
                vcpus=h.cores,
                memory_mib=h.memory_mib,
                disk_gib=h.disk_gib,
                vcpus_used=h.vcpus_used,
                memory_mib_used=h.memory_mib_used,
                disk_gib_used=h.disk_gib_used,
                gpus_total=len(h.gpus or []),
                gpus_used=h.gpus_used,
                cpu_ratio=cluster.cpu_allocation_ratio,
                ram_ratio=cluster.ram_allocation_ratio,
                load=h.load,
                groups=frozenset(groups.get(h.id, ())),
            )
        self._hosts = views
        self._host_list = list(views.values())
        self._position = {host_id: i for i, host_id in enumerate(views)}
        self._loaded_at = time.monotonic()

    def _record(self, host: HostView) -> None:
        """Replace a host's view (after a claim) in the dict and in the planner's list."""
        self._hosts[host.id] = host
        position = self._position.get(host.id)
        if position is not None:
            self._host_list[position] = host

    def invalidate(self) -> None:
        self._loaded_at = 0.0

    async def _snapshot(self) -> None:
        if time.monotonic() - self._loaded_at > self.refresh_seconds:
            async with self._lock:
                if time.monotonic() - self._loaded_at > self.refresh_seconds:
                    await self.refresh()

    # ---- claims ----------------------------------------------------------------------
    async def place(
        self,
        uow: UnitOfWork,
        *,
        vm_id: str,
        vcpus: int,
        memory_mib: int,
        disk_gib: int,
        gpus: int,
        arch: str,
        group: PlacementGroup | None,
        exclude: frozenset[str] = frozenset(),
    ) -> Claim:
        """Choose a host and claim its capacity inside ``uow``; raises NoCapacity."""
        await self._snapshot()
        group_view_ = (
            GroupView(group.id, cast(Any, group.policy), cast(Any, group.mode)) if group else None
        )
        tried: set[str] = set(exclude)
        plan: Plan | None = None
        for attempt in range(MAX_ATTEMPTS):
            request = PlacementRequest(
                request_id=f"{vm_id}:{attempt}",
                vcpus=vcpus,
                memory_mib=memory_mib,
                disk_gib=disk_gib,
                gpus=gpus,
                arch=cast(Any, arch),
                group=group_view_,
                exclude_hosts=frozenset(tried),
            )
            plan = self.planner.plan(request, self._host_list, self._clusters)
            if plan.host_id is None:
                if attempt == 0 or not tried - exclude:
                    break
                await self.refresh()
                tried = set(exclude)
                continue
            host = self._hosts[plan.host_id]
            if await self._claim(uow, host, request, vm_id, group):
                self._record(apply_placement(host, request))
                return Claim(host.id, host.cluster_id, vcpus, memory_mib, disk_gib, gpus)
            tried.add(host.id)
            await self.refresh()
        explanation = plan.explanation if plan else "no hosts are registered"
        raise NoCapacity(explanation, extra={"rejections": dict(plan.rejections) if plan else {}})

    async def place_many(
        self,
        uow: UnitOfWork,
        *,
        vm_ids: Sequence[str],
        vcpus: int,
        memory_mib: int,
        disk_gib: int,
        gpus: int,
        arch: str,
        group: PlacementGroup | None,
    ) -> list[Claim]:
        """``place`` for a batch of equal VMs, in a constant number of statements.

        Each VM is planned against the snapshot as the previous ones left it (so a hard
        group never gets two members on one host, and capacity holds inside the batch);
        then one conditional UPDATE claims every chosen host (``used + n <= capacity``
        per host, ``RETURNING`` the hosts it could claim) and, for a hard anti-affinity
        group, one ``INSERT … ON CONFLICT DO NOTHING`` takes the (group, host) slots. A VM
        whose host or slot was lost to a race goes through ``place`` alone, which
        refreshes the snapshot and re-plans, exactly as a single VM would. GPU requests
        must use ``place``: their devices are chosen per VM under the host's row lock.
        """
        if gpus:
            raise ValueError("place_many does not place GPU VMs; use place")
        await self._snapshot()
        group_view_ = (
            GroupView(group.id, cast(Any, group.policy), cast(Any, group.mode)) if group else None
        )
        planned: list[tuple[str, HostView, PlacementRequest]] = []
        for vm_id in vm_ids:
            request = PlacementRequest(
                request_id=f"{vm_id}:0",
                vcpus=vcpus,
                memory_mib=memory_mib,
                disk_gib=disk_gib,
                gpus=0,
                arch=cast(Any, arch),
                group=group_view_,
            )
            plan = self.planner.plan(request, self._host_list, self._clusters)
            if plan.host_id is None:
                # The batch fails as a whole: forget what the earlier VMs were given (no
                # await since they were planned, so these are still the views they saw).
                for _, host, _ in reversed(planned):
                    self._record(host)
                raise NoCapacity(plan.explanation, extra={"rejections": dict(plan.rejections)})
            host = self._hosts[plan.host_id]
            planned.append((vm_id, host, request))
            self._record(apply_placement(host, request))
        claimed = await self._claim_hosts(uow, planned)
        placed = [(vm_id, host.id) for vm_id, host, _ in planned if host.id in claimed]
        slotted = {vm_id for vm_id, _ in placed}
        if group is not None and group.mode == "hard" and placed:
            if group.policy == "anti-affinity":
                slotted = await self._take_slots(uow, group.id, placed)
            elif not await self._join_affinity(uow, group.id, placed):
                slotted = set()
            for vm_id, host_id in placed:
                if vm_id not in slotted:
                    await self._release_claim(uow, host_id, vcpus, memory_mib, disk_gib)
        claims: dict[str, Claim] = {
            vm_id: Claim(host.id, host.cluster_id, vcpus, memory_mib, disk_gib, 0)
            for vm_id, host, _ in planned
            if vm_id in slotted
        }
        if len(claims) < len(planned):
            # Lost races: the snapshot was stale. Re-read it, keep the members of the
            # group placed above in view (their VM rows are not written yet), and place
            # the others one by one, as single VMs are placed.
            await self.refresh()
            if group_view_ is not None:
                for claim in claims.values():
                    view = self._hosts.get(claim.host_id)
                    if view is not None and group_view_.id not in view.groups:
                        self._record(replace(view, groups=view.groups | {group_view_.id}))
            for vm_id, _, _ in planned:
                if vm_id not in claims:
                    claims[vm_id] = await self.place(
                        uow,
                        vm_id=vm_id,
                        vcpus=vcpus,
                        memory_mib=memory_mib,
                        disk_gib=disk_gib,
                        gpus=0,
                        arch=arch,
                        group=group,
                    )
        return [claims[vm_id] for vm_id in vm_ids]

    async def _claim_hosts(
        self, uow: UnitOfWork, planned: Sequence[tuple[str, HostView, PlacementRequest]]
    ) -> set[str]:
        """One conditional UPDATE for every host of the batch; returns the hosts claimed.

        A host the batch chose twice is claimed for both VMs at once, so it is either
        claimed for both or for none (then both are re-planned)."""
        need: dict[str, list[int]] = {}
        ratios: dict[str, tuple[float, float]] = {}
        for _, host, request in planned:
            n = need.setdefault(host.id, [0, 0, 0, 0])
            n[0] += request.vcpus
            n[1] += request.memory_mib
            n[2] += request.disk_gib
            n[3] += request.gpus
            ratios[host.id] = (host.cpu_ratio, host.ram_ratio)

        params: dict[str, Any] = {"ids": list(need)}
        for i, key in enumerate(("n_vcpus", "n_memory", "n_disk", "n_gpus")):
            params[key] = {h: n[i] for h, n in need.items()}
        params["n_cpu_ratio"] = {h: r[0] for h, r in ratios.items()}
        params["n_ram_ratio"] = {h: r[1] for h, r in ratios.items()}
        if all(len(set(v.values())) == 1 for k, v in params.items() if k != "ids"):
            # The usual batch: equal VMs on distinct hosts of one cluster. A statement built
            # once, so SQLAlchemy neither rebuilds nor re-keys it for every request.
            uniform = {k: next(iter(v.values())) for k, v in params.items() if k != "ids"}
            conn = await uow.connection()
            if len(need) == 1:
                # One host (every count=1 request): no IN list to expand per execution.
                one = {"host_id": params["ids"][0], **uniform}
                return set((await conn.execute(_CLAIM_ONE, one)).scalars().all())
            result = await conn.execute(_CLAIM_UNIFORM, {"ids": params["ids"], **uniform})
            return set(result.scalars().all())

        def per_host(key: str) -> ColumnElement[Any]:
            return case(params[key], value=_HOSTS.c.id)

        vcpus, memory, disk, gpus = (
            per_host(k) for k in ("n_vcpus", "n_memory", "n_disk", "n_gpus")
        )
        conn = await uow.connection()
        result = await conn.execute(
            _claim_statement(
                _HOSTS.c.id.in_(params["ids"]),
                vcpus,
                memory,
                disk,
                gpus,
                per_host("n_cpu_ratio"),
                per_host("n_ram_ratio"),
            )
        )
        return set(result.scalars().all())

    async def _take_slots(
        self, uow: UnitOfWork, group_id: str, placed: Sequence[tuple[str, str]]
    ) -> set[str]:
        """The (group, host) slots of hard anti-affinity VMs (``(vm_id, host_id)`` pairs)
        in one statement; returns the VMs that got theirs (a slot another scheduler or a
        restored VM took first is not overwritten)."""
        rows = [{"group_id": group_id, "host_id": h, "vm_id": vm_id} for vm_id, h in placed]
        slots = cast(Table, AntiAffinitySlot.__table__)
        stmt = self._insert_ignoring(slots).values(rows)
        conn = await uow.connection()
        result = await conn.execute(stmt.returning(slots.c.vm_id))
        return set(result.scalars().all())

    def _insert_ignoring(self, table: Table) -> Any:
        """``INSERT … ON CONFLICT DO NOTHING`` in this database's dialect."""
        insert_: Any = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        stmt: Insert = insert_(table).on_conflict_do_nothing()
        return stmt

    async def _release_claim(
        self, uow: UnitOfWork, host_id: str, vcpus: int, memory_mib: int, disk_gib: int
    ) -> None:
        h = _HOSTS.c
        conn = await uow.connection()
        await conn.execute(
            update(_HOSTS)
            .where(h.id == host_id)
            .values(
                vcpus_used=h.vcpus_used - vcpus,
                memory_mib_used=h.memory_mib_used - memory_mib,
                disk_gib_used=h.disk_gib_used - disk_gib,
            )
        )

    async def _claim(
        self,
        uow: UnitOfWork,
        host: HostView,
        request: PlacementRequest,
        vm_id: str,
        group: PlacementGroup | None,
    ) -> bool:
        result = await uow.session.execute(
            update(Host)
            .where(
                Host.id == host.id,
                Host.admin_state == "enabled",
                Host.liveness == "up",
                Host.vcpus_used + request.vcpus <= Host.cores * host.cpu_ratio,
                Host.memory_mib_used + request.memory_mib <= Host.memory_mib * host.ram_ratio,
                Host.disk_gib_used + request.disk_gib <= Host.disk_gib,
            )
            .values(
                vcpus_used=Host.vcpus_used + request.vcpus,
                memory_mib_used=Host.memory_mib_used + request.memory_mib,
                disk_gib_used=Host.disk_gib_used + request.disk_gib,
                gpus_used=Host.gpus_used + request.gpus,
            )
            .execution_options(synchronize_session=False)
        )
        if not getattr(result, "rowcount", 0):
            return False
        if group is not None and group.policy == "anti-affinity" and group.mode == "hard":
            return await self._take_slot(uow, group.id, host.id, vm_id, request)
        if group is not None and group.policy == "affinity" and group.mode == "hard":
            if await self._join_affinity(uow, group.id, [(vm_id, host.id)]):
                return True
            await self.release(
                uow,
                Claim(
                    host.id, "", request.vcpus, request.memory_mib, request.disk_gib, request.gpus
                ),
                vm_id,
            )
            return False
        return True

    async def _join_affinity(
        self, uow: UnitOfWork, group_id: str, placed: Sequence[tuple[str, str]]
    ) -> bool:
        """Add members to a hard affinity group on their host, in one conditional UPDATE.

        The group row records its host: the first member sets it (``host_id IS NULL``),
        later ones must match it. Two schedulers that both saw the group empty and chose
        different hosts both reach this row; the database serialises them and the second
        finds another host recorded, updates nothing and re-plans (its refreshed snapshot
        then shows the first member's host). A batch is all on one host or not at all."""
        hosts = {host_id for _, host_id in placed}
        if len(hosts) != 1:
            return False
        [host_id] = hosts
        g = _GROUPS.c
        conn = await uow.connection()
        result = await conn.execute(
            update(_GROUPS)
            .where(g.id == group_id, or_(g.host_id.is_(None), g.host_id == host_id))
            .values(host_id=host_id, members=g.members + len(placed))
        )
        return bool(getattr(result, "rowcount", 0))

    async def leave_group(self, uow: UnitOfWork, vm: Vm) -> None:
        """A member goes to the recycle bin: it gives up its anti-affinity slot (released
        with its claim) and its affinity membership; the last member out frees the
        affinity group to start again on any host."""
        if vm.placement_group_id is None or vm.host_id is None:
            return
        g = _GROUPS.c
        conn = await uow.connection()
        await conn.execute(
            update(_GROUPS)
            .where(g.id == vm.placement_group_id, g.policy == "affinity", g.mode == "hard")
            .values(
                members=g.members - 1,
                host_id=case((g.members <= 1, None), else_=g.host_id),
            )
        )
        self.invalidate()

    async def rejoin_group(self, uow: UnitOfWork, vm: Vm) -> None:
        """A member comes back from the recycle bin on the host where its disk is: it must
        take its hard group's guard again, race-free, or the restore is refused.

        Re-placing it elsewhere would mean moving its disk (a migration), and quietly
        breaking a hard rule is what the user asked us never to do, so a conflict is a 409
        that names the VM or host in the way; the user decides (delete or move that one,
        or purge this one)."""
        if vm.placement_group_id is None or vm.host_id is None:
            return
        group = await uow.session.get(PlacementGroup, vm.placement_group_id)
        if group is None or group.mode != "hard":
            return
        extra: dict[str, Any] = {"placement_group_id": group.id, "host_id": vm.host_id}
        if group.policy == "anti-affinity":
            if await self._take_slots(uow, group.id, [(vm.id, vm.host_id)]):
                self.invalidate()
                return
            holder = await uow.session.scalar(
                select(AntiAffinitySlot.vm_id).where(
                    AntiAffinitySlot.group_id == group.id,
                    AntiAffinitySlot.host_id == vm.host_id,
                )
            )
            raise Conflict(
                f"cannot restore VM {vm.id}: VM {holder} of its hard anti-affinity group "
                f"{group.name!r} now runs on host {vm.host_id}, where this VM's disk is; "
                "delete that VM or purge this one",
                extra={**extra, "conflicting_vm_id": holder},
            )
        if await self._join_affinity(uow, group.id, [(vm.id, vm.host_id)]):
            self.invalidate()
            return
        await uow.session.refresh(group)
        raise Conflict(
            f"cannot restore VM {vm.id}: its hard affinity group {group.name!r} now runs on "
            f"host {group.host_id}, and this VM's disk is on host {vm.host_id}",
            extra={**extra, "group_host_id": group.host_id},
        )

    async def _take_slot(
        self, uow: UnitOfWork, group_id: str, host_id: str, vm_id: str, request: PlacementRequest
    ) -> bool:
        """The (group, host) primary key settles races between schedulers."""
        existing = await uow.session.get(AntiAffinitySlot, (group_id, host_id))
        ok = existing is None
        if ok:
            try:
                async with uow.session.begin_nested():
                    uow.session.add(
                        AntiAffinitySlot(group_id=group_id, host_id=host_id, vm_id=vm_id)
                    )
            except IntegrityError:
                ok = False
        if not ok:
            await self.release(
                uow,
                Claim(
                    host_id, "", request.vcpus, request.memory_mib, request.disk_gib, request.gpus
                ),
                vm_id,
            )
        return ok

    async def release(
        self,
        uow: UnitOfWork,
        claim: Claim,
        vm_id: str,
        *,
        keep_disk: bool = False,
    ) -> None:
        """Give back what a VM held; ``keep_disk`` for VMs whose disk stays (recycle bin)."""
        await self.release_on(uow, replace(claim, disk_gib=0) if keep_disk else claim)
        await uow.session.execute(delete(AntiAffinitySlot).where(AntiAffinitySlot.vm_id == vm_id))

    async def claim_on(
        self, uow: UnitOfWork, host_id: str, *, vcpus: int, memory_mib: int, disk_gib: int
    ) -> bool:
        """Claim more (or, negative, less) on a VM's current host: resize and restore."""
        cluster_ratio = await uow.session.execute(
            select(Cluster.cpu_allocation_ratio, Cluster.ram_allocation_ratio)
            .join(Host, Host.cluster_id == Cluster.id)
            .where(Host.id == host_id)
        )
        row = cluster_ratio.first()
        if row is None:
            return False
        cpu_ratio, ram_ratio = row
        result = await uow.session.execute(
            update(Host)
            .where(
                Host.id == host_id,
                Host.vcpus_used + vcpus <= Host.cores * cpu_ratio,
                Host.memory_mib_used + memory_mib <= Host.memory_mib * ram_ratio,
                Host.disk_gib_used + disk_gib <= Host.disk_gib,
            )
            .values(
                vcpus_used=Host.vcpus_used + vcpus,
                memory_mib_used=Host.memory_mib_used + memory_mib,
                disk_gib_used=Host.disk_gib_used + disk_gib,
            )
            .execution_options(synchronize_session=False)
        )
        self.invalidate()
        return bool(getattr(result, "rowcount", 0))

    async def claim_elsewhere(
        self, uow: UnitOfWork, vm: Vm, *, target: str | None, same_cluster: bool
    ) -> Claim:
        """Room for ``vm`` on another host (a migration): on ``target``, or where the
        planner puts it (in the VM's cluster when ``same_cluster``). The VM keeps its
        current claim until it has moved; a hard anti-affinity group gets a second slot,
        on the new host (held as :func:`moving_slot` until the move is done), so no other
        member lands on either host meanwhile. NoCapacity or
        Conflict (naming why) when there is no such room."""
        await self.refresh()  # a migration is rare: plan on the database's numbers
        group = None
        if vm.placement_group_id is not None:
            found = await uow.session.get(PlacementGroup, vm.placement_group_id)
            if found is not None and found.mode == "hard":
                group = found
        if group is not None and group.policy == "affinity":
            raise Conflict(
                f"VM {vm.id} is in hard affinity group {group.name!r}: its members must "
                "share a host, so it cannot move alone",
                extra={"placement_group_id": group.id},
            )
        source = self._hosts.get(vm.host_id or "")
        request = PlacementRequest(
            request_id=f"{vm.id}:migrate",
            vcpus=vm.vcpus,
            memory_mib=vm.memory_mib,
            disk_gib=vm.root_disk_gib,
            arch=cast(Any, vm.arch),
            cluster_id=source.cluster_id if same_cluster and source else None,
            group=GroupView(group.id, "anti-affinity", "hard") if group else None,
            exclude_hosts=frozenset({vm.host_id or ""}),
        )
        if target is not None:
            host = self._hosts.get(target)
            why = None
            if host is None:
                why = f"there is no host {target}"
            elif target == vm.host_id:
                why = f"VM {vm.id} already runs on host {target}"
            elif host.arch != vm.arch:
                why = f"host {target} is {host.arch}; VM {vm.id} is {vm.arch}"
            elif request.cluster_id is not None and host.cluster_id != request.cluster_id:
                why = f"host {target} is in another cluster; a live migration stays in one"
            if why is not None:
                raise InvalidRequest.for_field("host_id", why)
            candidates = [target]
        else:
            candidates = []
            tried: set[str] = set(request.exclude_hosts)
            for _ in range(MAX_ATTEMPTS):
                plan = self.planner.plan(
                    replace(request, exclude_hosts=frozenset(tried)),
                    self._host_list,
                    self._clusters,
                )
                if plan.host_id is None:
                    if not candidates:
                        raise NoCapacity(
                            plan.explanation, extra={"rejections": dict(plan.rejections)}
                        )
                    break
                candidates.append(plan.host_id)
                tried.add(plan.host_id)
        for host_id in candidates:
            host = self._hosts[host_id]
            if not await self._claim(uow, host, request, vm.id, None):
                continue
            claim = Claim(host.id, host.cluster_id, vm.vcpus, vm.memory_mib, vm.root_disk_gib, 0)
            if group is None or await self._take_slots(
                uow, group.id, [(moving_slot(vm.id), host.id)]
            ):
                self.invalidate()
                return claim
            await self.release_on(uow, claim)
        raise Conflict(
            f"no room for VM {vm.id} on {', '.join(candidates)}: short of capacity, not up "
            "and enabled, or holding a member of its hard anti-affinity group",
            extra={"hosts": candidates},
        )

    async def release_on(self, uow: UnitOfWork, claim: Claim) -> None:
        """Give back a claim's capacity only (a migration's other host: slots are kept
        or dropped by the caller)."""
        await uow.session.execute(
            update(Host)
            .where(Host.id == claim.host_id)
            .values(
                vcpus_used=Host.vcpus_used - claim.vcpus,
                memory_mib_used=Host.memory_mib_used - claim.memory_mib,
                disk_gib_used=Host.disk_gib_used - claim.disk_gib,
                gpus_used=Host.gpus_used - claim.gpus,
            )
            .execution_options(synchronize_session=False)
        )
        self.invalidate()


def moving_slot(vm_id: str) -> str:
    """The holder of a moving VM's anti-affinity slot on its destination (a VM holds one
    slot; during a migration it needs both)."""
    return f"{vm_id}>"


# Claims are Core statements on the table: the ORM's bulk-UPDATE path adds ~0.3 ms of
# Python per statement and nothing these statements need.
_HOSTS = cast(Table, Host.__table__)
_GROUPS = cast(Table, PlacementGroup.__table__)
_GROUP_BY_ID = select(_GROUPS).where(_GROUPS.c.id == bindparam("group_id"))


def _claim_statement(
    hosts: ColumnElement[bool],
    vcpus: ColumnElement[Any],
    memory_mib: ColumnElement[Any],
    disk_gib: ColumnElement[Any],
    gpus: ColumnElement[Any],
    cpu_ratio: ColumnElement[Any],
    ram_ratio: ColumnElement[Any],
) -> Any:
    """Claim on ``hosts`` what each needs, only where it still fits; RETURNING those."""
    h = _HOSTS.c
    return (
        update(_HOSTS)
        .where(
            hosts,
            h.admin_state == "enabled",
            h.liveness == "up",
            h.vcpus_used + vcpus <= h.cores * cpu_ratio,
            h.memory_mib_used + memory_mib <= h.memory_mib * ram_ratio,
            h.disk_gib_used + disk_gib <= h.disk_gib,
        )
        .values(
            vcpus_used=h.vcpus_used + vcpus,
            memory_mib_used=h.memory_mib_used + memory_mib,
            disk_gib_used=h.disk_gib_used + disk_gib,
            gpus_used=h.gpus_used + gpus,
        )
        .returning(h.id)
    )


def _uniform_claim(hosts: ColumnElement[bool]) -> Any:
    """The claim of equal VMs on ``hosts``: the same amounts for each; built once."""
    return _claim_statement(
        hosts,
        bindparam("n_vcpus", type_=Integer),
        bindparam("n_memory", type_=Integer),
        bindparam("n_disk", type_=Integer),
        bindparam("n_gpus", type_=Integer),
        bindparam("n_cpu_ratio", type_=Float),
        bindparam("n_ram_ratio", type_=Float),
    )


_CLAIM_UNIFORM = _uniform_claim(_HOSTS.c.id.in_(bindparam("ids", expanding=True)))
_CLAIM_ONE = _uniform_claim(_HOSTS.c.id == bindparam("host_id"))


def check_group(policy: str, mode: str) -> None:
    if policy not in ("anti-affinity", "affinity"):
        raise InvalidRequest.for_field("policy", "must be 'anti-affinity' or 'affinity'")
    if mode not in ("hard", "soft"):
        raise InvalidRequest.for_field("mode", "must be 'hard' or 'soft'")
