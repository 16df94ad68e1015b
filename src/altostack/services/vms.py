"""Virtual machines: create (placement, quota, claim in one transaction) and actions.

Every change writes the new spec (``generation`` + 1) and an operation in one unit of
work; the operation handlers in ``controllers.compute`` then drive the host agent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, insert, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm.attributes import manager_of_class

from altostack.db.database import Database
from altostack.db.models import Operation
from altostack.db.models_compute import Host, Image, InstanceType, PlacementGroup, Vm
from altostack.db.models_storage import Disk, Snapshot
from altostack.db.repositories import Page, page_of, take_quotas
from altostack.db.types import utcnow
from altostack.db.uow import UnitOfWork
from altostack.domain import vm_states
from altostack.domain.errors import Conflict, InvalidRequest
from altostack.domain.ids import new_id
from altostack.services import authz
from altostack.services.console import issue_token
from altostack.services.context import RequestContext
from altostack.services.images import can_see
from altostack.services.instance_types import InstanceTypeService
from altostack.services.operations import OperationService
from altostack.services.passwords import check_strength
from altostack.services.placement import Claim, PlacementService
from altostack.services.quotas import QuotaService
from altostack.services.vm_migration import prepare_migration

CONSOLE_SECONDS = 300
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_BATCH = 10
MAX_USER_DATA = 1024 * 1024
M = TypeVar("M")


def _column_attrs(model: type[Any]) -> list[tuple[str, Any]]:
    return [(attr.key, attr.columns[0]) for attr in sa_inspect(model).column_attrs]


_ITYPE_COLUMNS = _column_attrs(InstanceType)
_IMAGE_COLUMNS = _column_attrs(Image)


def _type_and_image_statement(by_id: bool) -> Any:
    """An instance type (by id or by name) and an image in one row; built once. Plain
    columns (Core), not entities: the ORM's loading costs more than the read itself."""
    types = cast(Table, InstanceType.__table__)
    images = cast(Table, Image.__table__)
    column = types.c.id if by_id else types.c.name
    return (
        select(
            *(c.label(f"t_{key}") for key, c in _ITYPE_COLUMNS),
            *(c.label(f"i_{key}") for key, c in _IMAGE_COLUMNS),
        )
        .select_from(types)
        .join(images, images.c.id == bindparam("image_id"))
        .where(column == bindparam("type_ref"))
    )


_TYPE_AND_IMAGE_BY_ID = _type_and_image_statement(True)
_TYPE_AND_IMAGE_BY_NAME = _type_and_image_statement(False)
# Built once: ``insert(table)`` per call costs its construction and a cache key each time.
_INSERT_VM = insert(cast(Table, Vm.__table__))


def _from_row(model: type[M], columns: Sequence[tuple[str, Any]], values: Sequence[Any]) -> M:
    """An object with the row's values, as a query would load it, without the ORM's
    loading machinery; an answer to read, not tracked by the session."""
    obj: M = manager_of_class(model).new_instance()
    obj.__dict__.update(zip((key for key, _ in columns), values, strict=True))
    return obj


def vm_view(vm: Vm) -> dict[str, Any]:
    return {
        "id": vm.id,
        "name": vm.name,
        "hostname": vm.hostname,
        "tenant_id": vm.tenant_id,
        "state": vm.state,
        "power_state": vm.power_state,
        "reason": vm.reason,
        "instance_type": vm.instance_type,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "root_disk_gib": vm.root_disk_gib,
        "gpus": vm.gpus,
        "gpu_addresses": list(vm.gpu_addresses or []),
        "image_id": vm.image_id,
        "arch": vm.arch,
        "host_id": vm.host_id,
        "subnet_id": vm.subnet_id,
        "private_ip": vm.private_ip,
        "placement_group_id": vm.placement_group_id,
        "tags": dict(vm.tags or {}),
        "generation": vm.generation,
        "observed_generation": vm.observed_generation,
        "accel": vm.accel,
        "created_at": vm.created_at,
        "updated_at": vm.updated_at,
        "deleted_at": vm.deleted_at,
        "purge_after": vm.purge_after,
    }


def claim_of(vm: Vm) -> Claim:
    return Claim(
        vm.host_id or "", vm.cluster_id or "", vm.vcpus, vm.memory_mib, vm.root_disk_gib, vm.gpus
    )


async def drop_root_snapshots(uow: UnitOfWork, vm: Vm, quotas: QuotaService) -> list[str]:
    """The root disk is going (reinstall, purge): so are its snapshots, and their quota.
    Which ones is said in the operation, as users are warned (PRODUCT trap: reinstall
    deletes system-disk snapshots)."""
    ids = list(await uow.session.scalars(select(Snapshot.id).where(Snapshot.vm_id == vm.id)))
    if ids:
        await uow.session.execute(delete(Snapshot).where(Snapshot.vm_id == vm.id))
        await quotas.release(uow, vm.tenant_id, "snapshots", len(ids))
    return ids


async def _no_disk_rolling_back(uow: UnitOfWork, vm: Vm) -> None:
    """A guest must not start on a disk that a snapshot rollback is rewriting."""
    busy = await uow.session.scalar(
        select(Disk.id).where(Disk.vm_id == vm.id, Disk.state == "restoring").limit(1)
    )
    if busy is not None:
        raise Conflict(
            f"cannot start VM {vm.id}: its disk {busy} is being rolled back to a snapshot",
            extra={"current_state": vm.state, "disk_id": busy},
        )
    restoring = await uow.session.scalar(
        select(Snapshot.id).where(Snapshot.vm_id == vm.id, Snapshot.state == "restoring").limit(1)
    )
    if restoring is not None:
        raise Conflict(
            f"cannot start VM {vm.id}: its root disk is being rolled back to {restoring}",
            extra={"current_state": vm.state, "snapshot_id": restoring},
        )


def _hostname(name: str) -> str:
    host = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:63]
    return host or "vm"


class VmService:
    def __init__(
        self,
        db: Database,
        operations: OperationService,
        quotas: QuotaService,
        placement: PlacementService,
        *,
        recycle_seconds: int,
        console_key: bytes = b"",
    ) -> None:
        self.console_key = console_key
        self.db = db
        self.operations = operations
        self.quotas = quotas
        self.placement = placement
        self.recycle_seconds = recycle_seconds
        self.nics: Any = None
        """``services.nics.NicService`` (set by bootstrap): primary NICs, NIC release."""

    # ---- create ----------------------------------------------------------------------
    async def create(self, ctx: RequestContext, req: dict[str, Any]) -> list[tuple[Vm, Operation]]:
        authz.require(ctx, "vm:create")
        count = int(req.get("count") or 1)
        if not 1 <= count <= MAX_BATCH:
            raise InvalidRequest.for_field("count", f"must be 1-{MAX_BATCH}")
        name = req["name"]
        if not NAME.match(name):
            raise InvalidRequest.for_field(
                "name", "1-64 characters: letters, digits, '.', '_' and '-'"
            )
        if req.get("password"):
            check_strength(req["password"])
        user_data = req.get("user_data")
        if user_data is not None and len(user_data.encode()) > MAX_USER_DATA:
            raise InvalidRequest.for_field("user_data", "must be at most 1 MiB")
        # A handful of small statements: on SQLite they run on this thread, without a
        # hand-off to aiosqlite's each (the COMMIT still takes one); see
        # db/sqlite_driver.py for why that never waits for a lock.
        async with self.db.uow() as uow, uow.inline_statements():
            itype, image = await self._type_and_image(uow, req["instance_type"], req["image_id"])
            if itype is None or not itype.enabled:
                raise InvalidRequest.for_field(
                    "instance_type",
                    f"no instance type {req['instance_type']!r}; see GET /v1/instance-types",
                )
            if image is None or not can_see(ctx, image):
                raise InvalidRequest.for_field("image_id", f"no image {req['image_id']!r}")
            if image.state != "available":
                raise InvalidRequest.for_field("image_id", f"image is {image.state}, not available")
            disk = int(req.get("root_disk_gib") or max(itype.min_disk_gib, image.min_disk_gib))
            if not itype.min_disk_gib <= disk <= itype.max_disk_gib:
                raise InvalidRequest.for_field(
                    "root_disk_gib",
                    f"{itype.name} allows {itype.min_disk_gib}-{itype.max_disk_gib} GiB",
                )
            if disk < image.min_disk_gib:
                raise InvalidRequest.for_field(
                    "root_disk_gib", f"the image needs at least {image.min_disk_gib} GiB"
                )
            group = None
            if req.get("placement_group_id"):
                group = await self.placement.read_group(
                    uow, ctx, req["placement_group_id"], "placement-group:read"
                )
            await self._consume(
                uow,
                ctx.principal.tenant_id,
                {
                    "vms": count,
                    "vcpus": count * itype.vcpus,
                    "memory_mib": count * itype.memory_mib,
                },
            )
            names = [name if count == 1 else f"{name}-{i + 1}" for i in range(count)]
            created = []
            if itype.gpus:
                # Devices are picked per VM under its host claim's row lock.
                for vm_name in names:
                    claim = await self.placement.place(
                        uow,
                        vm_id=(vm_id := new_id("vm")),
                        vcpus=itype.vcpus,
                        memory_mib=itype.memory_mib,
                        disk_gib=disk,
                        gpus=itype.gpus,
                        arch=image.arch,
                        group=group,
                    )
                    gpus = await self._pick_gpus(uow, claim.host_id, itype.gpus)
                    row = self._new_vm(
                        ctx, req, vm_id, vm_name, itype, image, disk, group, claim, gpus
                    )
                    # Written now: the next VM's GPU choice must see this one's devices.
                    [vm] = await self._insert(uow, [row])
                    created.append((vm, self._new_operation(uow, ctx, req, vm)))
            else:
                # The whole batch is planned, claimed and written in a constant number of
                # statements (one UPDATE for the hosts, one INSERT per table).
                vm_ids = [new_id("vm") for _ in names]
                claims = await self.placement.place_many(
                    uow,
                    vm_ids=vm_ids,
                    vcpus=itype.vcpus,
                    memory_mib=itype.memory_mib,
                    disk_gib=disk,
                    gpus=0,
                    arch=image.arch,
                    group=group,
                )
                now = utcnow()
                rows = [
                    self._new_vm(
                        ctx, req, vm_id, vm_name, itype, image, disk, group, claim, [], now
                    )
                    for vm_id, vm_name, claim in zip(vm_ids, names, claims, strict=True)
                ]
                vms = await self._insert(uow, rows)
                ops = await self.operations.create_many(
                    uow,
                    ctx,
                    "vm.create",
                    resource_type="vm",
                    resources=[(vm.id, self._create_input(req)) for vm in vms],
                )
                ctx.audit.resource_id = vms[-1].id
                created = list(zip(vms, ops, strict=True))
            if req.get("subnet_id") and self.nics is not None:
                await self.nics.add_primary(uow, ctx, req, [vm for vm, _ in created])
            await uow.commit()
        return created

    async def _consume(self, uow: UnitOfWork, tenant_id: str, amounts: dict[str, int]) -> None:
        """All of a create's quotas in one statement; the rare rest (a usage row still to
        create, or a quota exceeded: the error names it) through ``QuotaService.consume``,
        in the same order as before."""
        taken = await take_quotas(
            await uow.connection(), tenant_id, self.quotas.region, amounts, self.quotas.defaults
        )
        for resource, amount in amounts.items():
            if resource not in taken:
                await self.quotas.consume(uow, tenant_id, resource, amount)

    async def _type_and_image(
        self, uow: UnitOfWork, type_ref: str, image_id: str
    ) -> tuple[InstanceType | None, Image | None]:
        """Both rows in one round trip; one by one (to say which is missing) only when the
        pair is not found. Types are named by id or by name, as ``InstanceTypeService``
        resolves them."""
        by_id = type_ref.startswith("itype-")
        stmt = _TYPE_AND_IMAGE_BY_ID if by_id else _TYPE_AND_IMAGE_BY_NAME
        conn = await uow.connection()
        row = (await conn.execute(stmt, {"type_ref": type_ref, "image_id": image_id})).first()
        if row is not None:
            n = len(_ITYPE_COLUMNS)
            return (
                _from_row(InstanceType, _ITYPE_COLUMNS, row[:n]),
                _from_row(Image, _IMAGE_COLUMNS, row[n:]),
            )
        itype = await InstanceTypeService.resolve(uow.session, type_ref)
        return itype, await uow.session.get(Image, image_id)

    def _new_vm(
        self,
        ctx: RequestContext,
        req: dict[str, Any],
        vm_id: str,
        name: str,
        itype: InstanceType,
        image: Image,
        disk: int,
        group: PlacementGroup | None,
        claim: Claim,
        gpu_addresses: list[str],
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """The VM's row as it is inserted: every column is set here (no ORM defaults).
        The VMs of a batch share ``now``: one timestamp to convert for the whole INSERT."""
        now = now or utcnow()
        return dict(
            id=vm_id,
            tenant_id=ctx.principal.tenant_id,
            name=name,
            hostname=_hostname(name),
            instance_type_id=itype.id,
            instance_type=itype.name,
            vcpus=itype.vcpus,
            memory_mib=itype.memory_mib,
            root_disk_gib=disk,
            gpus=itype.gpus,
            gpu_addresses=gpu_addresses,
            image_id=image.id,
            arch=image.arch,
            host_id=claim.host_id,
            cluster_id=claim.cluster_id,
            subnet_id=req.get("subnet_id"),
            private_ip=None,
            placement_group_id=group.id if group else None,
            tags=dict(req.get("tags") or {}),
            ssh_keys=list(req.get("ssh_keys") or []),
            user_data=req.get("user_data"),
            power_state="running",
            state="pending",
            reason=None,
            generation=1,
            observed_generation=0,
            created_at=now,
            updated_at=now,
            deleted_at=None,
            purge_after=None,
        )

    @staticmethod
    async def _insert(uow: UnitOfWork, rows: Sequence[dict[str, Any]]) -> list[Vm]:
        """One Core INSERT (executemany) for the batch, without the session's unit-of-work
        bookkeeping, and the VMs as a query would return them: the values in each object's
        ``__dict__``, nothing pending (the constructor's attribute events cost ~20 times
        more). The objects are answers for the caller, not tracked by the session."""
        conn = await uow.connection()
        await conn.execute(_INSERT_VM, list(rows))
        new_vm = manager_of_class(Vm).new_instance
        vms = []
        for row in rows:
            vm = new_vm()
            vm.__dict__.update(row)
            vms.append(vm)
        return vms

    def _new_operation(
        self, uow: UnitOfWork, ctx: RequestContext, req: dict[str, Any], vm: Vm
    ) -> Operation:
        op = self.operations.create(
            uow,
            ctx,
            "vm.create",
            resource_type="vm",
            resource_id=vm.id,
            input=self._create_input(req),
        )
        ctx.audit.resource_id = vm.id
        return op

    @staticmethod
    def _create_input(req: dict[str, Any]) -> dict[str, Any]:
        """The create operation's input: the password travels there only."""
        return {"password": req.get("password")} if req.get("password") else {}

    async def _pick_gpus(self, uow: UnitOfWork, host_id: str, count: int) -> list[str]:
        """Free PCI addresses on the host. The claim's UPDATE holds the host row until
        commit, so VMs placed concurrently on this host cannot pick the same devices."""
        if count == 0:
            return []
        host = await uow.session.get(Host, host_id)
        devices = [str(g["pci_address"]) for g in (host.gpus if host else [])]
        taken = {
            address
            for addresses in await uow.session.scalars(
                select(Vm.gpu_addresses).where(Vm.host_id == host_id, Vm.gpus > 0)
            )
            for address in addresses or []
        }
        free = [d for d in devices if d not in taken]
        if len(free) < count:
            raise Conflict(f"host {host_id} has {len(free)} free GPU(s), {count} needed")
        return free[:count]

    # ---- reads -----------------------------------------------------------------------
    async def load(self, uow: UnitOfWork, ctx: RequestContext, vm_id: str, perm: str) -> Vm:
        vm = await uow.session.get(Vm, vm_id)
        authz.require(
            ctx,
            perm,
            tenant_id=vm.tenant_id if vm else None,
            kind="VM",
            ident=vm_id,
            tags=vm.tags if vm else None,
        )
        assert vm is not None
        return vm

    async def get(self, ctx: RequestContext, vm_id: str) -> dict[str, Any]:
        async with self.db.uow(write=False) as uow:
            return vm_view(await self.load(uow, ctx, vm_id, "vm:read"))

    async def list(
        self,
        ctx: RequestContext,
        *,
        state: str | None,
        name: str | None,
        host_id: str | None,
        placement_group_id: str | None,
        tenant_id: str | None,
        tags: dict[str, str],
        limit: int,
        cursor: str | None,
    ) -> Page[Vm]:
        authz.require(ctx, "vm:read")
        where: list[ColumnElement[bool]] = []
        target = authz.tenant_filter(ctx, tenant_id)
        if target:
            where.append(Vm.tenant_id == target)
        where.append(Vm.state == state if state else Vm.state != "deleted")
        if name:
            where.append(Vm.name == name)
        if host_id:
            where.append(Vm.host_id == host_id)
        if placement_group_id:
            where.append(Vm.placement_group_id == placement_group_id)
        scope = {**ctx.principal.scope_tags, **tags}
        async with self.db.uow(write=False) as uow:
            if not scope:
                return await page_of(uow.session, Vm, where, limit=limit, cursor=cursor)
            # Tag filters are applied in Python so they work the same on both databases;
            # a scoped sub-account's pages are filled up to ``limit`` all the same.
            items: list[Vm] = []
            while len(items) < limit:
                page = await page_of(uow.session, Vm, where, limit=limit, cursor=cursor)
                items += [
                    v
                    for v in page.items
                    if all((v.tags or {}).get(k) == x for k, x in scope.items())
                ]
                cursor = page.next_cursor
                if cursor is None:
                    break
            return Page(items[:limit], items[limit - 1].id if len(items) > limit else cursor)

    # ---- actions ---------------------------------------------------------------------
    async def act(
        self, ctx: RequestContext, vm_id: str, verb: str, args: dict[str, Any]
    ) -> tuple[Vm, Operation | None]:
        """Validate the verb against the state, write the spec change and the operation."""
        permission = "vm:delete" if verb == "delete" else f"vm:{verb}"
        async with self.db.uow() as uow:
            vm = await self.load(uow, ctx, vm_id, permission)
            try:
                needed = vm_states.check(verb, vm.state)
            except ValueError:
                raise Conflict(
                    f"cannot {verb} VM {vm.id}: it is {vm.state}",
                    extra={"current_state": vm.state},
                ) from None
            if not needed:
                return vm, None
            op_input = await self._prepare(uow, ctx, vm, verb, args)
            vm.state = vm_states.DURING.get(verb, vm.state)
            vm.generation += 1
            vm.reason = None
            op = self.operations.create(
                uow,
                ctx,
                f"vm.{verb.replace('-', '_')}",
                resource_type="vm",
                resource_id=vm.id,
                input=op_input,
            )
            await uow.commit()
        return vm, op

    async def _prepare(
        self, uow: UnitOfWork, ctx: RequestContext, vm: Vm, verb: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        if verb == "start":
            await _no_disk_rolling_back(uow, vm)
            vm.power_state = "running"
        elif verb == "stop":
            vm.power_state = "stopped"
            return {"force": bool(args.get("force")), "timeout": float(args.get("timeout", 60))}
        elif verb == "reinstall":
            return await self._prepare_reinstall(uow, ctx, vm, args)
        elif verb == "resize":
            return await self._prepare_resize(uow, ctx, vm, args)
        elif verb == "reset-password":
            check_strength(args["password"])
            return {"password": args["password"], "user": args.get("user") or "root"}
        elif verb == "delete":
            await self._prepare_delete(uow, vm, ctx)
        elif verb == "restore":
            await self._prepare_restore(uow, vm)
        elif verb == "migrate":
            return await prepare_migration(uow, ctx, vm, args, self.placement)
        return {}

    async def _prepare_reinstall(
        self, uow: UnitOfWork, ctx: RequestContext, vm: Vm, args: dict[str, Any]
    ) -> dict[str, Any]:
        image_id = args.get("image_id") or vm.image_id
        image = await uow.session.get(Image, image_id)
        if image is None or not can_see(ctx, image) or image.state != "available":
            raise InvalidRequest.for_field("image_id", f"no available image {image_id!r}")
        if image.arch != vm.arch:
            raise InvalidRequest.for_field("image_id", f"image is {image.arch}, VM is {vm.arch}")
        if image.min_disk_gib > vm.root_disk_gib:
            raise InvalidRequest.for_field(
                "image_id",
                f"image needs {image.min_disk_gib} GiB, the root disk has {vm.root_disk_gib}",
            )
        vm.image_id = image.id
        vm.power_state = "stopped"
        dropped = await drop_root_snapshots(uow, vm, self.quotas)
        return {
            "image_id": image.id,
            "password": args.get("password"),
            "dropped_snapshots": dropped,
        }

    async def _prepare_resize(
        self, uow: UnitOfWork, ctx: RequestContext, vm: Vm, args: dict[str, Any]
    ) -> dict[str, Any]:
        itype = await InstanceTypeService.resolve(uow.session, args["instance_type"])
        if itype is None or not itype.enabled:
            raise InvalidRequest.for_field(
                "instance_type", f"no instance type {args['instance_type']!r}"
            )
        if itype.id == vm.instance_type_id:
            raise Conflict(f"VM {vm.id} already is {itype.name}")
        if itype.gpus != vm.gpus:
            raise InvalidRequest.for_field("instance_type", "the GPU count cannot change")
        if vm.root_disk_gib > itype.max_disk_gib:
            raise InvalidRequest.for_field(
                "instance_type",
                f"{itype.name} allows at most {itype.max_disk_gib} GiB of root disk",
            )
        d_cpu, d_mem = itype.vcpus - vm.vcpus, itype.memory_mib - vm.memory_mib
        running = vm.state == "running"
        live = running and d_cpu >= 0 and d_mem >= 0
        if running and not live and not args.get("allow_restart"):
            raise Conflict(
                "shrinking a running VM needs a restart; pass allow_restart=true or stop it first",
                extra={"current_state": vm.state},
            )
        for quota, delta in (("vcpus", d_cpu), ("memory_mib", d_mem)):
            if delta > 0:
                await self.quotas.consume(uow, vm.tenant_id, quota, delta)
            elif delta < 0:
                await self.quotas.release(uow, vm.tenant_id, quota, -delta)
        if vm.host_id and not await self.placement.claim_on(
            uow, vm.host_id, vcpus=d_cpu, memory_mib=d_mem, disk_gib=0
        ):
            raise Conflict(
                f"host of VM {vm.id} lacks room for {itype.name}; migration comes later",
                extra={"current_state": vm.state},
            )
        previous = {
            "instance_type_id": vm.instance_type_id,
            "vcpus": vm.vcpus,
            "memory_mib": vm.memory_mib,
        }
        vm.instance_type_id, vm.instance_type = itype.id, itype.name
        vm.vcpus, vm.memory_mib = itype.vcpus, itype.memory_mib
        return {
            "previous": previous,
            "live": live,
            "allow_restart": bool(args.get("allow_restart")),
            "was_running": running,
        }

    async def _prepare_delete(self, uow: UnitOfWork, vm: Vm, ctx: RequestContext) -> None:
        """To the recycle bin: quota freed now, compute claim freed, disk kept."""
        vm.power_state = "stopped"
        if self.nics is not None:
            await self.nics.release_for_vm(uow, ctx, vm)
        await self.quotas.release(uow, vm.tenant_id, "vms", 1)
        await self.quotas.release(uow, vm.tenant_id, "vcpus", vm.vcpus)
        await self.quotas.release(uow, vm.tenant_id, "memory_mib", vm.memory_mib)
        if vm.host_id:
            await self.placement.release(uow, claim_of(vm), vm.id, keep_disk=True)
            await self.placement.leave_group(uow, vm)

    async def _prepare_restore(self, uow: UnitOfWork, vm: Vm) -> None:
        """Restore re-checks quota and re-claims the host (where its disk is) and the
        VM's place in its hard placement group; any of them lacking is a 409 that names
        what is in the way, and nothing is taken (one transaction)."""
        await self.quotas.consume(uow, vm.tenant_id, "vms", 1)
        await self.quotas.consume(uow, vm.tenant_id, "vcpus", vm.vcpus)
        await self.quotas.consume(uow, vm.tenant_id, "memory_mib", vm.memory_mib)
        if vm.host_id and not await self.placement.claim_on(
            uow, vm.host_id, vcpus=vm.vcpus, memory_mib=vm.memory_mib, disk_gib=0
        ):
            raise Conflict(f"the host of VM {vm.id} has no room to restore it now")
        # Its hard group's guard (anti-affinity slot, affinity host) is taken back too.
        await self.placement.rejoin_group(uow, vm)
        vm.state = "stopped"
        vm.power_state = "stopped"
        vm.deleted_at = None
        vm.purge_after = None

    async def recycle_bin(self, ctx: RequestContext, tenant_id: str | None) -> Sequence[Vm]:
        authz.require(ctx, "recycle-bin:read")
        target = authz.tenant_filter(ctx, tenant_id)
        async with self.db.uow(write=False) as uow:
            stmt = select(Vm).where(Vm.state == "deleted").order_by(Vm.id.desc())
            if target:
                stmt = stmt.where(Vm.tenant_id == target)
            return list(await uow.session.scalars(stmt))

    async def purge(self, ctx: RequestContext, vm_id: str) -> Operation:
        async with self.db.uow() as uow:
            vm = await self.load(uow, ctx, vm_id, "recycle-bin:delete")
            if vm.state != "deleted":
                raise Conflict(f"VM {vm.id} is {vm.state}, not in the recycle bin")
            op = self.operations.create(uow, ctx, "vm.purge", resource_type="vm", resource_id=vm.id)
            await uow.commit()
        return op

    async def due_for_purge(self) -> Sequence[str]:
        async with self.db.uow(write=False) as uow:
            rows = await uow.session.scalars(
                select(Vm.id).where(Vm.state == "deleted", Vm.purge_after < utcnow())
            )
            return list(rows)

    async def console(self, ctx: RequestContext, vm_id: str) -> dict[str, Any]:
        """A console URL with a one-time token valid for 300 s, bound to this VM.

        The token is an HMAC under the server secret (no table): the console service
        (services/console.py) checks it and spends it on first use."""
        async with self.db.uow(write=False) as uow:
            vm = await self.load(uow, ctx, vm_id, "vm:console")
        try:
            vm_states.check("console", vm.state)
        except ValueError:
            raise Conflict(
                f"cannot open the console of VM {vm.id}: it is {vm.state}",
                extra={"current_state": vm.state},
            ) from None
        token, expires = issue_token(self.console_key, vm.id, ctx.principal)
        return {
            "url": f"/v1/console/vnc?token={token}",
            "token": token,
            "expires_at": expires,
            "protocol": "vnc",
        }
