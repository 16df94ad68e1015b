"""A sim cloud with a storage pool: three sim hosts (each with its own sim pool, like
``local``), a ``sim`` pool serving ``standard`` and ``ssd`` to the default cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.agent.agent import Agent
from altostack.bootstrap import Container
from altostack.drivers.storage.base import StorageDriver
from tests.compute.conftest import wait_op
from tests.conftest import fresh_database, make_settings
from tests.identity.helpers import make_tenant


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite only here, to keep the suite quick: the race-sensitive test asks for
    PostgreSQL too (``parametrize("db_url", [...], indirect=True)``)."""
    yield from fresh_database(request, tmp_path)


@pytest.fixture
def settings(db_url, tmp_path):
    return make_settings(db_url, tmp_path, sim_hosts=3, operation_max_attempts=3)


@pytest.fixture
async def pool(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Any]:
    clusters = (await client.get("/v1/clusters", headers=admin)).json()["items"]
    body = {
        "name": "sim-pool",
        "backend": "sim",
        "storage_classes": ["standard", "ssd"],
        "cluster_ids": [clusters[0]["id"]],
        "allocation_ratio": 2.0,
    }
    r = await client.post("/v1/storage-pools", json=body, headers=admin)
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture
async def owner(client, admin, pool) -> dict[str, str]:
    tenant, headers = await make_tenant(client, admin, "storage")
    await client.put(
        f"/v1/quotas/{tenant['id']}",
        json={"vms": -1, "vcpus": -1, "memory_mib": -1},
        headers=admin,
    )
    return headers


async def create_disk(
    client: httpx.AsyncClient, headers: dict[str, str], name: str = "data", **body: Any
) -> dict[str, Any]:
    body = {"name": name, **body}
    if not any(k in body for k in ("image_id", "snapshot_id", "source_disk_id")):
        body.setdefault("size_gib", 10)
    r = await client.post("/v1/disks", json=body, headers=headers)
    assert r.status_code == 202, r.text
    op = await wait_op(client, headers, r.json()["operation"])
    assert op["state"] == "succeeded", op
    return dict((await client.get(f"/v1/disks/{r.json()['disk']['id']}", headers=headers)).json())


async def disk_act(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    disk_id: str,
    verb: str,
    *,
    wait: bool = True,
    **body: Any,
) -> httpx.Response:
    r = await client.post(f"/v1/disks/{disk_id}/actions/{verb}", json=body, headers=headers)
    if wait and r.status_code == 202:
        op = await wait_op(client, headers, r.json()["operation"])
        assert op["state"] == "succeeded", op
    return r


async def snapshot(
    client: httpx.AsyncClient, headers: dict[str, str], disk_id: str, name: str = "s"
) -> dict[str, Any]:
    r = await client.post("/v1/snapshots", json={"disk_id": disk_id, "name": name}, headers=headers)
    assert r.status_code == 202, r.text
    op = await wait_op(client, headers, r.json()["operation"])
    assert op["state"] == "succeeded", op
    return dict(r.json()["snapshot"])


def agent_of(container: Container, host_id: str) -> Agent:
    return next(a for a in container.agents if a.host_id == host_id)


def storage_of(container: Container, host_id: str) -> StorageDriver:
    storage = agent_of(container, host_id).disks.storage
    assert storage is not None
    return storage
