"""The backends the contract suites run against, and the hooks the tests need.

Every test in ``tests/contract`` takes a ``compute``, ``storage`` or ``network`` fixture:
a *harness* holding the driver under test, its :class:`FaultInjector` and the hooks for
what no driver call causes (the agent restarting, the guest powering itself off, a
crash). The fixture is parametrised over the registries below, so each test runs once per
backend.

Adding a backend (``qemu``, ``local``, ``ceph``, ``linux``) is one line in a registry:
an async context manager factory that sets the real thing up, yields a harness subclass
and tears everything down (processes, files, devices) even on failure. A harness whose
backend cannot do a hook (make a guest ignore ACPI...) calls ``pytest.skip`` in it, or
``need_real`` from ``tests.support.real`` when the host lacks a component.

``sim-minimal`` is the sim with every optional capability off, so the ``NotSupported``
branches of the contracts run too.
"""

from __future__ import annotations

import abc
import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from altostack.domain.ids import new_id
from altostack.drivers.compute.base import (
    ComputeCapabilities,
    ComputeDriver,
    DiskSpec,
    VmSpec,
)
from altostack.drivers.compute.sim import SIM_CAPABILITIES, SimComputeDriver, SimHypervisor
from altostack.drivers.faults import FaultInjector
from altostack.drivers.network.base import NetworkDriver
from altostack.drivers.network.sim import SimDataplane, SimNetworkDriver
from altostack.drivers.storage.base import StorageCapabilities, StorageDriver
from altostack.drivers.storage.sim import (
    SIM_STORAGE_CAPABILITIES,
    SimStorageDriver,
    SimStoragePool,
)
from altostack.drivers.timings import SimTimings

# -- harnesses: what a contract test gets --------------------------------------------------


class ComputeHarness(abc.ABC):
    """A compute driver under test plus hooks into its host and guests."""

    driver: ComputeDriver
    faults: FaultInjector
    image_id: str
    """An image the backend can boot."""
    other_image_id: str
    """A second bootable image, for reinstalls."""

    def spec(self, **changes: Any) -> VmSpec:
        """A small VM spec with a fresh id, changed by ``changes``."""
        base = VmSpec(
            id=new_id("vm"),
            name="contract",
            generation=1,
            vcpus=1,
            memory_mib=128,
            root_disk_gib=1,
            image_id=self.image_id,
            password="Initial-1",
        )
        return replace(base, **changes)

    @abc.abstractmethod
    async def restart(self) -> None:
        """Replace ``driver`` by a new instance over the same host (an agent restart)."""

    @abc.abstractmethod
    async def guest_shutdown(self, vm_id: str) -> None:
        """Make the guest power itself off."""

    @abc.abstractmethod
    async def crash(self, vm_id: str) -> None:
        """Make the VM die unexpectedly (QEMU killed, guest panic)."""

    @abc.abstractmethod
    async def ignore_acpi(self, vm_id: str) -> None:
        """Make the guest ignore the ACPI power button."""

    @abc.abstractmethod
    async def guest_boots(self, vm_id: str) -> int:
        """How many times the guest OS has booted."""

    @abc.abstractmethod
    async def guest_password(self, vm_id: str, user: str) -> str | None:
        """The password the guest accepts for ``user`` (after its next boot at the latest)."""

    @abc.abstractmethod
    async def make_disk(self, size_mib: int) -> DiskSpec:
        """A new, empty data disk of ``size_mib`` that the backend can attach."""

    @abc.abstractmethod
    async def guest_sees_disk(self, vm_id: str, size_mib: int, *, present: bool = True) -> bool:
        """Whether the guest comes to see (``present``) or stop seeing a disk of that size.

        Waits (a real guest takes a moment to notice a hot-plug); False once it gave up.
        """

    @abc.abstractmethod
    async def guest_sees_nic(self, vm_id: str, mac: str, *, present: bool = True) -> bool:
        """Like :meth:`guest_sees_disk`, for a network interface with that MAC."""

    @abc.abstractmethod
    async def active_root_layer(self, vm_id: str) -> str:
        """The file the VM's root disk writes to now (where the hypervisor says it is)."""

    @abc.abstractmethod
    async def guest_answers(self, vm_id: str) -> bool:
        """Whether the guest answers a request from outside right now (one short try)."""

    @abc.abstractmethod
    def second_host(self) -> AbstractAsyncContextManager[ComputeHarness]:
        """Another host of the same kind, with the same images (a migration target)."""


class StorageHarness(abc.ABC):
    driver: StorageDriver
    faults: FaultInjector

    @abc.abstractmethod
    async def restart(self) -> None:
        """Replace ``driver`` by a new instance over the same pool."""


class NetworkHarness(abc.ABC):
    driver: NetworkDriver
    faults: FaultInjector

    @abc.abstractmethod
    async def restart(self) -> None:
        """Replace ``driver`` by a new instance over the same data plane."""


# -- sim harnesses -------------------------------------------------------------------------


class SimComputeHarness(ComputeHarness):
    def __init__(self, capabilities: ComputeCapabilities = SIM_CAPABILITIES) -> None:
        self.hypervisor = SimHypervisor()
        self.faults = FaultInjector()
        self.image_id, self.other_image_id = new_id("img"), new_id("img")
        self._capabilities = capabilities
        self._disk_sizes: dict[str, int] = {}
        self.driver = self._new_driver()

    def _new_driver(self) -> SimComputeDriver:
        return SimComputeDriver(
            self.hypervisor,
            timings=SimTimings.instant(),
            faults=self.faults,
            capabilities=self._capabilities,
        )

    async def restart(self) -> None:
        self.driver = self._new_driver()

    async def guest_shutdown(self, vm_id: str) -> None:
        self.hypervisor.guest_shutdown(vm_id)

    async def crash(self, vm_id: str) -> None:
        self.hypervisor.crash(vm_id)

    async def ignore_acpi(self, vm_id: str) -> None:
        self.hypervisor.ignore_acpi(vm_id)

    async def guest_boots(self, vm_id: str) -> int:
        return self.hypervisor.guest(vm_id).boots

    async def guest_password(self, vm_id: str, user: str) -> str | None:
        return self.hypervisor.guest(vm_id).passwords.get(user)

    async def make_disk(self, size_mib: int) -> DiskSpec:
        disk = DiskSpec(new_id("disk"), f"/sim/volumes/{new_id('disk')}.qcow2")
        self._disk_sizes[disk.path] = size_mib
        return disk

    def _running(self, vm_id: str) -> bool:
        vm = self.hypervisor.find(vm_id)
        return vm is not None and vm.state == "running"

    async def guest_sees_disk(self, vm_id: str, size_mib: int, *, present: bool = True) -> bool:
        vm = self.hypervisor.require(vm_id)
        sizes = [vm.spec.root_disk_gib * 1024] + [self._disk_sizes.get(d.path) for d in vm.disks]
        seen = self._running(vm_id) and size_mib in sizes
        return seen == present

    async def guest_sees_nic(self, vm_id: str, mac: str, *, present: bool = True) -> bool:
        vm = self.hypervisor.require(vm_id)
        seen = self._running(vm_id) and any(nic.mac == mac for nic in vm.spec.nics)
        return seen == present

    async def active_root_layer(self, vm_id: str) -> str:
        return self.hypervisor.require(vm_id).root_layers[-1]

    async def guest_answers(self, vm_id: str) -> bool:
        return self._running(vm_id)

    @asynccontextmanager
    async def second_host(self) -> AsyncIterator[ComputeHarness]:
        other = SimComputeHarness(self._capabilities)
        other.image_id, other.other_image_id = self.image_id, self.other_image_id
        yield other


class SimStorageHarness(StorageHarness):
    def __init__(self, capabilities: StorageCapabilities = SIM_STORAGE_CAPABILITIES) -> None:
        self.pool = SimStoragePool()
        self.faults = FaultInjector()
        self._capabilities = capabilities
        self.driver = self._new_driver()

    def _new_driver(self) -> SimStorageDriver:
        return SimStorageDriver(
            self.pool,
            timings=SimTimings.instant(),
            faults=self.faults,
            capabilities=self._capabilities,
        )

    async def restart(self) -> None:
        self.driver = self._new_driver()


class SimNetworkHarness(NetworkHarness):
    def __init__(self) -> None:
        self.dataplane = SimDataplane()
        self.faults = FaultInjector()
        self.driver = self._new_driver()

    def _new_driver(self) -> SimNetworkDriver:
        return SimNetworkDriver(self.dataplane, timings=SimTimings.instant(), faults=self.faults)

    async def restart(self) -> None:
        self.driver = self._new_driver()


@asynccontextmanager
async def _just(harness: Any) -> AsyncIterator[Any]:
    yield harness


class LinuxNetworkHarness(NetworkHarness):
    """The ``linux`` driver over a network namespace that stands for the host."""

    def __init__(self, netns_name: str, state_dir: Path) -> None:
        self.netns = netns_name
        self.state_dir = state_dir
        self.faults = FaultInjector()
        self.driver = self._new_driver()

    def _new_driver(self) -> NetworkDriver:
        from altostack.drivers.network.linux import LinuxNetworkDriver

        return LinuxNetworkDriver(
            state_dir=self.state_dir,
            netns=self.netns,
            underlay_ip="10.99.0.1",
            external_bridge=EXTERNAL_BRIDGE,
            faults=self.faults,
        )

    async def restart(self) -> None:
        await self.driver.close()  # the agent's process ends: its metadata sockets too
        self.driver = self._new_driver()


EXTERNAL_BRIDGE = "alext0"


@asynccontextmanager
async def linux_network_harness() -> AsyncIterator[NetworkHarness]:
    import subprocess

    from tests.support.netns import host_namespace

    with host_namespace("c") as name, tempfile.TemporaryDirectory(prefix="alto-net-") as state:
        bridge = ["ip", "-n", name, "link", "add", EXTERNAL_BRIDGE, "type", "bridge"]
        await asyncio.to_thread(subprocess.run, bridge, check=True, capture_output=True)
        harness = LinuxNetworkHarness(name, Path(state))
        try:
            yield harness
        finally:
            # Router namespaces and their dnsmasq live outside the host's namespace.
            harness.faults.clear()
            for router in await harness.driver.list_routers():
                await harness.driver.delete_router(router.spec.id)
            await harness.driver.close()


# -- the registries: one line per backend --------------------------------------------------

Factory = Callable[[], AbstractAsyncContextManager[Any]]

from tests.contract.qemu_harness import pytest_collection_modifyitems, qemu_compute_harness  # noqa: E402, F401 (needs ComputeHarness)

COMPUTE_BACKENDS: dict[str, Factory] = {
    "sim": lambda: _just(SimComputeHarness()),
    "sim-minimal": lambda: _just(SimComputeHarness(ComputeCapabilities())),
    "qemu": qemu_compute_harness,
}
from tests.contract.ceph_storage_harness import ceph_storage_harness  # noqa: E402
from tests.contract.local_storage_harness import local_storage_harness  # noqa: E402

STORAGE_BACKENDS: dict[str, Callable[..., AbstractAsyncContextManager[Any]]] = {
    "sim": lambda: _just(SimStorageHarness()),
    "sim-minimal": lambda: _just(SimStorageHarness(StorageCapabilities())),
    "local": local_storage_harness,
    "ceph": ceph_storage_harness,
}
STORAGE_MARKS: dict[str, tuple[pytest.MarkDecorator, ...]] = {
    "local": (pytest.mark.real,),
    "ceph": (pytest.mark.real, pytest.mark.slow),  # a cluster bootstrap (~20 s) per session
}
STORAGE_FIXTURES: dict[str, tuple[str, ...]] = {"ceph": ("ceph_cluster",)}
"""Session fixtures a backend's factory takes (tests/conftest.py: the Ceph cluster starts
once per session, when the first test needing it runs)."""
NETWORK_BACKENDS: dict[str, Factory] = {
    "sim": lambda: _just(SimNetworkHarness()),
    "linux": linux_network_harness,
}
NETWORK_MARKS: dict[str, tuple[pytest.MarkDecorator, ...]] = {
    "linux": (pytest.mark.real,),  # namespaces, bridges, nftables, dnsmasq
}


@pytest.fixture(params=list(COMPUTE_BACKENDS))
async def compute(request: pytest.FixtureRequest) -> AsyncIterator[ComputeHarness]:
    async with COMPUTE_BACKENDS[request.param]() as harness:
        yield harness


@pytest.fixture(
    params=[pytest.param(name, marks=STORAGE_MARKS.get(name, ())) for name in STORAGE_BACKENDS]
)
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[StorageHarness]:
    needs = [request.getfixturevalue(name) for name in STORAGE_FIXTURES.get(request.param, ())]
    async with STORAGE_BACKENDS[request.param](*needs) as harness:
        yield harness


@pytest.fixture(
    params=[pytest.param(name, marks=NETWORK_MARKS.get(name, ())) for name in NETWORK_BACKENDS]
)
async def network(request: pytest.FixtureRequest) -> AsyncIterator[NetworkHarness]:
    async with NETWORK_BACKENDS[request.param]() as harness:
        yield harness
