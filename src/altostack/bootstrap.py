"""All wiring in one place: every adapter is built here and can be swapped by tests."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import structlog

from altostack.api.metrics import ApiMetrics
from altostack.bus import Bus, connect
from altostack.controllers.compute import ComputeController
from altostack.controllers.disks import DiskController
from altostack.controllers.host_monitor import HostMonitor
from altostack.controllers.image_export import ImageExportController
from altostack.controllers.janitor import Janitor
from altostack.controllers.network import NetworkController
from altostack.controllers.network_sync import NetworkSyncController
from altostack.controllers.registry import OperationContext, OperationRegistry
from altostack.controllers.vm_migration import MigrationController
from altostack.controllers.worker import OperationWorker
from altostack.db.database import Database
from altostack.db.migrate import upgrade
from altostack.services.apikeys import ApiKeyService
from altostack.services.auth import AuthService
from altostack.services.console import ConsoleService
from altostack.services.disks import DiskService
from altostack.services.eips import EipService, IpPoolService
from altostack.services.events import EventService
from altostack.services.idempotency import IdempotencyService
from altostack.services.image_store import ImageStore
from altostack.services.images import ImageService
from altostack.services.infra import InfraService
from altostack.services.instance_types import InstanceTypeService
from altostack.services.nat import NatGatewayService
from altostack.services.network import NetworkService, SecurityGroupService
from altostack.services.nics import NicService
from altostack.services.operations import OperationService
from altostack.services.passwords import Passwords
from altostack.services.placement import PlacementService
from altostack.services.quotas import QuotaService
from altostack.services.roles import RoleService
from altostack.services.snapshots import SnapshotService
from altostack.services.storage_pools import StoragePoolService
from altostack.services.tenants import TenantService
from altostack.services.users import UserService
from altostack.services.vm_host import VmHostService
from altostack.services.vms import VmService
from altostack.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Container:
    settings: Settings
    db: Database
    bus: Bus
    passwords: Passwords
    auth: AuthService
    operations: OperationService
    events: EventService
    idempotency: IdempotencyService
    registry: OperationRegistry
    worker: OperationWorker
    quotas: QuotaService
    tenants: TenantService
    users: UserService
    roles: RoleService
    api_keys: ApiKeyService
    janitor: Janitor
    image_store: ImageStore
    infra: InfraService
    instance_types: InstanceTypeService
    images: ImageService
    placement: PlacementService
    vms: VmService
    console: ConsoleService
    vm_host: VmHostService
    compute: ComputeController
    network: NetworkService
    security_groups: SecurityGroupService
    nics: NicService
    ip_pools: IpPoolService
    eips: EipService
    nat_gateways: NatGatewayService
    network_sync: NetworkSyncController
    host_monitor: HostMonitor
    storage_pools: StoragePoolService
    disks: DiskService
    snapshots: SnapshotService
    disk_controller: DiskController
    metrics: ApiMetrics
    agents: list[Any] = field(default_factory=list)
    sim_hypervisors: dict[str, Any] = field(default_factory=dict)
    sim_networks: dict[str, Any] = field(default_factory=dict)
    """hostname → the sim host's ``SimDataplane`` (what its network driver programmed)."""
    run_worker: bool = True
    migrate: bool = True
    plugins: list[Any] = field(default_factory=list)
    bootstrap_password: str | None = None
    started: bool = False

    async def start(self) -> None:
        if self.migrate:
            await upgrade(self.db)
        await self.auth.attach_bus(self.bus)
        await self.operations.start()
        self.bootstrap_password = await self.auth.bootstrap()
        if self.run_worker:
            await self.worker.start()
            self.janitor.start()
            await self.host_monitor.start()
            await self.storage_pools.start()
        if self.settings.seed:
            from altostack import allinone

            driver = allinone.resolve_driver(self.settings.driver)
            cluster = await allinone.seed(self, sim_image=driver == "sim")
            if driver == "qemu":
                self.agents = [await allinone.start_qemu_host(self, cluster)]
            elif self.settings.sim_hosts > 0:
                hosts = self.settings.sim_hosts
                self.agents = await allinone.start_local_hosts(self, cluster, hosts)
        self.started = True

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()
        if self.run_worker:
            await self.storage_pools.stop()
            await self.host_monitor.stop()
            await self.janitor.stop()
            await self.worker.stop()
        await self.bus.close()
        await self.db.dispose()
        self.started = False

    async def ready(self) -> dict[str, str]:
        """What /readyz reports: each dependency and whether it answers."""
        checks: dict[str, str] = {}
        try:
            await self.db.ping()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            await self.bus.ping()
            checks["bus"] = "ok"
        except Exception as exc:
            checks["bus"] = f"unavailable: {type(exc).__name__}"
        return checks


def build(settings: Settings | None = None, **overrides: Any) -> Container:
    settings = settings or Settings()
    db = overrides.pop("db", None) or Database(settings.database_url)
    bus = overrides.pop("bus", None) or connect(settings.bus)
    passwords = Passwords(settings.password_hash_time_cost, settings.password_hash_memory_kib)
    events = EventService(db)
    registry = overrides.pop("registry", None) or OperationRegistry()
    master_key = settings.master_key()
    auth = AuthService(db, settings, passwords, master_key)
    quotas = QuotaService(db, settings.default_quotas, settings.region)
    operations = OperationService(db, bus)
    image_store = ImageStore(settings.data_dir / "images")
    infra = InfraService(db, heartbeat_timeout=settings.heartbeat_timeout_seconds)
    images = ImageService(db, image_store, operations, quotas)
    placement = PlacementService(db)
    vms = VmService(
        db,
        operations,
        quotas,
        placement,
        recycle_seconds=settings.recycle_seconds,
        console_key=master_key,
    )
    compute = ComputeController(
        db,
        bus,
        placement,
        agent_timeout=settings.agent_timeout_seconds,
        max_attempts=settings.operation_max_attempts,
        recycle_seconds=settings.recycle_seconds,
    )
    compute.register(registry)
    compute.quotas = quotas
    ImageExportController(compute, images, max_attempts=settings.operation_max_attempts).register(
        registry
    )

    async def import_image(ctx: OperationContext) -> dict[str, Any]:
        image = await images.run_import(ctx.resource_id or "", str(ctx.input["url"]))
        return {k: image[k] for k in ("id", "state", "format", "size_bytes", "checksum_sha256")}

    registry.register("image.import", import_image)
    network_sync = NetworkSyncController(
        db, bus, agent_timeout=settings.agent_timeout_seconds, region=settings.region
    )
    network_sync.register(registry)
    network_sync.operations = operations
    compute.network = network_sync.sync_vpcs_of_vm
    network_sync.nics_changed = compute.nics_changed
    MigrationController(compute, network_sync).register(registry)
    NetworkController(db, quotas, sync=network_sync.sync_vpc).register(registry)
    network = NetworkService(db, operations, quotas)
    nics = NicService(db, operations, quotas, network)
    vms.nics = nics
    eips = EipService(db, operations, quotas, settings.region)
    storage_pools = StoragePoolService(db, bus)
    disks = DiskService(
        db, operations, quotas, storage_pools, recycle_seconds=settings.recycle_seconds
    )
    disk_controller = DiskController(
        db, compute, disks, storage_pools, quotas, operations,
        max_attempts=settings.operation_max_attempts,
    )  # fmt: skip
    disk_controller.register(registry)
    host_monitor = HostMonitor(
        db,
        bus,
        infra,
        operations,
        events,
        vms,
        interval=settings.heartbeat_interval_seconds,
        network_resync=network_sync.resync_host,
    )
    host_monitor.extra_sweeps.append(disk_controller.sweep)
    container = Container(
        settings=settings,
        db=db,
        bus=bus,
        passwords=passwords,
        auth=auth,
        operations=operations,
        events=events,
        idempotency=IdempotencyService(settings.idempotency_ttl_seconds),
        registry=registry,
        worker=OperationWorker(db, bus, registry, settings, events),
        metrics=ApiMetrics(),
        quotas=quotas,
        tenants=TenantService(db, passwords, quotas, auth),
        users=UserService(db, passwords, auth, quotas),
        roles=RoleService(db, auth),
        api_keys=ApiKeyService(db, quotas, auth, master_key),
        janitor=Janitor(db, settings.janitor_interval_seconds),
        image_store=image_store,
        infra=infra,
        instance_types=InstanceTypeService(db),
        images=images,
        placement=placement,
        vms=vms,
        console=ConsoleService(
            db, bus, events, master_key, agent_timeout=settings.agent_timeout_seconds
        ),
        vm_host=VmHostService(db, bus, vms, agent_timeout=settings.agent_timeout_seconds),
        compute=compute,
        network=network,
        security_groups=SecurityGroupService(db, quotas, network),
        nics=nics,
        ip_pools=IpPoolService(db, settings.region),
        eips=eips,
        nat_gateways=NatGatewayService(db, operations, quotas, network, eips),
        network_sync=network_sync,
        host_monitor=host_monitor,
        storage_pools=storage_pools,
        disks=disks,
        snapshots=SnapshotService(
            db, operations, quotas, disks, per_disk_limit=settings.snapshots_per_disk
        ),
        disk_controller=disk_controller,
        **overrides,
    )
    for name in settings.plugins:
        container.plugins.append(importlib.import_module(name))
    return container
