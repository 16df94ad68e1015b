"""The all-in-one: seed an empty cloud and run the local hosts' agents in this process.

A new user gets a region, a cluster, a few instance types and hosts, so the whole API can
be tried at once. With the ``qemu`` driver (the default where ``qemu-system`` is
installed) the host is this machine: one agent with the QEMU driver, and the project's
test guest imported as the default public image on first start. With ``sim``, N simulated
hosts (``--sim-hosts``) and a blank ``cirros-sim`` image. In a cluster deployment agents
run as their own processes (``alto agent --join …``) and nothing here runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import structlog
from sqlalchemy import func, select

import altostack
from altostack.agent.agent import Agent
from altostack.agent.codec import host_info_to_dict
from altostack.db.models_compute import Cluster, Image, InstanceType, Region
from altostack.db.models_storage import StoragePool
from altostack.domain.ids import new_id
from altostack.drivers.compute.base import ComputeDriver
from altostack.drivers.compute.local_images import FetchedImage, LocalImageCache
from altostack.drivers.compute.qemu import NicBackend, QemuComputeDriver
from altostack.drivers.compute.qemu_host import choose_run_as, host_arch, qemu_binary
from altostack.drivers.compute.qemu_hotadd import limits
from altostack.drivers.compute.sim import SimComputeDriver
from altostack.drivers.compute.sim_hypervisor import SimHostConfig, SimHypervisor
from altostack.drivers.errors import ImageNotFound
from altostack.drivers.network.base import NetworkDriver
from altostack.drivers.network.hosts import use_linux
from altostack.drivers.network.lab import ExternalLab, ensure_external_lab
from altostack.drivers.network.linux import LinuxNetworkDriver
from altostack.drivers.network.sim import SimNetworkDriver
from altostack.drivers.storage.base import StorageDriver
from altostack.drivers.storage.hosts import host_storage
from altostack.drivers.storage.sim import SimStorageDriver
from altostack.drivers.timings import SimTimings
from altostack.services.context import SYSTEM, RequestContext

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
TEST_IMAGE = "alto-test"
"""The default image with the qemu driver: the guest scripts/build-test-image makes."""
BUILD_SCRIPT = Path(altostack.__file__).resolve().parents[2] / "scripts" / "build-test-image"
BUILD_TIMEOUT = 900.0


def resolve_driver(driver: str) -> Literal["qemu", "sim"]:
    """``auto`` is ``qemu`` where this machine can run QEMU guests, else ``sim``."""
    if driver == "qemu":
        return "qemu"
    if driver == "sim":
        return "sim"
    if qemu_binary(host_arch()) and shutil.which("qemu-img"):
        return "qemu"
    return "sim"


async def seed(c: Container, *, sim_image: bool = True) -> Cluster:
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
    if image is None and sim_image:
        await _seed_image(c)
    if c.settings.public_pool_cidr:
        await c.ip_pools.ensure_default(c.settings.public_pool_cidr)
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


async def _join_token(c: Container, cluster: Cluster) -> str:
    token = "join_" + secrets.token_urlsafe(24)
    await c.infra.set_join_token(cluster.id, token)
    return token


async def _start_agent(
    c: Container,
    token: str,
    driver: ComputeDriver,
    storage: StorageDriver | None = None,
    *,
    network: NetworkDriver | None = None,
    underlay_ip: str | None = None,
) -> Agent:
    """Register the driver's host with its real capacity and run its agent here."""
    info = await driver.host_info()
    report = host_info_to_dict(info)
    report["capabilities"] = dataclasses.asdict(driver.capabilities)
    if underlay_ip:
        report["underlay_ip"] = underlay_ip
    host, _agent_token = await c.infra.register_host(token, hostname=info.hostname, report=report)
    agent = Agent(
        host["id"],
        c.bus,
        driver,
        heartbeat_interval=c.settings.heartbeat_interval_seconds,
        storage=storage,
        network=network,
    )
    await agent.start()
    return agent


async def start_local_hosts(c: Container, cluster: Cluster, count: int) -> list[Agent]:
    """Register ``count`` sim hosts with the cluster and start their agents here."""
    token = await _join_token(c, cluster)
    timings = SimTimings().scaled(c.settings.sim_timing_scale)
    agents = []
    for i in range(count):
        hypervisor = SimHypervisor(SimHostConfig(hostname=f"sim-{i + 1:03d}"))
        driver = SimComputeDriver(
            hypervisor, timings=timings, storage=SimStorageDriver(timings=timings)
        )
        c.sim_hypervisors[hypervisor.config.hostname] = hypervisor
        # Each sim host gets a sim network driver and a made-up underlay address.
        network = SimNetworkDriver(timings=timings)
        c.sim_networks[hypervisor.config.hostname] = network.dataplane
        underlay = f"10.255.{i // 250}.{i % 250 + 1}"
        agents.append(await _start_agent(c, token, driver, network=network, underlay_ip=underlay))
    c.placement.invalidate()
    log.info("local sim hosts started", count=count)
    return agents


# -- the qemu all-in-one ---------------------------------------------------------------------


class ImageStoreSource:
    """Base images for the local QEMU host straight from the image store (same machine):
    a hard link when the directories share a filesystem, else a copy. The SHA-256 and
    format are the image service's, so the cache verifies what it got."""

    def __init__(self, c: Container) -> None:
        self.c = c

    async def fetch(self, image_id: str, target: Path) -> FetchedImage:
        async with self.c.db.uow(write=False) as uow:
            image = await uow.session.get(Image, image_id)
        source = self.c.image_store.path(image_id)
        if image is None or image.state != "available" or not source.is_file():
            raise ImageNotFound(image_id, f"image {image_id} has no data in the image store")
        try:
            os.link(source, target)
        except OSError:
            await asyncio.to_thread(shutil.copyfile, source, target)
        return FetchedImage(sha256=image.checksum_sha256 or "", format=image.format or "raw")


def qemu_driver(c: Container, *, nic_backend: NicBackend = "user") -> QemuComputeDriver:
    """The local host's QEMU driver: VMs and base images under ``<data_dir>/qemu``."""
    state_dir = c.settings.data_dir / "qemu"
    images = LocalImageCache(state_dir / "images", ImageStoreSource(c))
    run_as, why = choose_run_as(state_dir, c.settings.qemu_run_as)
    log.info("QEMU privileges", run_as=run_as or "unchanged", reason=why)
    settings = c.settings
    return QemuComputeDriver(
        state_dir,
        images,
        hostname=socket.gethostname(),
        run_as=run_as,
        hot_add=limits(settings.qemu_hot_add_vcpus, settings.qemu_hot_add_memory_mib),
        nic_backend=nic_backend,
        forward_http=nic_backend == "user",
    )


async def lab_network(c: Container, tap_user: str | None) -> LinuxNetworkDriver:
    """The host's linux data plane and the lab's external network (``alto-ext``): the
    public pool is reachable from that namespace only, never from the host's uplink."""
    settings = c.settings
    net = ipaddress.ip_network(settings.public_pool_cidr)
    lab = await ensure_external_lab(
        ExternalLab(
            namespace=settings.lab_namespace,
            bridge=settings.external_bridge or "alto-ext0",
            cidr=str(net),
            gateway_ip=str(net.network_address + 1),
        )
    )
    log.info("lab external network", namespace=lab.namespace, bridge=lab.bridge, cidr=lab.cidr)
    return LinuxNetworkDriver(
        state_dir=settings.data_dir / "network", external_bridge=lab.bridge, tap_user=tap_user
    )


async def start_qemu_host(c: Container, cluster: Cluster) -> Agent:
    """This machine as the cloud's one host, and the test guest as the default image."""
    linux = use_linux(c.settings.network_driver) and bool(c.settings.public_pool_cidr)
    driver = qemu_driver(c, nic_backend="tap" if linux else "user")
    network: NetworkDriver
    if linux:
        network = await lab_network(c, None if driver.run_as is None else driver.run_as.name)
    else:
        network = SimNetworkDriver()
    # Data disks: qcow2 files of a ``local`` pool beside the VMs (or the cluster's Ceph
    # pool), mapped to the usual classes.
    settings = c.settings
    storage = host_storage(
        settings.storage_backend, settings.data_dir / "qemu" / "pool", settings.ceph.model_dump()
    )
    agent = await _start_agent(c, await _join_token(c, cluster), driver, storage, network=network)
    await ensure_default_pool(c, cluster, c.settings.storage_backend)
    c.placement.invalidate()
    log.info("local QEMU host started", hostname=driver.hostname, accel=driver.accel)
    await ensure_default_image(c)
    return agent


async def ensure_default_pool(c: Container, cluster: Cluster, backend: str) -> None:
    """A storage pool of ``backend`` serving ``standard`` and ``ssd`` to the cluster, once."""
    described = {
        "local": "qcow2 files on each host (made by the all-in-one)",
        "ceph": "the cluster's Ceph RBD pool, 3 replicas (made by the all-in-one)",
    }
    async with c.db.uow() as uow:
        if await uow.session.scalar(select(func.count()).select_from(StoragePool)):
            return
        uow.session.add(
            StoragePool(
                id=new_id("pool"),
                name=backend,
                backend=backend,
                shared=backend == "ceph",
                storage_classes=["standard", "ssd"],
                cluster_ids=[cluster.id],
                allocation_ratio=1.0,
                provisioned_gib=0,
                description=described.get(backend, backend),
            )
        )
        await uow.commit()


async def ensure_default_image(c: Container) -> str | None:
    """Import the test guest as the public ``alto-test`` image once (its id, or None when
    no image file can be had: then the cloud runs without a default image)."""
    async with c.db.uow(write=False) as uow:
        found = await uow.session.scalar(
            select(Image.id).where(Image.name == TEST_IMAGE, Image.tenant_id == "system")
        )
    if found is not None:
        return str(found)
    path = c.settings.default_image or await find_test_image()
    if path is None:
        log.warning("no default image: scripts/build-test-image could not make the test guest")
        return None
    ctx = RequestContext(SYSTEM)
    image, _ = await c.images.create(
        ctx,
        source_url=None,
        name=TEST_IMAGE,
        os_family="linux",
        os_version=path.stem,
        arch=host_arch(),
        visibility="public",
        min_disk_gib=1,
    )
    checksum = _checksum_beside(path)
    await c.images.upload(ctx, image["id"], _file_chunks(path), checksum)
    log.info("default image imported", image_id=image["id"], path=str(path))
    return str(image["id"])


async def find_test_image() -> Path | None:
    """The test guest: built (or found up to date) by scripts/build-test-image, else the
    newest one in its cache directory."""
    built = await _build_test_image() if BUILD_SCRIPT.is_file() else None
    return await asyncio.to_thread(_pick_test_image, built)


async def _build_test_image() -> str | None:
    log.info("building the test guest image (cached after the first time)")
    proc = await asyncio.create_subprocess_exec(
        str(BUILD_SCRIPT),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BUILD_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        out, err = b"", b"timed out"
    if proc.returncode == 0 and out.strip():
        return out.decode().strip().splitlines()[-1]
    log.warning("scripts/build-test-image failed", error=err.decode(errors="replace")[-500:])
    return None


def _pick_test_image(built: str | None) -> Path | None:
    if built and Path(built).is_file():
        return Path(built)
    cache = os.environ.get("ALTO_IMAGE_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "altostack" / "images"
    )
    candidates = sorted(Path(cache).glob("alto-test-*.qcow2"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def _checksum_beside(path: Path) -> str | None:
    """The SHA-256 from ``<image>.sha256`` (sha256sum format) when the builder wrote one."""
    try:
        return path.with_name(path.name + ".sha256").read_text().split()[0]
    except (OSError, IndexError):
        return None


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as fh:
        while chunk := await fh.read(1024 * 1024):
            yield chunk
