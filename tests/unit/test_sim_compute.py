"""What the sim compute backend does beyond the contract: host model, timing, resources."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle
from dataclasses import replace

import pytest

from altostack.drivers.compute.base import ComputeCapabilities, Gpu, NicSpec, VmSpec
from altostack.drivers.compute.sim import SimComputeDriver, SimHostConfig, SimHypervisor
from altostack.drivers.errors import InsufficientResources, InvalidState, NotSupported
from altostack.drivers.timings import SimTimings

GIB_MIB = 1024


def _spec(vm_id: str = "vm-1", **changes: object) -> VmSpec:
    base = VmSpec(vm_id, "web", 1, 2, 1024, 10, "img-1")
    return replace(base, **changes)  # type: ignore[arg-type]


class RecordingSleep:
    """Records requested delays and yields once, so concurrency still interleaves."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def _driver(
    hv: SimHypervisor | None = None, **kw: object
) -> tuple[SimComputeDriver, RecordingSleep]:
    sleep = RecordingSleep()
    return SimComputeDriver(hv, timings=SimTimings(), sleep=sleep, **kw), sleep  # type: ignore[arg-type]


async def test_the_default_host_is_a_big_x86_server() -> None:
    host = await SimComputeDriver().host_info()
    assert (host.arch, host.cores, host.memory_mib, host.disk_gib) == (
        "x86_64",
        64,
        256 * GIB_MIB,
        2048,
    )
    assert (host.gpus, host.accel) == ((), "sim")


async def test_the_host_is_configurable() -> None:
    gpu = Gpu("0000:65:00.0", "NVIDIA L4")
    hv = SimHypervisor(SimHostConfig(hostname="h7", arch="aarch64", cores=8, gpus=(gpu,)))
    host = await SimComputeDriver(hv).host_info()
    assert (host.hostname, host.arch, host.cores, host.gpus) == ("h7", "aarch64", 8, (gpu,))


async def test_operations_take_their_configured_time() -> None:
    driver, sleep = _driver()
    await driver.ensure_vm(_spec())
    await driver.reboot_vm("vm-1")
    await driver.stop_vm("vm-1", timeout=60)
    await driver.start_vm("vm-1")
    await driver.stop_vm("vm-1", timeout=60, force=True)
    assert sleep.delays == [3.0, 1.0, 2.0, 2.0, 1.0, 0.2]


async def test_a_slow_guest_is_forced_off_after_the_timeout() -> None:
    driver, sleep = _driver()
    await driver.ensure_vm(_spec())
    sleep.delays.clear()
    await driver.stop_vm("vm-1", timeout=0.5)  # the guest needs 2 s to shut down
    assert sleep.delays == [0.5, 0.2]
    assert driver.hypervisor.guest("vm-1").last_shutdown == "forced"


async def test_a_guest_ignoring_acpi_is_forced_off_after_the_timeout() -> None:
    driver, sleep = _driver()
    await driver.ensure_vm(_spec())
    driver.hypervisor.ignore_acpi("vm-1")
    sleep.delays.clear()
    await driver.stop_vm("vm-1", timeout=30)
    assert sleep.delays == [30, 0.2]
    assert driver.hypervisor.guest("vm-1").last_shutdown == "forced"


async def test_a_graceful_stop_is_clean() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    await driver.ensure_vm(_spec())
    await driver.stop_vm("vm-1", timeout=5)
    assert driver.hypervisor.guest("vm-1").last_shutdown == "clean"


async def test_memory_is_never_overcommitted() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    await driver.ensure_vm(_spec("vm-a", memory_mib=200 * GIB_MIB))
    await driver.ensure_vm(_spec("vm-b", memory_mib=56 * GIB_MIB))  # exactly full
    with pytest.raises(InsufficientResources, match="not overcommitted"):
        await driver.ensure_vm(_spec("vm-c", memory_mib=1))
    stopped = await driver.ensure_vm(_spec("vm-d", memory_mib=100 * GIB_MIB, power_state="stopped"))
    assert stopped.state == "stopped"  # stopped VMs hold no memory
    await driver.stop_vm("vm-b", timeout=5)
    await driver.ensure_vm(_spec("vm-c", memory_mib=56 * GIB_MIB))


async def test_concurrent_creates_cannot_overbook_the_host() -> None:
    driver, _ = _driver()
    specs = [_spec(f"vm-{n}", memory_mib=100 * GIB_MIB) for n in range(3)]
    results = await asyncio.gather(*(driver.ensure_vm(s) for s in specs), return_exceptions=True)
    assert sum(isinstance(r, InsufficientResources) for r in results) == 1
    assert len(await driver.list_vms()) == 2


async def test_concurrent_starts_cannot_overbook_the_host() -> None:
    driver, _ = _driver()
    for n in range(3):
        await driver.ensure_vm(_spec(f"vm-{n}", memory_mib=100 * GIB_MIB, power_state="stopped"))
    results = await asyncio.gather(
        *(driver.start_vm(f"vm-{n}") for n in range(3)), return_exceptions=True
    )
    assert sum(isinstance(r, InsufficientResources) for r in results) == 1


async def test_root_disks_count_against_the_host_disk_even_when_stopped() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    await driver.ensure_vm(_spec("vm-a", root_disk_gib=2000, power_state="stopped"))
    with pytest.raises(InsufficientResources, match="disk"):
        await driver.ensure_vm(_spec("vm-b", root_disk_gib=49))
    await driver.delete_vm("vm-a")
    await driver.ensure_vm(_spec("vm-b", root_disk_gib=49))


async def test_a_gpu_serves_one_running_vm() -> None:
    gpu = Gpu("0000:65:00.0", "NVIDIA L4")
    hv = SimHypervisor(SimHostConfig(gpus=(gpu,)))
    driver = SimComputeDriver(hv, timings=SimTimings.instant())
    await driver.ensure_vm(_spec("vm-a", gpus=(gpu.pci_address,)))
    await driver.ensure_vm(_spec("vm-b", gpus=(gpu.pci_address,), power_state="stopped"))
    with pytest.raises(InsufficientResources, match="in use"):
        await driver.start_vm("vm-b")
    await driver.stop_vm("vm-a", timeout=5)
    await driver.start_vm("vm-b")
    with pytest.raises(InsufficientResources, match="no GPU"):
        await driver.ensure_vm(_spec("vm-c", gpus=("0000:00:99.0",)))


async def test_gpus_change_only_while_stopped() -> None:
    gpu = Gpu("0000:65:00.0", "NVIDIA L4")
    driver = SimComputeDriver(
        SimHypervisor(SimHostConfig(gpus=(gpu,))), timings=SimTimings.instant()
    )
    spec = _spec()
    await driver.ensure_vm(spec)
    with_gpu = replace(spec, gpus=(gpu.pci_address,), generation=2)
    with pytest.raises(InvalidState, match="GPUs"):
        await driver.ensure_vm(with_gpu)
    assert (await driver.ensure_vm(replace(with_gpu, power_state="stopped"))).generation == 2
    assert (await driver.ensure_vm(with_gpu)).state == "running"


@pytest.mark.parametrize("hot_plug", [True, False])
async def test_nics_change_live_only_with_hot_plug(hot_plug: bool) -> None:
    caps = ComputeCapabilities(hot_plug_nic=hot_plug)
    driver = SimComputeDriver(timings=SimTimings.instant(), capabilities=caps)
    spec = _spec()
    await driver.ensure_vm(spec)
    nic = NicSpec("nic-1", "02:00:00:00:00:01", "10.0.0.5", "subnet-1")
    changed = replace(spec, nics=(nic,), generation=2)
    if hot_plug:
        assert (await driver.ensure_vm(changed)).generation == 2
    else:
        with pytest.raises(InvalidState, match="NICs"):
            await driver.ensure_vm(changed)


async def test_another_architecture_is_not_supported() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    with pytest.raises(NotSupported, match="x86_64"):
        await driver.ensure_vm(_spec(arch="aarch64"))
    assert await driver.list_vms() == []


async def test_the_root_disk_is_made_once() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    spec = _spec()
    await driver.ensure_vm(spec)
    status = await driver.ensure_vm(replace(spec, image_id="img-2", generation=2))
    assert (status.image_id, status.generation) == ("img-1", 2)
    await driver.stop_vm(spec.id, timeout=5)
    await driver.reinstall_vm(replace(spec, image_id="img-2", generation=3))
    guest = driver.hypervisor.guest(spec.id)
    assert (guest.image_id, guest.installs) == ("img-2", 2)


async def test_a_vm_being_created_is_not_reported() -> None:
    gate = asyncio.Event()

    async def slow(seconds: float) -> None:
        await gate.wait()

    driver = SimComputeDriver(timings=SimTimings.instant(), sleep=slow)
    task = asyncio.create_task(driver.ensure_vm(_spec()))
    await asyncio.sleep(0)
    assert await driver.get_vm("vm-1") is None and await driver.list_vms() == []
    gate.set()
    assert (await task).state == "running"


async def test_a_failed_stop_leaves_the_vm_running() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    await driver.ensure_vm(_spec())
    driver.faults.inject("stop")
    with pytest.raises(Exception, match="injected"):
        await driver.stop_vm("vm-1", timeout=5)
    status = await driver.get_vm("vm-1")
    assert status is not None and status.state == "running"


async def test_a_failed_live_resize_is_undone() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    await driver.ensure_vm(_spec())
    driver.faults.inject("resize")
    with pytest.raises(Exception, match="injected"):
        await driver.resize_vm("vm-1", 4, 2048, live=True)
    status = await driver.get_vm("vm-1")
    assert status is not None and (status.vcpus, status.memory_mib) == (2, 1024)


async def test_guest_hooks_need_a_live_vm() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    await driver.ensure_vm(_spec(power_state="stopped"))
    with pytest.raises(InvalidState):
        driver.hypervisor.guest_shutdown("vm-1")
    with pytest.raises(InvalidState):
        driver.hypervisor.crash("vm-1")


async def test_console_passwords_rotate_and_die_with_the_vm() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    await driver.ensure_vm(_spec())
    endpoint = await driver.console("vm-1")
    assert driver.hypervisor.console_password("vm-1") == endpoint.password
    assert endpoint.password and endpoint.password not in repr(endpoint)
    await driver.stop_vm("vm-1", timeout=5)
    assert driver.hypervisor.console_password("vm-1") is None


async def test_console_ports_are_unique_per_vm() -> None:
    driver = SimComputeDriver(timings=SimTimings.instant())
    ports = set()
    for n in range(3):
        status = await driver.ensure_vm(_spec(f"vm-{n}"))
        assert status.console is not None
        ports.add(status.console.port)
    assert len(ports) == 3


def test_specs_keep_secrets_out_of_their_repr() -> None:
    spec = _spec(password="Very-Secret-1", user_data="#cloud-config\npassword: x")
    assert "Very-Secret-1" not in repr(spec) and "cloud-config" not in repr(spec)


def test_specs_are_validated_and_frozen() -> None:
    with pytest.raises(ValueError):
        _spec(vcpus=0)
    with pytest.raises(ValueError):
        _spec(power_state="paused")
    metadata = {"k": "v"}
    spec = _spec(ssh_keys=["ssh-ed25519 AAA"], metadata=metadata)
    assert spec.ssh_keys == ("ssh-ed25519 AAA",)
    metadata["k"] = "changed"  # the caller's dict is not the spec's
    assert spec.metadata == {"k": "v"}
    assert hash(spec) == hash(_spec(ssh_keys=("ssh-ed25519 AAA",)))


def test_specs_and_statuses_serialise_for_the_bus() -> None:
    spec = _spec(
        metadata={"k": "v"}, nics=(NicSpec("nic-1", "02:00:00:00:00:01", "10.0.0.5", "s"),)
    )
    as_dict = dataclasses.asdict(spec)
    assert as_dict["metadata"] == {"k": "v"} and as_dict["nics"][0]["ip"] == "10.0.0.5"
    assert copy.deepcopy(spec) == spec == pickle.loads(pickle.dumps(spec))
