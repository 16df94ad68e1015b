"""The all-in-one: seed an empty cloud and run the local hosts' agents in this process.

A new user gets a region, a cluster, a few instance types, one public image and N sim
hosts (``--sim-hosts``), so the whole API can be tried at once. In a cluster deployment
agents run as their own processes (``alto agent --join …``) and nothing here runs.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import func, select

from altostack.agent.agent import Agent
from altostack.agent.codec import host_info_to_dict
from altostack.db.models_compute import Cluster, Image, InstanceType, Region
from altostack.domain.ids import new_id
from altostack.drivers.compute.sim import SimComputeDriver
from altostack.drivers.compute.sim_hypervisor import SimHostConfig, SimHypervisor
from altostack.drivers.storage.sim import SimStorageDriver
from altostack.drivers.timings import SimTimings

if TYPE_CHECKING:
    from altostack.bootstrap import Container

log = structlog.get_logger(__name__)

SEED_TYPES = [
    ("c1.small", 1, 512, 1, 100),
    ("c1.medium", 2, 2048, 10, 500),
    ("c1.large", 4, 8192, 20, 1000),
    ("m1.xlarge", 8, 32768, 40, 2000),
]
SEED_IMAGE = "cirros-sim"
SEED_IMAGE_BYTES = b"\0" * (1024 * 1024)  # a blank raw disk: enough for the sim driver


async def seed(c: Container) -> Cluster:
    """Create what an empty all-in-one needs; leaves an existing cloud as it is."""
    async with c.db.uow() as uow:
        region = await uow.session.scalar(select(Region).where(Region.name == "default"))
        if region is None:
            region = Region(id=new_id("region"), name="default", description="all-in-one")
            uow.session.add(region)
            await uow.flush()
        cluster = await uow.session.scalar(
            select(Cluster).where(Cluster.region_id == region.id, Cluster.name == "default")
        )
        if cluster is None:
            cluster = Cluster(
                id=new_id("cluster"),
                region_id=region.id,
                name="default",
                arch="x86_64",
                cpu_allocation_ratio=4.0,
                ram_allocation_ratio=1.0,
                policy="spread",
            )
            uow.session.add(cluster)
        if not await uow.session.scalar(select(func.count()).select_from(InstanceType)):
            for name, vcpus, mem, min_disk, max_disk in SEED_TYPES:
                uow.session.add(
                    InstanceType(
                        id=new_id("itype"),
                        name=name,
                        vcpus=vcpus,
                        memory_mib=mem,
                        min_disk_gib=min_disk,
                        max_disk_gib=max_disk,
                        gpus=0,
                        enabled=True,
                    )
                )
        image = await uow.session.scalar(select(Image).where(Image.name == SEED_IMAGE))
        await uow.commit()
    if image is None:
        await _seed_image(c)
    return cluster


async def _seed_image(c: Container) -> None:
    image_id = new_id("img")

    async def chunks() -> Any:
        yield SEED_IMAGE_BYTES

    stored = await c.image_store.put(image_id, chunks(), None)
    async with c.db.uow() as uow:
        uow.session.add(
            Image(
                id=image_id,
                tenant_id="system",
                name=SEED_IMAGE,
                os_family="linux",
                os_version="sim",
                arch="x86_64",
                format=stored.format,
                size_bytes=stored.size_bytes,
                virtual_size_bytes=stored.virtual_size_bytes,
                checksum_sha256=stored.sha256,
                min_disk_gib=1,
                visibility="public",
                shared_with=[],
                state="available",
                source={"seed": True},
            )
        )
        await uow.commit()


async def start_local_hosts(c: Container, cluster: Cluster, count: int) -> list[Agent]:
    """Register ``count`` sim hosts with the cluster and start their agents here."""
    token = "join_" + secrets.token_urlsafe(24)
    await c.infra.set_join_token(cluster.id, token)
    timings = SimTimings().scaled(c.settings.sim_timing_scale)
    agents = []
    for i in range(count):
        hypervisor = SimHypervisor(SimHostConfig(hostname=f"sim-{i + 1:03d}"))
        driver = SimComputeDriver(
            hypervisor, timings=timings, storage=SimStorageDriver(timings=timings)
        )
        c.sim_hypervisors[hypervisor.config.hostname] = hypervisor
        info = await driver.host_info()
        report = host_info_to_dict(info)
        report["capabilities"] = dataclasses.asdict(driver.capabilities)
        host, _agent_token = await c.infra.register_host(
            token, hostname=info.hostname, report=report
        )
        agent = Agent(
            host["id"], c.bus, driver, heartbeat_interval=c.settings.heartbeat_interval_seconds
        )
        await agent.start()
        agents.append(agent)
    c.placement.invalidate()
    log.info("local sim hosts started", count=count)
    return agents
