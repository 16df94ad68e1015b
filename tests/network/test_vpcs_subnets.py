"""VPCs, subnets and IPAM through the API and the service, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import select

from altostack.db.models_network import SecurityGroup, Subnet
from altostack.domain.errors import Conflict
from tests.compute.conftest import wait_op
from tests.identity.helpers import make_tenant


@pytest.fixture
async def owner(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    _, headers = await make_tenant(client, admin, "net")
    return headers


async def _vpc(client, headers, name="main", cidr="10.0.0.0/16") -> dict:
    r = await client.post("/v1/vpcs", json={"name": name, "cidr": cidr}, headers=headers)
    assert r.status_code == 202, r.text
    assert (await wait_op(client, headers, r.json()["operation"]))["state"] == "succeeded"
    return (await client.get(f"/v1/vpcs/{r.json()['vpc']['id']}", headers=headers)).json()


async def _subnet(client, headers, vpc_id, name="web", cidr="10.0.1.0/24", **extra) -> dict:
    body = {"vpc_id": vpc_id, "name": name, "cidr": cidr, **extra}
    r = await client.post("/v1/subnets", json=body, headers=headers)
    assert r.status_code == 202, r.text
    assert (await wait_op(client, headers, r.json()["operation"]))["state"] == "succeeded"
    return (await client.get(f"/v1/subnets/{r.json()['subnet']['id']}", headers=headers)).json()


async def test_vpc_life_cycle_with_default_group_and_overlapping_cidrs(
    client, owner, container
) -> None:
    vpc = await _vpc(client, owner)
    assert (vpc["state"], vpc["cidr"]) == ("available", "10.0.0.0/16")
    other = await _vpc(client, owner, name="second", cidr="10.0.0.0/16")  # overlap is fine
    async with container.db.uow(write=False) as uow:
        groups = (
            await uow.session.scalars(
                select(SecurityGroup).where(SecurityGroup.vpc_id == vpc["id"])
            )
        ).all()
    assert [(g.name, g.is_default) for g in groups] == [("default", True)]
    listed = (await client.get("/v1/vpcs", headers=owner)).json()["items"]
    assert {v["id"] for v in listed} == {vpc["id"], other["id"]}
    dup = await client.post("/v1/vpcs", json={"name": "main", "cidr": "10.9.0.0/16"}, headers=owner)
    assert dup.status_code == 409 and "main" in dup.json()["detail"]
    r = await client.delete(f"/v1/vpcs/{other['id']}", headers=owner)
    assert r.status_code == 202
    await wait_op(client, owner, r.json()["operation"])
    assert (await client.get(f"/v1/vpcs/{other['id']}", headers=owner)).status_code == 404


@pytest.mark.parametrize(
    ("cidr", "word"),
    [("10.0.0.0/30", "prefix"), ("10.0.0.1/16", "CIDR"), ("fd00::/48", "IPv4"), ("x", "CIDR")],
)
async def test_bad_vpc_cidrs_name_the_field(client, owner, cidr, word) -> None:
    r = await client.post("/v1/vpcs", json={"name": "bad", "cidr": cidr}, headers=owner)
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "cidr" and word in r.text


async def test_subnets_stay_inside_their_vpc_and_apart(client, owner) -> None:
    vpc = await _vpc(client, owner)
    web = await _subnet(client, owner, vpc["id"], dns_servers=["10.0.0.2"])
    assert web["gateway_ip"] == "10.0.1.1"
    assert (web["total_ips"], web["available_ips"]) == (253, 253)
    for cidr, status in (("10.1.0.0/24", 400), ("10.0.1.128/25", 409), ("10.0.0.0/8", 400)):
        body = {"vpc_id": vpc["id"], "name": f"n{status}{cidr[-2:]}", "cidr": cidr}
        r = await client.post("/v1/subnets", json=body, headers=owner)
        assert r.status_code == status, (cidr, r.text)
    bad_gw = {"vpc_id": vpc["id"], "name": "gw", "cidr": "10.0.2.0/24", "gateway_ip": "10.0.2.255"}
    r = await client.post("/v1/subnets", json=bad_gw, headers=owner)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "gateway_ip"
    r = await client.delete(f"/v1/vpcs/{vpc['id']}", headers=owner)
    assert r.status_code == 409 and web["id"] in r.json()["detail"]


async def test_other_tenants_see_nothing(client, admin, owner) -> None:
    vpc = await _vpc(client, owner)
    _, stranger = await make_tenant(client, admin, "stranger")
    assert (await client.get(f"/v1/vpcs/{vpc['id']}", headers=stranger)).status_code == 404
    body = {"vpc_id": vpc["id"], "name": "x", "cidr": "10.0.5.0/24"}
    assert (await client.post("/v1/subnets", json=body, headers=stranger)).status_code == 404
    assert (await client.get("/v1/vpcs", headers=stranger)).json()["items"] == []


async def test_concurrent_allocations_never_share_an_address(client, owner, container) -> None:
    """61 free addresses in a /26 (.1 is the gateway); 70 owners race for them."""
    vpc = await _vpc(client, owner)
    subnet = await _subnet(client, owner, vpc["id"], cidr="10.0.3.0/26")

    async def one(n: int) -> str | None:
        async with container.db.uow() as uow:
            row = await uow.session.get(Subnet, subnet["id"])
            assert row is not None
            try:
                ip = await container.network.allocate_ip(uow, row, "nic", f"nic-{n}")
            except Conflict:
                return None
            await uow.commit()
            return ip

    got = await asyncio.gather(*(one(n) for n in range(70)))
    addresses = [ip for ip in got if ip is not None]
    assert len(addresses) == len(set(addresses)) == 61  # .2-.62 (.1 is the gateway)
    assert "10.0.3.1" not in addresses and "10.0.3.63" not in addresses
    after = (await client.get(f"/v1/subnets/{subnet['id']}", headers=owner)).json()
    assert after["available_ips"] == 0
    r = await client.delete(f"/v1/subnets/{subnet['id']}", headers=owner)
    assert r.status_code == 409 and "in use" in r.json()["detail"]
    async with container.db.uow() as uow:
        row = await uow.session.get(Subnet, subnet["id"])
        assert row is not None
        with pytest.raises(Conflict, match="already in use"):
            await container.network.allocate_ip(uow, row, "nic", "nic-x", requested="10.0.3.5")
    async with container.db.uow() as uow:
        for n in range(70):
            await container.network.release_ips(uow, f"nic-{n}")
        await uow.commit()
    r = await client.delete(f"/v1/subnets/{subnet['id']}", headers=owner)
    assert r.status_code == 202


async def test_security_groups_and_rules(client, owner) -> None:
    vpc = await _vpc(client, owner)
    groups = (await client.get(f"/v1/security-groups?vpc_id={vpc['id']}", headers=owner)).json()
    (default,) = groups["items"]
    assert default["is_default"] and {r["direction"] for r in default["rules"]} == {
        "ingress",
        "egress",
    }
    assert default["rules"][0]["remote_group_id"] in (None, default["id"])
    r = await client.post(
        "/v1/security-groups", json={"vpc_id": vpc["id"], "name": "web"}, headers=owner
    )
    assert r.status_code == 201, r.text
    web = r.json()
    assert web["rules"] == []
    rule = {"direction": "ingress", "protocol": "tcp", "port_min": 80, "remote_cidr": "0.0.0.0/0"}
    r = await client.post(f"/v1/security-groups/{web['id']}/rules", json=rule, headers=owner)
    assert r.status_code == 201, r.text
    assert (r.json()["port_min"], r.json()["port_max"]) == (80, 80)
    for bad, field in (
        ({"direction": "ingress", "protocol": "icmp", "port_min": 1}, "port_min"),
        ({"direction": "ingress", "protocol": "tcp", "port_min": 90, "port_max": 80}, "port_max"),
        ({"direction": "egress", "remote_cidr": "nope"}, "remote_cidr"),
        ({"direction": "egress", "remote_group_id": web["id"], "remote_cidr": "10.0.0.0/8"}, ""),
    ):
        r = await client.post(f"/v1/security-groups/{web['id']}/rules", json=bad, headers=owner)
        assert r.status_code == 400, (bad, r.text)
        assert field in r.json()["errors"][0]["field"]
    ref = {"direction": "ingress", "remote_group_id": web["id"]}
    r = await client.post(f"/v1/security-groups/{default['id']}/rules", json=ref, headers=owner)
    assert r.status_code == 201
    assert (
        await client.delete(f"/v1/security-groups/{web['id']}", headers=owner)
    ).status_code == 409
    r = await client.delete(
        f"/v1/security-groups/{default['id']}/rules/{r.json()['id']}", headers=owner
    )
    assert r.status_code == 204
    assert (
        await client.delete(f"/v1/security-groups/{web['id']}", headers=owner)
    ).status_code == 204
    r = await client.delete(f"/v1/security-groups/{default['id']}", headers=owner)
    assert r.status_code == 409 and "default" in r.json()["detail"]
