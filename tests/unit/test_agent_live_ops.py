"""Agent commands for disks, snapshots and live migration, over the bus, on sim hosts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from altostack.agent.agent import Agent
from altostack.agent.live_ops import live_handlers
from altostack.bus.memory import MemoryBus
from altostack.domain.agent_protocol import LIVE_ACTIONS, agent_subject, command
from altostack.drivers.compute.base import VmSpec
from altostack.drivers.compute.sim import SimComputeDriver, SimHostConfig, SimHypervisor
from altostack.drivers.timings import SimTimings


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[MemoryBus, SimComputeDriver, SimComputeDriver]]:
    bus = MemoryBus()
    drivers = [
        SimComputeDriver(SimHypervisor(SimHostConfig(hostname=h)), timings=SimTimings.instant())
        for h in ("h1", "h2")
    ]
    agents = [Agent(h, bus, d) for h, d in zip(("h1", "h2"), drivers, strict=True)]
    for agent in agents:
        await agent.start()
    try:
        yield bus, drivers[0], drivers[1]
    finally:
        for agent in agents:
            await agent.stop()
        await bus.close()


async def _ask(bus: MemoryBus, host: str, action: str, **fields: Any) -> dict[str, Any]:
    return await bus.request(agent_subject(host), command(action, **fields), timeout=5)


def test_every_live_action_has_a_handler() -> None:
    assert set(live_handlers(SimComputeDriver())) == LIVE_ACTIONS


async def test_disks_and_snapshots_over_the_bus(
    hosts: tuple[MemoryBus, SimComputeDriver, SimComputeDriver],
) -> None:
    bus, h1, _ = hosts
    await h1.ensure_vm(VmSpec("vm-1", "a", 1, 1, 128, 1, "img-1"))
    disk = {"id": "disk-1", "path": "/volumes/disk-1.qcow2"}
    answer = await _ask(bus, "h1", "attach_disk", vm_id="vm-1", disk=disk)
    assert answer["ok"] and answer["disks"] == [
        {**disk, "format": "qcow2", "read_only": False, "protocol": ()}
    ]
    answer = await _ask(bus, "h1", "snapshot_disk", vm_id="vm-1", snapshot_id="s1")
    assert answer["ok"] and answer["snapshot"]["active"] == "root-s1.qcow2"
    answer = await _ask(bus, "h1", "snapshot_disk", vm_id="vm-1", snapshot_id="s1")
    assert not answer["ok"] and answer["error"]["code"] == "InvalidSpec"
    answer = await _ask(bus, "h1", "detach_disk", vm_id="vm-1", disk_id="disk-1")
    assert answer["ok"] and answer["disks"] == []


async def test_a_migration_between_two_agents(
    hosts: tuple[MemoryBus, SimComputeDriver, SimComputeDriver],
) -> None:
    bus, h1, h2 = hosts
    await h1.ensure_vm(VmSpec("vm-1", "a", 1, 1, 128, 1, "img-1"))
    manifest = (await _ask(bus, "h1", "migration_manifest", vm_id="vm-1"))["manifest"]
    target = (await _ask(bus, "h2", "prepare_incoming", vm_id="vm-1", manifest=manifest))["target"]
    result = await _ask(bus, "h1", "migrate_vm", vm_id="vm-1", target=target)
    assert result["ok"] and result["result"]["vm_id"] == "vm-1"
    finished = await _ask(bus, "h2", "finish_incoming", vm_id="vm-1")
    assert finished["status"]["state"] == "running"
    assert await h1.get_vm("vm-1") is None
    assert [vm.id for vm in await h2.list_vms()] == ["vm-1"]
    gone = await _ask(bus, "h2", "abort_incoming", vm_id="vm-1")  # nothing incoming: no-op
    assert gone["ok"] and [vm.id for vm in await h2.list_vms()] == ["vm-1"]
