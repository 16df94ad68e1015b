"""The push of VPCs to the hosts: the agent's handlers alone, a host joining later, and
a host that fails (the operation says so)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import select

from altostack import allinone
from altostack.agent.agent import Agent
from altostack.agent.network_ops import NetworkOps
from altostack.db.models_compute import Cluster
from altostack.drivers.compute.sim import SimComputeDriver
from altostack.drivers.compute.sim_hypervisor import SimHostConfig, SimHypervisor
from altostack.drivers.errors import BackendFailure
from altostack.drivers.network.base import (
    NetworkSpec,
    PortSpec,
    RouterSpec,
    RuleSpec,
    SecurityGroupSpec,
)
from altostack.drivers.network.sim import SimNetworkDriver
from altostack.drivers.storage.sim import SimStorageDriver
from altostack.drivers.timings import SimTimings
from tests.compute.conftest import create_vm, wait_op
from tests.conftest import make_settings
from tests.network.test_nics_eips_nat import _network, _ok, _planes
from tests.network.test_nics_eips_nat import owner as owner


@pytest.fixture
def settings(db_url, tmp_path):
    # Two attempts: the failing push below gives up after one retry.
    return make_settings(db_url, tmp_path, sim_hosts=2, operation_max_attempts=2)


def _apply(generation: int, ports: list[PortSpec], router: bool = True) -> dict:
    net = NetworkSpec(id="vpc-1", vni=5000, cidr="10.0.0.0/16", peers=("192.0.2.2",))
    group = SecurityGroupSpec("sg-1", (RuleSpec("ingress", remote_ips=("10.0.1.2",)),))
    return {
        "vpc_id": "vpc-1",
        "generation": generation,
        "network": dataclasses.asdict(net),
        "ports": [dataclasses.asdict(p) for p in ports],
        "groups": [dataclasses.asdict(group)],
        "router": dataclasses.asdict(RouterSpec("vpc-1", "vpc-1")) if router else None,
    }


async def test_agent_applies_prunes_and_ignores_stale_pushes() -> None:
    driver = SimNetworkDriver(timings=SimTimings.instant())
    ops = NetworkOps(driver)
    a = PortSpec("nic-a", "vpc-1", "02:00:00:00:00:0a", "10.0.1.2", ("sg-1",))
    b = PortSpec("nic-b", "vpc-1", "02:00:00:00:00:0b", "10.0.1.3", ("sg-1",))
    assert (await ops.apply(_apply(3, [a, b])))["applied"]
    plane = driver.dataplane
    assert set(plane.ports) == {"nic-a", "nic-b"} and "vpc-1" in plane.routers
    assert plane.groups["sg-1"].rules[0].remote_ips == ("10.0.1.2",)
    assert plane.networks["vpc-1"].peers == ("192.0.2.2",)
    # A late retry of an older push changes nothing.
    assert not (await ops.apply(_apply(2, [], router=False)))["applied"]
    assert set(plane.ports) == {"nic-a", "nic-b"}
    # A newer push converges: b leaves, the router goes, then everything goes.
    await ops.apply(_apply(4, [a], router=False))
    assert set(plane.ports) == {"nic-a"} and plane.routers == {}
    await ops.apply(_apply(4, [a], router=False))  # idempotent
    await ops.remove({"vpc_id": "vpc-1", "generation": 5})
    assert plane.networks == plane.ports == plane.groups == {}
    state = await ops.state({})
    assert state["generations"] == {"vpc-1": 5}


class _HangsOnce(SimNetworkDriver):
    """A data plane whose first ``ensure_network`` never returns (a stuck tool)."""

    hung = False

    async def ensure_network(self, spec: NetworkSpec):  # type: ignore[no-untyped-def]
        if not self.hung:
            self.hung = True
            await asyncio.Event().wait()
        return await super().ensure_network(spec)


async def test_a_hanging_apply_fails_visibly_and_frees_the_host() -> None:
    ops = NetworkOps(_HangsOnce(timings=SimTimings.instant()), timeout=0.2)
    with pytest.raises(BackendFailure, match=r"did not finish in 0\.2 s"):
        await ops.apply(_apply(1, []))
    assert (await asyncio.wait_for(ops.apply(_apply(2, [])), 1))["applied"]


async def _late_host(container, name: str, underlay: str):
    """A host that registers after the cloud started (a second rack, an added server)."""
    async with container.db.uow(write=False) as uow:
        cluster = (await uow.session.scalars(select(Cluster))).first()
    token = await allinone._join_token(container, cluster)
    timings = SimTimings.instant()
    compute = SimComputeDriver(
        SimHypervisor(SimHostConfig(hostname=name)),
        timings=timings,
        storage=SimStorageDriver(timings=timings),
    )
    network = SimNetworkDriver(timings=timings)
    agent = await allinone._start_agent(
        container, token, compute, network=network, underlay_ip=underlay
    )
    container.agents.append(agent)
    container.sim_networks[name] = network.dataplane
    container.placement.invalidate()
    return agent, network


async def test_a_host_joining_later_becomes_every_hosts_peer(
    client, owner, admin, container
) -> None:
    vpc, subnet = await _network(client, owner)
    vpc_id = vpc["id"]
    first = await create_vm(client, owner, "a", subnet_id=subnet["id"])
    old_hosts = [a.host_id for a in container.agents]
    late, network = await _late_host(container, "sim-late", "10.255.9.9")
    for host_id in old_hosts:  # only the new host has room now
        r = await client.post(f"/v1/hosts/{host_id}/actions/disable", headers=admin)
        assert r.status_code == 200, r.text
    second = await create_vm(client, owner, "b", subnet_id=subnet["id"])
    assert second["host_id"] == late.host_id
    planes = _planes(container)
    assert "10.255.9.9" in planes[first["host_id"]].networks[vpc_id].peers
    assert first["private_ip"] in {
        ip
        for r in planes[late.host_id].groups.values()
        for x in r.rules
        for ip in x.remote_ips or ()
    }
    # A host failing to apply: the push operation retries, then fails naming the host.
    network.faults.inject("ensure_port", times=None)
    r = await client.post("/v1/nics", json={"subnet_id": subnet["id"]}, headers=owner)
    nic = r.json()
    r = await client.post(
        f"/v1/nics/{nic['id']}/actions/attach", json={"vm_id": second["id"]}, headers=owner
    )
    assert r.status_code == 202
    op = await wait_op(client, owner, r.json()["operation"])
    assert op["state"] == "failed" and late.host_id in op["error"]["message"]
    network.faults.clear()
    await _ok(client, owner, await client.post(
        f"/v1/nics/{nic['id']}/actions/detach", headers=owner
    ))  # fmt: skip
    assert nic["id"] not in network.dataplane.ports
    # The host reboots: a new agent over an empty data plane gets its VPCs pushed again.
    before = network.dataplane.networks[vpc_id].peers
    await late.stop()
    container.agents.remove(late)
    fresh = SimNetworkDriver(timings=SimTimings.instant())
    again = Agent(late.host_id, container.bus, late.compute, heartbeat_interval=0.2, network=fresh)
    await again.start()
    container.agents.append(again)
    for _ in range(100):
        if fresh.dataplane.ports:
            break
        await asyncio.sleep(0.05)
    assert [p.ip for p in fresh.dataplane.ports.values()] == [second["private_ip"]]
    assert fresh.dataplane.networks[vpc_id].peers == before
