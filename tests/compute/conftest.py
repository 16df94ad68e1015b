"""A sim cloud for compute tests: three sim hosts, instant timings, a tenant owner."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.identity.helpers import make_tenant


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(db_url, tmp_path, sim_hosts=3, operation_max_attempts=3)


@pytest.fixture
async def owner(client, admin) -> dict[str, str]:
    tenant, headers = await make_tenant(client, admin, "compute")
    await client.put(
        f"/v1/quotas/{tenant['id']}",
        json={"vms": -1, "vcpus": -1, "memory_mib": -1},
        headers=admin,
    )
    return headers


async def image_id(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    r = await client.get("/v1/images?name=cirros-sim", headers=headers)
    return str(r.json()["items"][0]["id"])


async def wait_op(
    client: httpx.AsyncClient, headers: dict[str, str], op: dict[str, Any]
) -> dict[str, Any]:
    """Wait for an operation (bounded) and return it."""
    for _ in range(40):
        r = await client.get(f"/v1/operations/{op['id']}?wait=5", headers=headers)
        body = r.json()
        if body["state"] in ("succeeded", "failed"):
            return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {op['id']} did not finish: {body}")


async def create_vm(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    name: str = "web",
    wait: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    body = {
        "name": name,
        "instance_type": "c1.small",
        "image_id": await image_id(client, headers),
        **extra,
    }
    r = await client.post("/v1/vms", json=body, headers=headers)
    assert r.status_code == 202, r.text
    vm = r.json()["vm"]
    if wait:
        op = await wait_op(client, headers, r.json()["operation"])
        assert op["state"] == "succeeded", op
        vm = (await client.get(f"/v1/vms/{vm['id']}", headers=headers)).json()
    return dict(vm)


async def act(
    client: httpx.AsyncClient, headers: dict[str, str], vm_id: str, verb: str, **body: Any
) -> httpx.Response:
    return await client.post(f"/v1/vms/{vm_id}/actions/{verb}", json=body or None, headers=headers)
