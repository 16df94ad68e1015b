"""The compute driver contract: one test per promise in ``drivers/compute/base.py``.

Runs on every backend in ``COMPUTE_BACKENDS`` (tests/contract/conftest.py). Tests only use
the interface and the harness hooks, never a backend's internals.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path

import pytest

from altostack.drivers.compute.base import DEFAULT_USER, MigrationProgress, NicSpec, VmSpec
from altostack.drivers.errors import (
    BackendFailure,
    DriverError,
    InsufficientResources,
    InvalidSpec,
    InvalidState,
    NotSupported,
    VmNotFound,
)
from tests.contract.conftest import ComputeHarness


async def _running(compute: ComputeHarness, **changes: object) -> VmSpec:
    spec = compute.spec(**changes)
    status = await compute.driver.ensure_vm(spec)
    assert status.state == "running"
    return spec


async def _stopped(compute: ComputeHarness, **changes: object) -> VmSpec:
    spec = compute.spec(power_state="stopped", **changes)
    status = await compute.driver.ensure_vm(spec)
    assert status.state == "stopped"
    return spec


async def _ids(compute: ComputeHarness) -> list[str]:
    return [vm.id for vm in await compute.driver.list_vms()]


def _assert_invalid_state(exc: pytest.ExceptionInfo[InvalidState], current: str) -> None:
    assert exc.value.current_state == current
    assert current in str(exc.value)


# -- host ----------------------------------------------------------------------------------


async def test_host_info_reports_capacity(compute: ComputeHarness) -> None:
    host = await compute.driver.host_info()
    assert host.cores > 0 and host.memory_mib > 0 and host.disk_gib > 0
    assert host.arch in ("x86_64", "aarch64")
    assert host.accel in ("kvm", "tcg", "sim")
    assert all(gpu.pci_address for gpu in host.gpus)


# -- ensure ----------------------------------------------------------------------------------


async def test_ensure_creates_a_running_vm(compute: ComputeHarness) -> None:
    spec = compute.spec(vcpus=2, memory_mib=256, generation=3)
    status = await compute.driver.ensure_vm(spec)
    assert status.id == spec.id
    assert (status.state, status.generation) == ("running", 3)
    assert (status.vcpus, status.memory_mib) == (2, 256)
    assert status.started_at is not None and status.stopped_by is None
    assert status.image_id == spec.image_id
    assert (status.console is not None) == compute.driver.capabilities.console
    assert status.console is None or status.console.password is None  # no secrets in status
    assert await compute.driver.get_vm(spec.id) == status
    assert await compute.guest_boots(spec.id) == 1


async def test_ensure_creates_a_stopped_vm(compute: ComputeHarness) -> None:
    spec = await _stopped(compute)
    status = await compute.driver.get_vm(spec.id)
    assert status is not None
    assert (status.stopped_by, status.started_at, status.console) == ("api", None, None)
    assert await compute.guest_boots(spec.id) == 0


async def test_ensure_is_idempotent(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    first = await compute.driver.get_vm(spec.id)
    again = await compute.driver.ensure_vm(spec)
    assert again == first  # not restarted: same started_at
    assert await _ids(compute) == [spec.id]
    assert await compute.guest_boots(spec.id) == 1


async def test_concurrent_ensures_never_duplicate(compute: ComputeHarness) -> None:
    spec = compute.spec()
    results = await asyncio.gather(*(compute.driver.ensure_vm(spec) for _ in range(5)))
    assert {r.state for r in results} == {"running"}
    assert await _ids(compute) == [spec.id]
    assert await compute.guest_boots(spec.id) == 1


async def test_ensure_converges_the_power_state(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    stopped = await compute.driver.ensure_vm(replace(spec, power_state="stopped", generation=2))
    assert (stopped.state, stopped.stopped_by, stopped.generation) == ("stopped", "api", 2)
    running = await compute.driver.ensure_vm(replace(spec, generation=3))
    assert (running.state, running.generation) == ("running", 3)


async def test_ensure_with_a_stale_generation_changes_nothing(compute: ComputeHarness) -> None:
    spec = await _running(compute, generation=5)
    status = await compute.driver.ensure_vm(replace(spec, power_state="stopped", generation=4))
    assert (status.state, status.generation) == ("running", 5)


async def test_ensure_starts_a_guest_stopped_vm_whose_spec_says_running(
    compute: ComputeHarness,
) -> None:
    spec = await _running(compute)
    await compute.guest_shutdown(spec.id)
    seen = await compute.driver.get_vm(spec.id)
    assert seen is not None and (seen.state, seen.stopped_by) == ("stopped", "guest")
    assert (await compute.driver.ensure_vm(spec)).state == "running"


async def test_ensure_restarts_a_crashed_vm(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    await compute.crash(spec.id)
    seen = await compute.driver.get_vm(spec.id)
    assert seen is not None and (seen.state, seen.stopped_by, seen.console) == (
        "crashed",
        None,
        None,
    )
    assert (await compute.driver.ensure_vm(spec)).state == "running"


async def test_ensure_resizes_a_stopped_vm(compute: ComputeHarness) -> None:
    spec = await _stopped(compute)
    bigger = replace(spec, vcpus=2, memory_mib=256, generation=2)
    status = await compute.driver.ensure_vm(bigger)
    assert (status.vcpus, status.memory_mib, status.generation) == (2, 256, 2)
    smaller = replace(spec, vcpus=1, memory_mib=128, generation=3, power_state="running")
    status = await compute.driver.ensure_vm(smaller)
    assert (status.state, status.vcpus, status.memory_mib) == ("running", 1, 128)


async def test_ensure_on_a_running_vm_grows_live_or_asks_for_a_stop(
    compute: ComputeHarness,
) -> None:
    spec = await _running(compute)
    grown = replace(spec, vcpus=2, generation=2)
    if compute.driver.capabilities.live_resize_cpu:
        status = await compute.driver.ensure_vm(grown)
        assert (status.state, status.vcpus, status.generation) == ("running", 2, 2)
    else:
        with pytest.raises(InvalidState) as exc:
            await compute.driver.ensure_vm(grown)
        _assert_invalid_state(exc, "running")
        unchanged = await compute.driver.get_vm(spec.id)
        assert unchanged is not None and (unchanged.vcpus, unchanged.generation) == (1, 1)


async def test_ensure_never_shrinks_a_running_vm(compute: ComputeHarness) -> None:
    spec = await _running(compute, memory_mib=256)
    with pytest.raises(InvalidState) as exc:
        await compute.driver.ensure_vm(replace(spec, memory_mib=128, generation=2))
    _assert_invalid_state(exc, "running")
    # The documented way out: ask for a stop in the same spec.
    status = await compute.driver.ensure_vm(
        replace(spec, memory_mib=128, generation=2, power_state="stopped")
    )
    assert (status.state, status.memory_mib) == ("stopped", 128)


async def test_ensure_refuses_more_memory_than_the_host_has(compute: ComputeHarness) -> None:
    host = await compute.driver.host_info()
    spec = compute.spec(memory_mib=host.memory_mib + 1024)
    with pytest.raises(InsufficientResources):
        await compute.driver.ensure_vm(spec)
    assert await compute.driver.get_vm(spec.id) is None


async def test_start_refuses_when_the_host_memory_is_taken(compute: ComputeHarness) -> None:
    host = await compute.driver.host_info()
    half = host.memory_mib // 2 + 1024
    await _running(compute, memory_mib=half)
    second = await _stopped(compute, memory_mib=half)  # a stopped VM holds no memory
    with pytest.raises(InsufficientResources):
        await compute.driver.start_vm(second.id)
    status = await compute.driver.get_vm(second.id)
    assert status is not None and status.state == "stopped"


async def _big(compute: ComputeHarness) -> VmSpec:
    """A spec whose VM takes over half the host's memory: two cannot run at once."""
    host = await compute.driver.host_info()
    return compute.spec(memory_mib=host.memory_mib // 2 + 1024)


async def _assert_nothing_left(compute: ComputeHarness, failed: VmSpec) -> None:
    """No VM listed, and its resources free: another big VM fits."""
    assert await compute.driver.get_vm(failed.id) is None
    assert await _ids(compute) == []
    other = await _big(compute)
    assert (await compute.driver.ensure_vm(other)).state == "running"
    await compute.driver.delete_vm(other.id)


async def test_a_failed_create_cleans_up_after_itself(compute: ComputeHarness) -> None:
    spec = await _big(compute)
    compute.faults.inject("create", resource_id=spec.id)
    with pytest.raises(BackendFailure, match="injected"):
        await compute.driver.ensure_vm(spec)
    await _assert_nothing_left(compute, spec)
    assert (await compute.driver.ensure_vm(spec)).state == "running"  # a retry just works


async def test_a_failed_first_boot_leaves_no_vm(compute: ComputeHarness) -> None:
    spec = await _big(compute)
    compute.faults.inject("start", resource_id=spec.id)
    with pytest.raises(BackendFailure):
        await compute.driver.ensure_vm(spec)
    await _assert_nothing_left(compute, spec)


async def test_a_cancelled_create_leaves_no_vm(compute: ComputeHarness) -> None:
    spec = await _big(compute)
    task = asyncio.ensure_future(compute.driver.ensure_vm(spec))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_nothing_left(compute, spec)
    assert (await compute.driver.ensure_vm(spec)).state == "running"


async def test_injected_errors_surface_with_their_type_and_message(
    compute: ComputeHarness,
) -> None:
    spec = await _stopped(compute)
    error = InsufficientResources("injected: no hugepages left")
    compute.faults.inject("start", resource_id=spec.id, error=error)
    with pytest.raises(InsufficientResources, match="no hugepages left"):
        await compute.driver.start_vm(spec.id)
    status = await compute.driver.get_vm(spec.id)
    assert status is not None and status.state == "stopped"  # a failed call changes nothing


# -- observing ------------------------------------------------------------------------------


async def test_get_vm_of_a_missing_vm_is_none(compute: ComputeHarness) -> None:
    assert await compute.driver.get_vm("vm-missing") is None


async def test_list_vms_reports_vms_the_caller_did_not_create(compute: ComputeHarness) -> None:
    """Orphans: made by an earlier agent (or by hand) are listed with their real state."""
    running = await _running(compute)
    stopped = await _stopped(compute)
    await compute.restart()
    listed = {vm.id: vm.state for vm in await compute.driver.list_vms()}
    assert listed == {running.id: "running", stopped.id: "stopped"}


async def test_an_agent_restart_readopts_running_vms(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    before = await compute.driver.get_vm(spec.id)
    await compute.restart()
    after = await compute.driver.get_vm(spec.id)
    assert after == before  # still running, same boot
    assert await compute.driver.ensure_vm(spec) == before
    await compute.driver.stop_vm(spec.id, timeout=5)  # and it is fully manageable
    assert await compute.guest_boots(spec.id) == 1


# -- start / stop / reboot -------------------------------------------------------------------


async def test_start_of_a_running_vm_is_a_no_op(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    before = await compute.driver.get_vm(spec.id)
    assert await compute.driver.start_vm(spec.id) == before
    assert await compute.guest_boots(spec.id) == 1


async def test_start_boots_a_stopped_vm(compute: ComputeHarness) -> None:
    spec = await _stopped(compute)
    status = await compute.driver.start_vm(spec.id)
    assert (status.state, status.stopped_by) == ("running", None)
    assert status.started_at is not None


async def test_stop_is_graceful_and_marks_the_api(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    status = await compute.driver.stop_vm(spec.id, timeout=5)
    assert (status.state, status.stopped_by, status.started_at) == ("stopped", "api", None)
    assert await compute.driver.stop_vm(spec.id, timeout=5) == status  # no-op when stopped


async def test_forced_stop(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    status = await compute.driver.stop_vm(spec.id, timeout=60, force=True)
    assert status.state == "stopped"


async def test_stop_pulls_the_plug_when_the_guest_ignores_acpi(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    await compute.ignore_acpi(spec.id)
    status = await asyncio.wait_for(compute.driver.stop_vm(spec.id, timeout=0.05), 10)
    assert (status.state, status.stopped_by) == ("stopped", "api")


async def test_stop_cleans_up_a_crashed_vm(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    await compute.crash(spec.id)
    status = await compute.driver.stop_vm(spec.id, timeout=5)
    assert (status.state, status.stopped_by) == ("stopped", "api")


async def test_a_guest_shutdown_is_told_apart_from_a_crash(compute: ComputeHarness) -> None:
    a, b = await _running(compute), await _running(compute)
    await compute.guest_shutdown(a.id)
    await compute.crash(b.id)
    status_a, status_b = await compute.driver.get_vm(a.id), await compute.driver.get_vm(b.id)
    assert status_a is not None and (status_a.state, status_a.stopped_by) == ("stopped", "guest")
    assert status_b is not None and (status_b.state, status_b.stopped_by) == ("crashed", None)


@pytest.mark.parametrize("hard", [False, True])
async def test_reboot_keeps_the_vm_running(compute: ComputeHarness, hard: bool) -> None:
    spec = await _running(compute)
    before = await compute.driver.get_vm(spec.id)
    status = await compute.driver.reboot_vm(spec.id, hard=hard)
    assert before is not None and status.state == "running"
    assert status.started_at == before.started_at
    assert await compute.guest_boots(spec.id) == 2


async def test_reboot_of_a_stopped_vm_names_its_state(compute: ComputeHarness) -> None:
    spec = await _stopped(compute)
    with pytest.raises(InvalidState) as exc:
        await compute.driver.reboot_vm(spec.id)
    _assert_invalid_state(exc, "stopped")


# -- resize ----------------------------------------------------------------------------------


async def test_offline_resize_of_a_stopped_vm(compute: ComputeHarness) -> None:
    spec = await _stopped(compute, vcpus=2, memory_mib=512)
    status = await compute.driver.resize_vm(spec.id, 1, 256, live=False)
    assert (status.vcpus, status.memory_mib, status.state) == (1, 256, "stopped")
    status = await compute.driver.start_vm(spec.id)
    assert (status.vcpus, status.memory_mib) == (1, 256)


async def test_offline_resize_of_a_running_vm_needs_a_stop(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    with pytest.raises(InvalidState) as exc:
        await compute.driver.resize_vm(spec.id, 2, 256, live=False)
    _assert_invalid_state(exc, "running")


async def test_live_resize_follows_the_capabilities(compute: ComputeHarness) -> None:
    caps = compute.driver.capabilities
    spec = await _running(compute)
    if caps.live_resize_cpu:
        assert (await compute.driver.resize_vm(spec.id, 2, 128, live=True)).vcpus == 2
    else:
        with pytest.raises(NotSupported) as exc:
            await compute.driver.resize_vm(spec.id, 2, 128, live=True)
        assert exc.value.feature == "live_resize_cpu"
    vcpus = 2 if caps.live_resize_cpu else 1
    if caps.live_resize_memory:
        status = await compute.driver.resize_vm(spec.id, vcpus, 256, live=True)
        assert (status.memory_mib, status.state) == (256, "running")
    else:
        with pytest.raises(NotSupported) as exc:
            await compute.driver.resize_vm(spec.id, vcpus, 256, live=True)
        assert exc.value.feature == "live_resize_memory"


async def test_live_downsizing_is_not_supported(compute: ComputeHarness) -> None:
    spec = await _running(compute, vcpus=2)
    with pytest.raises(NotSupported):
        await compute.driver.resize_vm(spec.id, 1, spec.memory_mib, live=True)
    status = await compute.driver.get_vm(spec.id)
    assert status is not None and status.vcpus == 2


async def test_live_resize_needs_a_running_vm(compute: ComputeHarness) -> None:
    spec = await _stopped(compute)
    with pytest.raises(InvalidState) as exc:
        await compute.driver.resize_vm(spec.id, 2, 256, live=True)
    _assert_invalid_state(exc, "stopped")


async def test_a_resize_to_the_current_size_is_a_no_op(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    before = await compute.driver.get_vm(spec.id)
    for live in (True, False):
        assert await compute.driver.resize_vm(spec.id, 1, 128, live=live) == before


async def test_live_growth_beyond_host_memory_is_refused(compute: ComputeHarness) -> None:
    if not compute.driver.capabilities.live_resize_memory:
        pytest.skip("backend cannot add memory live")
    host = await compute.driver.host_info()
    spec = await _running(compute)
    with pytest.raises(InsufficientResources):
        await compute.driver.resize_vm(spec.id, 1, host.memory_mib + 1024, live=True)
    status = await compute.driver.get_vm(spec.id)
    assert status is not None and status.memory_mib == 128


# -- reinstall, password, pause, console ------------------------------------------------------


async def test_reinstall_gives_a_new_root_disk_and_ends_stopped(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    await compute.driver.stop_vm(spec.id, timeout=5)
    new = replace(spec, image_id=compute.other_image_id, password="Fresh-2", generation=2)
    status = await compute.driver.reinstall_vm(new)
    assert (status.state, status.image_id, status.generation) == (
        "stopped",
        compute.other_image_id,
        2,
    )
    await compute.driver.start_vm(spec.id)
    assert await compute.guest_password(spec.id, DEFAULT_USER) == "Fresh-2"


async def test_reinstall_of_a_running_vm_names_its_state(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    with pytest.raises(InvalidState) as exc:
        await compute.driver.reinstall_vm(spec)
    _assert_invalid_state(exc, "running")


@pytest.mark.parametrize("power_state", ["running", "stopped"])
async def test_set_password_reaches_the_guest(compute: ComputeHarness, power_state: str) -> None:
    spec = compute.spec(power_state=power_state)
    await compute.driver.ensure_vm(spec)
    await compute.driver.set_password(spec.id, DEFAULT_USER, "Changed-3")
    await compute.driver.set_password(spec.id, DEFAULT_USER, "Changed-4")  # latest wins
    if power_state == "stopped":
        await compute.driver.start_vm(spec.id)
    assert await compute.guest_password(spec.id, DEFAULT_USER) == "Changed-4"


async def test_pause_and_resume_follow_the_capability(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    if not compute.driver.capabilities.pause:
        with pytest.raises(NotSupported):
            await compute.driver.pause_vm(spec.id)
        with pytest.raises(NotSupported):
            await compute.driver.resume_vm(spec.id)
        return
    paused = await compute.driver.pause_vm(spec.id)
    assert paused.state == "paused"
    assert await compute.driver.pause_vm(spec.id) == paused  # no-op
    with pytest.raises(InvalidState) as exc:
        await compute.driver.start_vm(spec.id)
    _assert_invalid_state(exc, "paused")
    resumed = await compute.driver.resume_vm(spec.id)
    assert resumed.state == "running" and resumed.started_at == paused.started_at
    assert await compute.driver.resume_vm(spec.id) == resumed  # no-op


async def test_pause_of_a_stopped_vm_names_its_state(compute: ComputeHarness) -> None:
    if not compute.driver.capabilities.pause:
        pytest.skip("backend cannot pause")
    spec = await _stopped(compute)
    with pytest.raises(InvalidState) as exc:
        await compute.driver.pause_vm(spec.id)
    _assert_invalid_state(exc, "stopped")


async def test_stop_of_a_paused_vm(compute: ComputeHarness) -> None:
    if not compute.driver.capabilities.pause:
        pytest.skip("backend cannot pause")
    spec = await _running(compute)
    await compute.driver.pause_vm(spec.id)
    status = await compute.driver.stop_vm(spec.id, timeout=5)
    assert (status.state, status.stopped_by) == ("stopped", "api")


async def test_console_follows_the_capability(compute: ComputeHarness) -> None:
    spec = await _running(compute)
    if not compute.driver.capabilities.console:
        with pytest.raises(NotSupported):
            await compute.driver.console(spec.id)
        return
    first = await compute.driver.console(spec.id)
    second = await compute.driver.console(spec.id)
    assert first.port > 0 and first.protocol == "vnc"
    assert first.password and second.password and first.password != second.password
    status = await compute.driver.get_vm(spec.id)
    assert status is not None and status.console is not None
    assert (status.console.host, status.console.port) == (first.host, first.port)


async def test_console_of_a_stopped_vm_names_its_state(compute: ComputeHarness) -> None:
    if not compute.driver.capabilities.console:
        pytest.skip("backend has no console")
    spec = await _stopped(compute)
    with pytest.raises(InvalidState) as exc:
        await compute.driver.console(spec.id)
    _assert_invalid_state(exc, "stopped")


# -- disks, NICs, snapshots -------------------------------------------------------------------


def _nic(n: int) -> NicSpec:
    """A NIC (the qemu backend forwards the guest's HTTP port through NIC 0)."""
    return NicSpec(f"nic-{n}", f"52:54:00:00:01:{n:02x}", f"10.{n}.0.10", f"subnet-{n}")


DISK_MIB = 48


async def test_a_hot_plugged_disk_reaches_the_guest_and_stays_attached(
    compute: ComputeHarness,
) -> None:
    """Hot-plug and unplug, kept across an agent restart and a cold start; a live
    snapshot of the root disk on the same guest (the VM keeps running)."""
    d = compute.driver
    spec = await _running(compute, nics=(_nic(1),))
    disk = await compute.make_disk(DISK_MIB)
    if not d.capabilities.hot_plug_disk:
        with pytest.raises(NotSupported):
            await d.attach_disk(spec.id, disk)
        assert await d.list_disks(spec.id) == []
        return
    assert await compute.guest_sees_disk(spec.id, spec.root_disk_gib * 1024)  # it is up
    began = time.monotonic()
    await d.attach_disk(spec.id, disk)
    plugged = time.monotonic() - began
    await d.attach_disk(spec.id, disk)  # the same disk again: a no-op
    assert await d.list_disks(spec.id) == [disk]
    assert await compute.guest_sees_disk(spec.id, DISK_MIB)
    seen = time.monotonic() - began
    with pytest.raises(InvalidSpec):
        await d.attach_disk(spec.id, replace(disk, read_only=True))
    snapshot = None
    if d.capabilities.live_disk_snapshot:
        began = time.monotonic()
        snapshot = await d.snapshot_disk(spec.id, "snap1")
        snapped = time.monotonic() - began
        assert (snapshot.vm_id, snapshot.disk_id) == (spec.id, "root")
        assert snapshot.active != snapshot.frozen
        assert await compute.active_root_layer(spec.id) == snapshot.active
        status = await d.get_vm(spec.id)
        assert status is not None and status.state == "running"
        print(f"\n[{type(d).__name__}] live snapshot {snapped * 1000:.0f} ms")
    await compute.restart()  # a new agent finds the disk attached
    assert await d.list_disks(spec.id) == [disk]
    await d.stop_vm(spec.id, timeout=30)
    await d.start_vm(spec.id)  # a cold start keeps the disk and the active layer
    assert await compute.guest_sees_disk(spec.id, DISK_MIB)
    if snapshot is not None:
        assert await compute.active_root_layer(spec.id) == snapshot.active
    began = time.monotonic()
    await d.detach_disk(spec.id, disk.id)
    unplugged = time.monotonic() - began
    assert await compute.guest_sees_disk(spec.id, DISK_MIB, present=False)
    await d.detach_disk(spec.id, disk.id)  # detaching a detached disk succeeds
    assert await d.list_disks(spec.id) == []
    assert await compute.guest_boots(spec.id) == 2
    print(
        f"\n[{type(d).__name__}] disk hot-plug {plugged * 1000:.0f} ms "
        f"(seen by the guest after {seen:.2f} s), unplug {unplugged * 1000:.0f} ms"
    )


async def test_disks_attach_to_a_stopped_vm_and_failures_change_nothing(
    compute: ComputeHarness,
) -> None:
    d = compute.driver
    spec = await _stopped(compute)
    first, second = await compute.make_disk(8), await compute.make_disk(8)
    await d.attach_disk(spec.id, first)  # any backend: it is used at the next start
    compute.faults.inject("attach_disk", resource_id=spec.id)
    with pytest.raises(BackendFailure, match="injected"):
        await d.attach_disk(spec.id, second)
    assert await d.list_disks(spec.id) == [first]
    for bad in ("root", "1abc", "a b", ""):
        with pytest.raises(InvalidSpec):
            await d.attach_disk(spec.id, replace(second, id=bad))
    await d.detach_disk(spec.id, first.id)
    assert await d.list_disks(spec.id) == []


async def test_snapshots_of_a_stopped_vm_chain_and_names_are_unique(
    compute: ComputeHarness,
) -> None:
    d = compute.driver
    spec = await _stopped(compute)
    first = await d.snapshot_disk(spec.id, "one")
    second = await d.snapshot_disk(spec.id, "two")
    assert second.frozen == first.active and second.active != first.active
    with pytest.raises(InvalidSpec):
        await d.snapshot_disk(spec.id, "one")
    with pytest.raises(InvalidSpec):
        await d.snapshot_disk(spec.id, "three", disk_id="data")
    compute.faults.inject("snapshot_disk", resource_id=spec.id)
    with pytest.raises(BackendFailure):
        await d.snapshot_disk(spec.id, "three")
    third = await d.snapshot_disk(spec.id, "three")  # the failed one left nothing behind
    assert third.frozen == second.active


async def test_nics_change_on_a_running_vm_with_hot_plug(compute: ComputeHarness) -> None:
    d = compute.driver
    spec = await _running(compute, nics=(_nic(1),))
    more = replace(spec, nics=(_nic(1), _nic(2)), generation=2)
    if not d.capabilities.hot_plug_nic:
        with pytest.raises(InvalidState) as exc:
            await d.ensure_vm(more)
        _assert_invalid_state(exc, "running")
        return
    began = time.monotonic()
    status = await d.ensure_vm(more)
    plugged = time.monotonic() - began
    assert (status.state, status.generation) == ("running", 2)
    assert await compute.guest_sees_nic(spec.id, _nic(2).mac)
    began = time.monotonic()
    status = await d.ensure_vm(replace(spec, generation=3))
    unplugged = time.monotonic() - began
    assert (status.state, status.generation) == ("running", 3)
    assert await compute.guest_sees_nic(spec.id, _nic(2).mac, present=False)
    assert await compute.guest_sees_nic(spec.id, _nic(1).mac)
    assert await compute.guest_boots(spec.id) == 1
    print(
        f"\n[{type(d).__name__}] NIC hot-plug {plugged * 1000:.0f} ms, "
        f"unplug {unplugged * 1000:.0f} ms"
    )


# -- live migration ----------------------------------------------------------------------------


async def test_live_migration_moves_a_running_vm_and_a_failed_one_stays(
    compute: ComputeHarness,
) -> None:
    d = compute.driver
    spec = await _running(compute, nics=(_nic(1),))
    if not d.capabilities.live_migration:
        with pytest.raises(NotSupported):
            await d.migration_manifest(spec.id)
        return
    before = await d.get_vm(spec.id)
    assert before is not None
    assert await compute.guest_sees_nic(spec.id, _nic(1).mac)  # booted and answering
    async with compute.second_host() as other:
        # A target that gave up: the transfer fails, the VM keeps running here.
        target = await other.driver.prepare_incoming(await d.migration_manifest(spec.id))
        await other.driver.abort_incoming(spec.id)
        await other.driver.abort_incoming(spec.id)  # nothing left: a no-op
        with pytest.raises(BackendFailure):
            await d.migrate_vm(spec.id, target, timeout=60)
        assert await d.get_vm(spec.id) == before
        # A failure during the transfer: cancelled, still running here, nothing there.
        compute.faults.inject("migrate", resource_id=spec.id)
        target = await other.driver.prepare_incoming(await d.migration_manifest(spec.id))
        with pytest.raises(BackendFailure, match="injected"):
            await d.migrate_vm(spec.id, target)
        await other.driver.abort_incoming(spec.id)
        assert await d.get_vm(spec.id) == before
        assert await other.driver.list_vms() == []

        # A migration while a client keeps asking the guest.
        answered, lost, done = 0, 0, asyncio.Event()

        async def poll() -> None:
            nonlocal answered, lost
            while not done.is_set():
                if await compute.guest_answers(spec.id) or await other.guest_answers(spec.id):
                    answered += 1
                else:
                    lost += 1
                await asyncio.sleep(0.02)

        poller = asyncio.ensure_future(poll())
        try:
            await asyncio.sleep(0.5)
            seen: list[MigrationProgress] = []
            # The real thing between hosts: the root disk copied while the guest runs.
            mode = "block" if d.capabilities.block_migration else "shared"
            manifest = await d.migration_manifest(spec.id, mode=mode)
            target = await other.driver.prepare_incoming(manifest)
            assert (target.disks_uri is not None) == (mode == "block")
            result = await d.migrate_vm(
                spec.id, target, downtime_limit_ms=100, progress=seen.append
            )
            status = await other.driver.finish_incoming(spec.id)
            await asyncio.sleep(0.5)
        finally:
            done.set()
            await poller
        assert (status.state, status.started_at, status.generation) == (
            "running",
            before.started_at,
            before.generation,
        )
        assert await d.get_vm(spec.id) is None and await _ids(compute) == []
        assert [vm.id for vm in await other.driver.list_vms()] == [spec.id]
        assert seen and seen[-1].status == "completed"
        assert await other.guest_sees_nic(spec.id, _nic(1).mac)  # the same guest, not rebooted
        assert await other.guest_boots(spec.id) == 1
        print(
            f"\n[{type(d).__name__}] migration {result.total_seconds:.2f} s, downtime "
            f"{result.downtime_ms:.0f} ms, {result.transferred_bytes >> 20} MiB; requests: "
            f"{answered} answered, {lost} lost"
        )
        assert lost <= 5, f"{lost} requests lost during the migration"
        await other.driver.stop_vm(spec.id, timeout=30)  # the destination manages it fully


async def test_cold_migration_moves_a_stopped_vm_with_its_disk(
    compute: ComputeHarness, tmp_path: Path
) -> None:
    d = compute.driver
    spec = await _stopped(compute, nics=(_nic(1),))
    if not d.capabilities.cold_migration:
        with pytest.raises(NotSupported):
            await d.export_root_changes(spec.id, tmp_path / "changes")
        return
    with pytest.raises(InvalidState) as exc:  # only a stopped VM's disk holds still
        await d.migration_manifest((await _running(compute)).id, mode="cold")
    _assert_invalid_state(exc, "running")
    before = await d.get_vm(spec.id)
    async with compute.second_host() as other:
        manifest = await d.migration_manifest(spec.id, mode="cold")
        with pytest.raises(InvalidSpec):  # a cold manifest is not received live
            await other.driver.prepare_incoming(manifest)
        changes = tmp_path / "changes"
        await d.export_root_changes(spec.id, changes)
        assert changes.stat().st_size > 0
        other.faults.inject("receive_stopped", resource_id=spec.id)
        copy = tmp_path / "copy"
        shutil.copy(changes, copy)
        with pytest.raises(BackendFailure, match="injected"):
            await other.driver.receive_stopped(manifest, copy)
        assert await other.driver.list_vms() == []  # a failed take-over leaves nothing
        status = await other.driver.receive_stopped(manifest, changes)
        assert not changes.exists()  # consumed
        assert before is not None
        assert (status.state, status.generation) == ("stopped", before.generation)
        with pytest.raises(InvalidSpec):  # already there
            await other.driver.receive_stopped(manifest, copy)
        await d.delete_vm(spec.id)
        assert await d.get_vm(spec.id) is None
        started = await other.driver.start_vm(spec.id)
        assert started.state == "running"
        assert await other.guest_sees_nic(spec.id, _nic(1).mac)  # it boots there
        await other.driver.stop_vm(spec.id, timeout=30)


async def test_root_disk_snapshots_live_and_stopped(compute: ComputeHarness) -> None:
    d = compute.driver
    spec = await _running(compute)
    if not d.capabilities.root_snapshots:
        with pytest.raises(NotSupported):
            await d.snapshot_root(spec.id, "snap-a")
        return
    await d.snapshot_root(spec.id, "snap-a")  # live: the guest goes on
    await d.snapshot_root(spec.id, "snap-a")  # the same id again: nothing new
    await d.snapshot_root(spec.id, "snap-b")
    assert await d.list_root_snapshots(spec.id) == ["snap-a", "snap-b"]
    status = await d.get_vm(spec.id)
    assert status is not None and status.state == "running"
    with pytest.raises(InvalidState) as exc:  # a running guest would see its disk change
        await d.rollback_root(spec.id, "snap-a")
    _assert_invalid_state(exc, "running")
    await d.delete_root_snapshot(spec.id, "snap-b")  # live delete
    await d.delete_root_snapshot(spec.id, "snap-b")  # gone already: fine
    await d.stop_vm(spec.id, timeout=30)
    await d.snapshot_root(spec.id, "snap-c")  # stopped
    with pytest.raises(InvalidSpec):
        await d.rollback_root(spec.id, "snap-nope")
    compute.faults.inject("rollback_root", resource_id=spec.id)
    with pytest.raises(BackendFailure, match="injected"):
        await d.rollback_root(spec.id, "snap-a")
    await d.rollback_root(spec.id, "snap-a")
    assert await d.list_root_snapshots(spec.id) == ["snap-a", "snap-c"]  # all kept
    await d.delete_root_snapshot(spec.id, "snap-c")
    assert await d.list_root_snapshots(spec.id) == ["snap-a"]
    assert (await d.start_vm(spec.id)).state == "running"  # it boots from the rolled back disk
    with pytest.raises(InvalidSpec):
        await d.snapshot_root(spec.id, "bad/name")


# -- console output and counters --------------------------------------------------------------


async def test_a_vm_never_started_has_an_empty_console_and_no_counters(
    compute: ComputeHarness,
) -> None:
    spec = await _stopped(compute)
    assert compute.driver.console_output(spec.id, 10) == ""
    assert compute.driver.console_output(spec.id) == ""
    with pytest.raises(InvalidState) as exc:
        await compute.driver.vm_stats(spec.id)
    _assert_invalid_state(exc, "stopped")


async def test_a_running_vm_has_counters_and_a_console_tail(compute: ComputeHarness) -> None:
    spec = await _running(compute, vcpus=2)
    status = await compute.driver.get_vm(spec.id)
    assert status is not None and status.accel == (await compute.driver.host_info()).accel
    stats = await compute.driver.vm_stats(spec.id)
    assert stats.id == spec.id
    assert (stats.vcpus, stats.memory_mib) == (2, spec.memory_mib)
    assert stats.started_at == status.started_at
    assert stats.cpu_time_ns > 0 and stats.memory_rss_bytes > 0
    assert stats.disks and all(d.read_bytes >= 0 and d.write_ops >= 0 for d in stats.disks)
    assert stats.collected_at.tzinfo is not None
    assert len(compute.driver.console_output(spec.id, 2).splitlines()) <= 2
    assert compute.driver.console_output(spec.id, 0) == ""


# -- delete ----------------------------------------------------------------------------------


@pytest.mark.parametrize("power_state", ["running", "stopped"])
async def test_delete_removes_the_vm(compute: ComputeHarness, power_state: str) -> None:
    spec = compute.spec(power_state=power_state)
    await compute.driver.ensure_vm(spec)
    await compute.driver.delete_vm(spec.id)
    assert await compute.driver.get_vm(spec.id) is None
    assert await _ids(compute) == []


async def test_delete_of_a_missing_vm_succeeds(compute: ComputeHarness) -> None:
    await compute.driver.delete_vm("vm-missing")
    spec = await _running(compute)
    await compute.driver.delete_vm(spec.id)
    await compute.driver.delete_vm(spec.id)


async def test_delete_frees_the_memory(compute: ComputeHarness) -> None:
    host = await compute.driver.host_info()
    big = host.memory_mib // 2 + 1024
    first = await _running(compute, memory_mib=big)
    await compute.driver.delete_vm(first.id)
    await _running(compute, memory_mib=big)


# -- missing VMs -----------------------------------------------------------------------------


async def test_every_operation_on_a_missing_vm_raises_vm_not_found(
    compute: ComputeHarness,
) -> None:
    d, missing = compute.driver, "vm-missing"
    calls: list[Awaitable[object]] = [
        d.start_vm(missing),
        d.stop_vm(missing, timeout=1),
        d.reboot_vm(missing),
        d.resize_vm(missing, 2, 256, live=False),
        d.reinstall_vm(compute.spec(id=missing)),
        d.set_password(missing, DEFAULT_USER, "x-Password-1"),
        d.attach_disk(missing, await compute.make_disk(1)),
        d.detach_disk(missing, "disk-1"),
        d.list_disks(missing),
        d.snapshot_disk(missing, "snap1"),
        d.vm_stats(missing),
    ]
    if d.capabilities.pause:
        calls += [d.pause_vm(missing), d.resume_vm(missing)]
    if d.capabilities.console:
        calls.append(d.console(missing))
    for call in calls:
        with pytest.raises(VmNotFound) as exc:
            await call
        assert exc.value.resource_id == missing
        assert isinstance(exc.value, DriverError)
    with pytest.raises(VmNotFound):
        d.console_output(missing, 10)
