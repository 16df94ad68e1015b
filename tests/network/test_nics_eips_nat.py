"""NICs, elastic IPs, NAT gateways and the push to the hosts, on a two-host sim cloud.

The sim data plane of each host (``container.sim_networks``) is what the agents
programmed: after each API action it must show the expected specs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.compute.conftest import create_vm, wait_op
from tests.conftest import make_settings
from tests.identity.helpers import make_tenant


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(db_url, tmp_path, sim_hosts=2, operation_max_attempts=3)


@pytest.fixture
async def owner(client, admin) -> dict[str, str]:
    tenant, headers = await make_tenant(client, admin, "netc")
    limits = {"vms": -1, "vcpus": -1, "memory_mib": -1}
    await client.put(f"/v1/quotas/{tenant['id']}", json=limits, headers=admin)
    return headers


async def _ok(client: httpx.AsyncClient, headers: dict[str, str], r: httpx.Response) -> Any:
    assert r.status_code == 202, r.text
    op = await wait_op(client, headers, r.json()["operation"])
    assert op["state"] == "succeeded", op
    return r.json()


async def _network(client, headers, cidr="10.0.1.0/24") -> tuple[dict, dict]:
    vpc = (await _ok(client, headers, await client.post(
        "/v1/vpcs", json={"name": "main", "cidr": "10.0.0.0/16"}, headers=headers
    )))["vpc"]  # fmt: skip
    subnet = (await _ok(client, headers, await client.post(
        "/v1/subnets", json={"vpc_id": vpc["id"], "name": "web", "cidr": cidr}, headers=headers
    )))["subnet"]  # fmt: skip
    return vpc, subnet


def _planes(container) -> dict[str, Any]:
    """host id → that host's sim data plane."""
    by_name = {a.compute.hypervisor.config.hostname: a.host_id for a in container.agents}
    return {by_name[name]: plane for name, plane in container.sim_networks.items()}


async def _underlay(container) -> dict[str, str]:
    from sqlalchemy import select

    from altostack.db.models_compute import Host

    async with container.db.uow(write=False) as uow:
        return {h.id: h.underlay_ip for h in (await uow.session.scalars(select(Host))).all()}


async def test_vms_nics_and_the_pushed_data_plane(client, owner, container) -> None:
    vpc, subnet = await _network(client, owner)
    planes = _planes(container)
    underlay = await _underlay(container)
    first = await create_vm(client, owner, "a", subnet_id=subnet["id"])
    assert first["subnet_id"] == subnet["id"] and first["private_ip"] == "10.0.1.2"
    second = await create_vm(client, owner, "b", subnet_id=subnet["id"])
    assert first["host_id"] != second["host_id"]  # spread over the two hosts
    nics = (await client.get(f"/v1/nics?vpc_id={vpc['id']}", headers=owner)).json()["items"]
    assert sorted(n["private_ip"] for n in nics) == ["10.0.1.2", "10.0.1.3"]
    assert all(n["primary"] and n["state"] == "bound" and n["device_index"] == 0 for n in nics)
    groups = (await client.get(f"/v1/security-groups?vpc_id={vpc['id']}", headers=owner)).json()
    default = groups["items"][0]["id"]
    assert all(n["security_group_ids"] == [default] for n in nics)
    # Each host: the VPC's network with the other host as its VXLAN peer, its VM's port, the
    # default group with the remote-group rule resolved to both VMs' addresses.
    for vm in (first, second):
        plane = planes[vm["host_id"]]
        net = plane.networks[vpc["id"]]
        other = next(h for h in planes if h != vm["host_id"])
        assert net.peers == (underlay[other],)
        (port,) = plane.ports.values()
        assert (port.ip, port.security_group_ids) == (vm["private_ip"], (default,))
        ingress = next(r for r in plane.groups[default].rules if r.direction == "ingress")
        assert ingress.remote_ips == ("10.0.1.2", "10.0.1.3")
    # The router sits on the network host (the oldest host) with DHCP and metadata.
    routers = [p.routers[vpc["id"]].spec for p in planes.values() if vpc["id"] in p.routers]
    (router,) = routers
    assert [s.cidr for s in router.subnets] == ["10.0.1.0/24"]
    assert {h.ip for h in router.dhcp_hosts} == {"10.0.1.2", "10.0.1.3"}
    meta = {i.instance_id: i for i in router.instances}
    assert meta[first["id"]].hostname == "a" and meta[first["id"]].ip == "10.0.1.2"
    assert router.external is not None and router.external.cidr == "203.0.113.0/24"
    assert router.default_snat
    await _converged(client, owner, container, vpc["id"])
    shown = (await client.get(f"/v1/vpcs/{vpc['id']}", headers=owner)).json()
    assert shown["observed_generation"] == shown["generation"] > 1
    # VM delete: the primary NIC and its address go, the port leaves the host.
    r = await client.delete(f"/v1/vms/{second['id']}", headers=owner)
    await _ok(client, owner, r)
    await _converged(client, owner, container, vpc["id"])
    gone = planes[second["host_id"]]
    # No port left there; the network stays only where the router needs it.
    assert gone.ports == {}
    assert (vpc["id"] in gone.networks) == (vpc["id"] in gone.routers)
    left = (await client.get(f"/v1/nics?vpc_id={vpc['id']}", headers=owner)).json()["items"]
    assert [n["private_ip"] for n in left] == ["10.0.1.2"]
    router = next(p.routers[vpc["id"]].spec for p in planes.values() if vpc["id"] in p.routers)
    assert {h.ip for h in router.dhcp_hosts} == {"10.0.1.2"}


async def _converged(client, headers, container, vpc_id: str) -> None:
    """Wait until every push of the VPC has been acknowledged."""
    from altostack.db.models_network import Vpc

    for _ in range(100):
        async with container.db.uow(write=False) as uow:
            vpc = await uow.session.get(Vpc, vpc_id)
            if vpc is None or vpc.observed_generation >= vpc.generation:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the VPC's push never converged")


def _guest_nics(container, vm_id: str) -> list[str]:
    """The NICs the VM's hypervisor gave it (what the guest sees)."""
    host = next(h for h in container.sim_hypervisors.values() if h.find(vm_id))
    return [n.id for n in host.find(vm_id).spec.nics]


async def test_elastic_nics_attach_move_and_the_limit(client, owner, container) -> None:
    vpc, subnet = await _network(client, owner)
    planes = _planes(container)
    a = await create_vm(client, owner, "a", subnet_id=subnet["id"])
    b = await create_vm(client, owner, "b", subnet_id=subnet["id"])
    r = await client.post(
        "/v1/nics", json={"subnet_id": subnet["id"], "private_ip": "10.0.1.50"}, headers=owner
    )
    assert r.status_code == 201, r.text
    nic = r.json()
    assert (nic["state"], nic["vm_id"], nic["private_ip"]) == ("unbound", None, "10.0.1.50")
    dup = await client.post(
        "/v1/nics", json={"subnet_id": subnet["id"], "private_ip": "10.0.1.50"}, headers=owner
    )
    assert dup.status_code == 409
    r = await client.post(
        "/v1/security-groups", json={"vpc_id": vpc["id"], "name": "x"}, headers=owner
    )
    group = r.json()["id"]
    body = {"subnet_id": subnet["id"], "security_group_ids": [group]}
    grouped = (await client.post("/v1/nics", json=body, headers=owner)).json()
    assert grouped["security_group_ids"] == [group]
    r = await client.delete(f"/v1/security-groups/{group}", headers=owner)
    assert r.status_code == 409 and grouped["id"] in r.json()["detail"]
    # Changing a bound NIC's groups reaches its host.
    primary = (await client.get(f"/v1/nics?vm_id={a['id']}", headers=owner)).json()["items"][0]
    body = {"security_group_ids": [group]}
    r = await client.patch(f"/v1/nics/{primary['id']}", json=body, headers=owner)
    assert r.status_code == 200 and r.json()["security_group_ids"] == [group]
    await _converged(client, owner, container, vpc["id"])
    assert planes[a["host_id"]].ports[primary["id"]].security_group_ids == (group,)
    assert group in planes[a["host_id"]].groups
    r = await client.patch(
        f"/v1/nics/{primary['id']}", json={"security_group_ids": []}, headers=owner
    )
    assert r.json()["security_group_ids"] != [group]
    await _converged(client, owner, container, vpc["id"])
    assert (await client.delete(f"/v1/nics/{grouped['id']}", headers=owner)).status_code == 204
    assert (await client.delete(f"/v1/security-groups/{group}", headers=owner)).status_code == 204
    r = await client.post(
        f"/v1/nics/{nic['id']}/actions/attach", json={"vm_id": a["id"]}, headers=owner
    )
    attached = (await _ok(client, owner, r))["nic"]
    assert (attached["vm_id"], attached["device_index"]) == (a["id"], 1)
    assert nic["id"] in planes[a["host_id"]].ports
    assert nic["id"] in _guest_nics(container, a["id"])  # hot-plugged into the running VM
    r = await client.post(
        f"/v1/nics/{nic['id']}/actions/attach", json={"vm_id": b["id"]}, headers=owner
    )
    assert r.status_code == 409 and r.json()["current_state"] == "bound"
    assert (await client.delete(f"/v1/nics/{nic['id']}", headers=owner)).status_code == 409
    # Move to b: detach + attach keeps MAC and address; the port follows to b's host.
    await _ok(
        client, owner, await client.post(f"/v1/nics/{nic['id']}/actions/detach", headers=owner)
    )
    r = await client.post(f"/v1/nics/{nic['id']}/actions/detach", headers=owner)
    assert r.status_code == 409 and r.json()["current_state"] == "unbound"
    r = await client.post(
        f"/v1/nics/{nic['id']}/actions/attach", json={"vm_id": b["id"]}, headers=owner
    )
    moved = (await _ok(client, owner, r))["nic"]
    assert (moved["mac"], moved["private_ip"]) == (nic["mac"], nic["private_ip"])
    assert nic["id"] not in _guest_nics(container, a["id"])  # unplugged from a
    assert nic["id"] in _guest_nics(container, b["id"])
    assert nic["id"] in planes[b["host_id"]].ports and nic["id"] not in planes[a["host_id"]].ports
    # Primary NICs stay with their VM.
    primary = (await client.get(f"/v1/nics?vm_id={a['id']}", headers=owner)).json()["items"][0]
    r = await client.post(f"/v1/nics/{primary['id']}/actions/detach", headers=owner)
    assert r.status_code == 409 and "primary" in r.json()["detail"]
    # At most six NICs per VM: a has one, five more fit, the sixth extra is refused.
    extra = []
    for _ in range(6):
        r = await client.post("/v1/nics", json={"subnet_id": subnet["id"]}, headers=owner)
        assert r.status_code == 201, r.text
        extra.append(r.json()["id"])
    results = await asyncio.gather(*(
        client.post(f"/v1/nics/{n}/actions/attach", json={"vm_id": a["id"]}, headers=owner)
        for n in extra
    ))  # fmt: skip
    codes = sorted(r.status_code for r in results)
    assert codes == [202] * 5 + [409], [r.text for r in results]
    refused = next(r for r in results if r.status_code == 409)
    assert "6 NICs" in refused.json()["detail"]
    # Deleting a VM detaches (keeps) its elastic NICs.
    await _ok(client, owner, await client.delete(f"/v1/vms/{b['id']}", headers=owner))
    kept = (await client.get(f"/v1/nics/{nic['id']}", headers=owner)).json()
    assert (kept["state"], kept["vm_id"], kept["private_ip"]) == ("unbound", None, "10.0.1.50")
    assert (await client.delete(f"/v1/nics/{nic['id']}", headers=owner)).status_code == 204


async def test_eips_nat_gateways_and_rules(client, owner, container) -> None:
    vpc, subnet = await _network(client, owner)
    planes = _planes(container)
    vm = await create_vm(client, owner, "a", subnet_id=subnet["id"])

    def router() -> Any:
        return next(p.routers[vpc["id"]].spec for p in planes.values() if vpc["id"] in p.routers)

    eip = (await _ok(client, owner, await client.post(
        "/v1/eips", json={"bandwidth_mbps": 20}, headers=owner
    )))["eip"]  # fmt: skip
    assert eip["state"] == "unbound" and eip["address"].startswith("203.0.113.")
    r = await client.post(
        f"/v1/eips/{eip['id']}/actions/bind", json={"vm_id": vm["id"]}, headers=owner
    )
    await _ok(client, owner, r)
    (binding,) = router().eips
    assert (binding.public_ip, binding.private_ip, binding.bandwidth_mbps) == (
        eip["address"], vm["private_ip"], 20,
    )  # fmt: skip
    assert (
        next(i for i in router().instances if i.instance_id == vm["id"]).public_ip == eip["address"]
    )
    r = await client.post(
        f"/v1/eips/{eip['id']}/actions/bind", json={"vm_id": vm["id"]}, headers=owner
    )
    assert r.status_code == 409 and r.json()["current_state"] == "bound"
    assert (await client.delete(f"/v1/eips/{eip['id']}", headers=owner)).status_code == 409
    await _ok(
        client, owner, await client.post(f"/v1/eips/{eip['id']}/actions/unbind", headers=owner)
    )
    assert router().eips == ()
    r = await client.post(f"/v1/eips/{eip['id']}/actions/unbind", headers=owner)
    assert r.status_code == 409 and r.json()["current_state"] == "unbound"
    # A NAT gateway through the EIP: SNAT for the subnet, a port mapping to the VM.
    body = {"vpc_id": vpc["id"], "name": "gw", "eip_id": eip["id"]}
    nat = (
        await _ok(client, owner, await client.post("/v1/nat-gateways", json=body, headers=owner))
    )["nat_gateway"]
    assert nat["public_ip"] == eip["address"]
    r = await client.post(
        f"/v1/nat-gateways/{nat['id']}/snat-rules", json={"subnet_id": subnet["id"]}, headers=owner
    )
    assert r.status_code == 201, r.text
    again = await client.post(
        f"/v1/nat-gateways/{nat['id']}/snat-rules", json={"subnet_id": subnet["id"]}, headers=owner
    )
    assert again.status_code == 409
    dnat = {"protocol": "tcp", "public_port": 8080, "vm_id": vm["id"], "private_port": 80}
    r = await client.post(f"/v1/nat-gateways/{nat['id']}/dnat-rules", json=dnat, headers=owner)
    assert r.status_code == 201, r.text
    r2 = await client.post(
        f"/v1/nat-gateways/{nat['id']}/dnat-rules", json={**dnat, "private_port": 81}, headers=owner
    )
    assert r2.status_code == 409 and "8080" in r2.json()["detail"]
    got = (await client.get(f"/v1/nat-gateways/{nat['id']}", headers=owner)).json()
    assert got["state"] == "available" and len(got["snat_rules"]) == len(got["dnat_rules"]) == 1
    await _converged(client, owner, container, vpc["id"])
    spec = router()
    assert [(s.source_cidr, s.public_ip) for s in spec.snat] == [("10.0.1.0/24", eip["address"])]
    assert [(d.public_port, d.private_ip, d.private_port) for d in spec.dnat] == [
        (8080, vm["private_ip"], 80)
    ]
    r = await client.post(
        f"/v1/nat-gateways/{nat['id']}/snat-rules", json={"vm_id": vm["id"]}, headers=owner
    )
    assert r.status_code == 201, r.text
    await _converged(client, owner, container, vpc["id"])
    assert [s.source_cidr for s in router().snat] == [f"{vm['private_ip']}/32", "10.0.1.0/24"]
    # Deleting the VM takes it out of the whitelist and the port mappings.
    await _ok(client, owner, await client.delete(f"/v1/vms/{vm['id']}", headers=owner))
    got = (await client.get(f"/v1/nat-gateways/{nat['id']}", headers=owner)).json()
    assert got["dnat_rules"] == [] and [x["subnet_id"] for x in got["snat_rules"]] == [subnet["id"]]
    await _converged(client, owner, container, vpc["id"])
    assert router().dnat == () and len(router().snat) == 1
    rule_id = got["snat_rules"][0]["id"]
    r = await client.delete(f"/v1/nat-gateways/{nat['id']}/rules/{rule_id}", headers=owner)
    assert r.status_code == 204
    await _ok(client, owner, await client.delete(f"/v1/nat-gateways/{nat['id']}", headers=owner))
    assert router().snat == () and router().dnat == ()
    assert (await client.get(f"/v1/eips/{eip['id']}", headers=owner)).json()["state"] == "unbound"


async def test_rule_changes_reach_running_vms_within_a_second(client, owner, container) -> None:
    vpc, subnet = await _network(client, owner)
    planes = _planes(container)
    vm = await create_vm(client, owner, "a", subnet_id=subnet["id"])
    groups = (await client.get(f"/v1/security-groups?vpc_id={vpc['id']}", headers=owner)).json()
    default = groups["items"][0]["id"]
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 22, "remote_cidr": "0.0.0.0/0"}
    start = time.monotonic()
    r = await client.post(f"/v1/security-groups/{default}/rules", json=rule, headers=owner)
    assert r.status_code == 201
    while not any(x.port_min == 22 for x in planes[vm["host_id"]].groups[default].rules):
        assert time.monotonic() - start < 1.0, "the rule did not reach the host within 1 s"
        await asyncio.sleep(0.01)


async def test_quotas_isolation_and_address_races(client, owner, admin, container) -> None:
    _vpc, subnet = await _network(client, owner, cidr="10.0.2.0/28")
    # IPAM under concurrency through the API: VMs of one /28 never share an address.
    created = await asyncio.gather(*(
        create_vm(client, owner, f"r{i}", subnet_id=subnet["id"]) for i in range(6)
    ))  # fmt: skip
    ips = [vm["private_ip"] for vm in created]
    assert len(set(ips)) == 6 and all(ip.startswith("10.0.2.") for ip in ips)
    # Quotas: elastic NICs.
    me = (await client.get("/v1/quotas", headers=owner)).json()
    await client.put(f"/v1/quotas/{me['tenant_id']}", json={"nics": 1}, headers=admin)
    assert (
        await client.post("/v1/nics", json={"subnet_id": subnet["id"]}, headers=owner)
    ).status_code == 201
    r = await client.post("/v1/nics", json={"subnet_id": subnet["id"]}, headers=owner)
    assert r.status_code == 429 and "nics" in r.text
    # Isolation: another tenant sees nothing and cannot name our resources.
    _, stranger = await make_tenant(client, admin, "stranger")
    nic_id = (await client.get("/v1/nics", headers=owner)).json()["items"][0]["id"]
    assert (await client.get(f"/v1/nics/{nic_id}", headers=stranger)).status_code == 404
    r = await client.post("/v1/nics", json={"subnet_id": subnet["id"]}, headers=stranger)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "subnet_id"
    assert (await client.get("/v1/nics", headers=stranger)).json()["items"] == []
    # Elastic IPs: a tiny pool, two tenants racing; no address is ever handed out twice.
    r = await client.post(
        "/v1/ip-pools", json={"name": "tiny", "cidr": "198.51.100.0/29"}, headers=admin
    )
    assert r.status_code == 201, r.text
    pool = r.json()
    assert (pool["range_start"], pool["range_end"]) == ("198.51.100.2", "198.51.100.6")
    assert (
        await client.post("/v1/ip-pools", json={"name": "x", "cidr": "10.0.0.0/8"}, headers=owner)
    ).status_code == 403
    answers = await asyncio.gather(*(
        client.post("/v1/eips", json={"pool_id": pool["id"]}, headers=h)
        for h in (owner, stranger) for _ in range(4)
    ))  # fmt: skip
    won = [a.json()["eip"]["address"] for a in answers if a.status_code == 202]
    assert len(won) == len(set(won)) == 5
    assert sorted({a.status_code for a in answers}) == [202, 409]
    assert (await client.delete(f"/v1/ip-pools/{pool['id']}", headers=admin)).status_code == 409
    theirs = next(
        a.json()["eip"]["id"]
        for a in answers
        if a.status_code == 202 and a.request.headers["authorization"] == stranger["Authorization"]
    )
    r = await client.post(
        f"/v1/eips/{theirs}/actions/bind", json={"vm_id": created[0]["id"]}, headers=stranger
    )
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "vm_id"
