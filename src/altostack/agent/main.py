"""``alto agent``: a host agent as its own process (cluster deployments).

It joins the cluster over HTTP with the join token (getting its host id and the bus URL),
then speaks only over the bus. Restarting it is harmless: it re-joins under the same
hostname (same host id), reports what it finds, and the controllers reconcile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog

from altostack.agent.agent import Agent
from altostack.agent.codec import host_info_to_dict
from altostack.agent.images import HttpImageSource
from altostack.bus import connect
from altostack.drivers.compute.base import ComputeDriver
from altostack.drivers.compute.local_images import LocalImageCache
from altostack.drivers.compute.qemu_host import choose_run_as
from altostack.drivers.compute.sim import SimComputeDriver
from altostack.drivers.compute.sim_hypervisor import SimHostConfig, SimHypervisor
from altostack.drivers.network.base import NetworkDriver
from altostack.drivers.network.sim import SimNetworkDriver
from altostack.drivers.storage.base import StorageDriver
from altostack.drivers.storage.sim import SimStorageDriver
from altostack.drivers.timings import SimTimings
from altostack.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AgentOptions:
    join_url: str
    token: str
    hostname: str = socket.gethostname()
    driver: str = "sim"
    bus: str | None = None
    heartbeat_interval: float = 5.0
    sim_timing_scale: float = 1.0
    state_dir: Path | None = None
    console_host: str = "127.0.0.1"
    netns: str | None = None
    """Run in this network namespace (a simulated host of a lab on one machine)."""


def default_state_dir() -> Path:
    return (
        Path("/var/lib/altostack")
        if os.geteuid() == 0
        else Path.home() / ".local/share/altostack-agent"
    )


def build_driver(options: AgentOptions) -> ComputeDriver:
    if options.driver == "sim":
        hypervisor = SimHypervisor(SimHostConfig(hostname=options.hostname))
        timings = SimTimings().scaled(options.sim_timing_scale)
        return SimComputeDriver(
            hypervisor, timings=timings, storage=SimStorageDriver(timings=timings)
        )
    if options.driver == "qemu":
        from altostack.client import AsyncClient
        from altostack.drivers.compute.qemu import QemuComputeDriver
        from altostack.drivers.compute.qemu_hotadd import limits
        from altostack.drivers.network.hosts import use_linux

        state_dir = options.state_dir or default_state_dir()
        source = HttpImageSource(AsyncClient(options.join_url))
        images = LocalImageCache(state_dir / "images", source)
        run_as, why = choose_run_as(state_dir, os.environ.get("ALTO_QEMU_RUN_AS", "auto"))
        log.info("QEMU privileges", run_as=run_as or "unchanged", reason=why)
        return QemuComputeDriver(
            state_dir,
            images,
            hostname=options.hostname,
            console_host=options.console_host,
            run_as=run_as,
            nic_backend="tap" if use_linux(_settings().network_driver) else "user",
            hot_add=limits(
                int(os.environ.get("ALTO_QEMU_HOT_ADD_VCPUS", "16")),
                int(os.environ.get("ALTO_QEMU_HOT_ADD_MEMORY_MIB", "65536")),
            ),
        )
    raise SystemExit(f"unknown driver {options.driver!r} (qemu or sim)")


def build_storage(options: AgentOptions, driver: ComputeDriver) -> StorageDriver | None:
    """The host's pool for data disks: with QEMU, qcow2 files under ``<state dir>/pool``
    (a ``local`` storage pool); the sim keeps its root-disk pool."""
    if options.driver != "qemu":
        return None
    from altostack.drivers.storage.hosts import host_storage

    # ALTO_STORAGE_BACKEND=ceph and ALTO_CEPH='{...}' choose the cluster's Ceph pool.
    settings = _settings()
    local_dir = (options.state_dir or default_state_dir()) / "pool"
    return host_storage(settings.storage_backend, local_dir, settings.ceph.model_dump())


def _settings() -> Settings:
    return Settings()


def build_network(options: AgentOptions, driver: ComputeDriver) -> NetworkDriver:
    """The host's VPC data plane: the sim's for sim hosts and where the kernel cannot be
    programmed; else the linux driver (taps owned by QEMU's user; ALTO_UNDERLAY_IP is the
    VXLAN address; ALTO_EXTERNAL_BRIDGE the external network of a network host)."""
    from altostack.drivers.network.hosts import use_linux

    if options.driver == "sim" or not use_linux(_settings().network_driver):
        return SimNetworkDriver()
    from altostack.drivers.network.linux import LinuxNetworkDriver

    run_as = getattr(driver, "run_as", None)
    return LinuxNetworkDriver(
        state_dir=(options.state_dir or default_state_dir()) / "network",
        underlay_ip=os.environ.get("ALTO_UNDERLAY_IP") or None,
        external_bridge=_settings().external_bridge,
        tap_user=None if run_as is None else run_as.name,
        scope=options.netns,  # hosts of a lab share the machine's namespace names
    )


async def register(options: AgentOptions, driver: ComputeDriver) -> tuple[str, str]:
    """Join the cluster; returns (host id, bus URL). Retries while the API is unreachable."""
    report = host_info_to_dict(await driver.host_info())
    report["hostname"] = options.hostname
    report["join_token"] = options.token
    report["capabilities"] = dataclasses.asdict(driver.capabilities)
    if os.environ.get("ALTO_UNDERLAY_IP"):  # docs/network.md: the host's VXLAN address
        report["underlay_ip"] = os.environ["ALTO_UNDERLAY_IP"]
    report["network_host"] = os.environ.get("ALTO_NETWORK_HOST", "") in ("1", "true", "yes")
    url = options.join_url.rstrip("/") + "/v1/hosts/register"
    delay = 0.5
    async with httpx.AsyncClient(timeout=10.0) as client:
        for _ in range(30):
            try:
                r = await client.post(url, json=report)
            except httpx.TransportError as exc:
                log.warning("control plane unreachable; retrying", url=url, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if r.status_code != 201:
                raise SystemExit(f"joining failed: {r.status_code} {r.text}")
            body = r.json()
            return str(body["host"]["id"]), str(options.bus or body["bus"])
    raise SystemExit(f"could not reach {url}")


async def run(options: AgentOptions) -> None:
    if options.netns:  # before any thread or child exists: they all inherit it
        from altostack.drivers.network import linux_netns

        try:
            linux_netns.enter(options.netns)
        except OSError as exc:
            raise SystemExit(f"cannot enter network namespace {options.netns}: {exc}") from exc
    driver = build_driver(options)
    host_id, bus_url = await register(options, driver)
    if bus_url.startswith("memory://"):
        raise SystemExit(
            "the control plane uses an in-process bus; an agent in another process needs a "
            "shared bus: start it with `alto up --bus nats://…` (or pass --bus)"
        )
    bus = connect(bus_url)
    network = build_network(options, driver)
    agent = Agent(
        host_id,
        bus,
        driver,
        heartbeat_interval=options.heartbeat_interval,
        storage=build_storage(options, driver),
        network=network,
    )
    await agent.start()
    log.info("agent joined", host_id=host_id, hostname=options.hostname, bus=bus_url)
    print(f"agent of {options.hostname} joined as {host_id}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await agent.stop()
    await bus.close()
    images = getattr(driver, "images", None)
    if isinstance(getattr(images, "source", None), HttpImageSource):
        await images.source.aclose()  # type: ignore[union-attr]
