"""Generated from /openapi.json: tenant isolation and the permission matrix.

Every route that takes a resource id is called by another tenant with every method and
must answer 404; every collection listed by another tenant must not contain the first
tenant's ids. A read-only sub-account reads everything and changes nothing; a custom role
can do exactly what its permissions say, route by route (``x-permission``).
"""

from __future__ import annotations

from typing import Any

import pytest

from altostack.domain.permissions import PLATFORM_ONLY
from altostack.services.auth import principal_for
from altostack.services.context import RequestContext
from tests.compute.conftest import create_vm, wait_op
from tests.conftest import make_settings
from tests.identity.helpers import make_tenant, make_user
from tests.identity.matrix import (
    MUTATING,
    PLATFORM_COLLECTIONS,
    SELF_SERVICE,
    body_for,
    fill,
    routes,
)


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(db_url, tmp_path, sim_hosts=1)


async def _platform_ids(client, admin) -> dict[str, str]:
    regions = (await client.get("/v1/regions", headers=admin)).json()["items"]
    clusters = (await client.get("/v1/clusters", headers=admin)).json()["items"]
    hosts = (await client.get("/v1/hosts", headers=admin)).json()["items"]
    types = (await client.get("/v1/instance-types", headers=admin)).json()["items"]
    pools = (await client.get("/v1/ip-pools", headers=admin)).json()["items"]
    return {
        "ip-pools": pools[0]["id"],
        "regions": regions[0]["id"],
        "clusters": clusters[0]["id"],
        "hosts": hosts[0]["id"],
        "instance-types": types[0]["id"],
    }


async def _compute_ids(client, owner) -> dict[str, str]:
    image = (await client.post("/v1/images", json={"name": "private"}, headers=owner)).json()
    r = await client.put(
        f"/v1/images/{image['id']}/file",
        content=b"\x01" * 1024,
        headers={**owner, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    group = (
        await client.post(
            "/v1/placement-groups", json={"name": "g", "policy": "anti-affinity"}, headers=owner
        )
    ).json()
    vpc = (
        await client.post("/v1/vpcs", json={"name": "v", "cidr": "10.0.0.0/16"}, headers=owner)
    ).json()
    await wait_op(client, owner, vpc["operation"])
    body = {"vpc_id": vpc["vpc"]["id"], "name": "s", "cidr": "10.0.1.0/24"}
    subnet = (await client.post("/v1/subnets", json=body, headers=owner)).json()
    await wait_op(client, owner, subnet["operation"])
    sg_body = {"vpc_id": vpc["vpc"]["id"], "name": "sg"}
    sg = (await client.post("/v1/security-groups", json=sg_body, headers=owner)).json()
    vm = await create_vm(client, owner, "a-vm", placement_group_id=group["id"])
    nic = (
        await client.post("/v1/nics", json={"subnet_id": subnet["subnet"]["id"]}, headers=owner)
    ).json()
    eip = (await client.post("/v1/eips", json={}, headers=owner)).json()
    nat_body = {"vpc_id": vpc["vpc"]["id"], "name": "gw"}
    nat = (await client.post("/v1/nat-gateways", json=nat_body, headers=owner)).json()
    binned = await create_vm(client, owner, "a-binned")
    r = await client.delete(f"/v1/vms/{binned['id']}", headers=owner)
    await wait_op(client, owner, r.json()["operation"])
    return {
        "images": image["id"],
        "placement-groups": group["id"],
        "vpcs": vpc["vpc"]["id"],
        "subnets": subnet["subnet"]["id"],
        "security-groups": sg["id"],
        "nics": nic["id"],
        "eips": eip["eip"]["id"],
        "nat-gateways": nat["nat_gateway"]["id"],
        "vms": vm["id"],
        "recycle-bin": binned["id"],
    }


async def _storage_ids(client, admin, owner) -> dict[str, str]:
    clusters = (await client.get("/v1/clusters", headers=admin)).json()["items"]
    body = {"name": "p", "backend": "sim", "storage_classes": ["standard"],
            "cluster_ids": [clusters[0]["id"]]}  # fmt: skip
    pool = (await client.post("/v1/storage-pools", json=body, headers=admin)).json()
    r = await client.post("/v1/disks", json={"name": "d", "size_gib": 1}, headers=owner)
    await wait_op(client, owner, r.json()["operation"])
    disk_id = r.json()["disk"]["id"]
    r = await client.post("/v1/snapshots", json={"disk_id": disk_id, "name": "s"}, headers=owner)
    await wait_op(client, owner, r.json()["operation"])
    return {"storage-pools": pool["id"], "disks": disk_id, "snapshots": r.json()["snapshot"]["id"]}


@pytest.fixture
async def world(client, admin, container) -> dict[str, Any]:
    """Tenant A with one resource of every kind; tenant B's owner."""
    tenant_a, owner_a = await make_tenant(client, admin, "tenant-a")
    _, owner_b = await make_tenant(client, admin, "tenant-b")
    user, _ = await make_user(client, owner_a, "tenant-a", "member", "operator")
    role = (
        await client.post(
            "/v1/roles", json={"name": "viewer", "permissions": ["user:read"]}, headers=owner_a
        )
    ).json()
    key = (await client.post("/v1/api-keys", json={}, headers=owner_a)).json()
    async with container.db.uow() as uow:
        owner_row = await uow.users.by_login(tenant_a["id"], "owner")
        tenant_row = await uow.tenants.get(tenant_a["id"])
        ctx = RequestContext(principal_for(owner_row, tenant_row, "token", None, ("*:*",)))
        op = container.operations.create(uow, ctx, "test.noop", resource_type="test")
        await uow.commit()
    ids = {
        **await _platform_ids(client, admin),
        **await _compute_ids(client, owner_a),
        **await _storage_ids(client, admin, owner_a),
        "tenants": tenant_a["id"],
        "users": user["id"],
        "roles": role["id"],
        "api-keys": key["id"],
        "quotas": tenant_a["id"],
        "operations": op.id,
    }
    spec = (await client.get("/openapi.json")).json()
    return {"ids": ids, "spec": spec, "owner_a": owner_a, "owner_b": owner_b, "admin": admin}


async def test_other_tenant_gets_404_on_every_route_with_an_id(client, world):
    spec, ids = world["spec"], world["ids"]
    checked = 0
    for method, path, op in routes(spec):
        if "{" not in path:
            continue
        url = fill(path, ids)
        r = await client.request(method, url, json=body_for(spec, op), headers=world["owner_b"])
        if path.split("/")[2] in PLATFORM_COLLECTIONS:
            if method in MUTATING:  # the platform's own: forbidden, never done
                assert r.status_code == 403, f"{method} {url}: {r.status_code} {r.text}"
            continue
        assert r.status_code == 404, f"{method} {url}: {r.status_code} {r.text}"
        checked += 1
    assert checked >= 15
    # Nothing of A's was touched by B's attempts.
    for collection, ident in ids.items():
        if collection not in ("quotas", "recycle-bin", *PLATFORM_COLLECTIONS):
            r = await client.get(f"/v1/{collection}/{ident}", headers=world["owner_a"])
            assert r.status_code == 200, f"{collection} {ident} was changed: {r.text}"


async def test_other_tenant_never_lists_foreign_items(client, world):
    spec, ids = world["spec"], world["ids"]
    for method, path, _ in routes(spec):
        if method != "GET" or "{" in path:
            continue
        r = await client.get(path, headers=world["owner_b"])
        assert r.status_code in (200, 403), f"{path}: {r.status_code} {r.text}"
        for collection, ident in ids.items():
            if collection not in PLATFORM_COLLECTIONS:
                assert ident not in r.text, f"GET {path} shows tenant A's {ident} to tenant B"
        # and A does see its own things where it can list them
        r = await client.get(path, headers=world["owner_a"])
        assert r.status_code in (200, 403)


async def test_readonly_reads_everything_and_changes_nothing(client, world):
    spec, ids = world["spec"], world["ids"]
    _, reader = await make_user(client, world["owner_a"], "tenant-a", "reader", "readonly")
    for method, path, op in routes(spec):
        if (method, path) in SELF_SERVICE:
            continue
        url = fill(path, ids)
        r = await client.request(method, url, json=body_for(spec, op), headers=reader)
        permission = op.get("x-permission", "")
        resource = permission.split(":")[0]
        platform_only = resource in PLATFORM_ONLY and (resource != "tenant" or "{" not in path)
        if method in MUTATING:
            assert r.status_code == 403, f"{method} {url}: {r.status_code} {r.text}"
        elif platform_only:
            assert r.status_code == 403, f"{method} {url}: {r.status_code}"
        else:
            assert r.status_code == 200, f"{method} {url}: {r.status_code} {r.text}"


async def test_custom_role_can_do_exactly_its_permissions(client, world):
    spec, ids = world["spec"], world["ids"]
    granted = {"vm:read", "vm:start"}  # the example role
    r = await client.post(
        "/v1/roles",
        json={"name": "narrow", "permissions": sorted(granted)},
        headers=world["owner_a"],
    )
    assert r.status_code == 201, r.text
    _, narrow = await make_user(client, world["owner_a"], "tenant-a", "narrow-user", "narrow")
    seen = set()
    for method, path, op in routes(spec):
        permission = op.get("x-permission")
        if permission is None:
            continue
        url = fill(path, ids)
        r = await client.request(method, url, json=body_for(spec, op), headers=narrow)
        if permission in granted:
            assert r.status_code < 400 or r.status_code in (404, 409), (
                f"{method} {url} needs {permission}, granted: {r.status_code} {r.text}"
            )
            seen.add(permission)
        else:
            assert r.status_code == 403, f"{method} {url}: {r.status_code} {r.text}"
            assert permission in r.text or "platform administrators" in r.text
    assert seen == granted
