"""GET /v1/operations/{id} is answered by a fast path; it must say exactly what the
routed handler and the ORM say, and refuse exactly what they refuse."""

from __future__ import annotations

from datetime import UTC, datetime

from altostack.api.schemas import OperationOut
from altostack.db.models import Operation
from altostack.services.auth import principal_for
from altostack.services.context import RequestContext
from altostack.services.operations import operation_view
from tests.identity.helpers import make_tenant, make_user


async def _ops(container, tenant_id: str) -> list[str]:
    async with container.db.uow() as uow:
        owner = await uow.users.by_login(tenant_id, "owner")
        tenant = await uow.tenants.get(tenant_id)
        ctx = RequestContext(principal_for(owner, tenant, "token", None, ("*:*",)))
        ops = [
            container.operations.create(
                uow, ctx, "test.none", resource_type="test", resource_id=f"test-{i}"
            )
            for i in range(4)
        ]
        await uow.commit()
    async with container.db.uow() as uow:
        running, done, failed = [await uow.session.get(Operation, ops[i].id) for i in (1, 2, 3)]
        running.state, running.progress, running.started_at = "running", 40, datetime.now(UTC)
        done.state, done.progress, done.result = "succeeded", 100, {"n": 1, "s": "é"}
        done.finished_at = datetime.now(UTC)
        failed.state, failed.error = (
            "failed",
            {"code": "Boom", "message": "it broke", "details": {}},
        )
        await uow.commit()
    return [op.id for op in ops]


async def test_same_bytes_as_the_routed_handler_and_the_orm(client, admin, container):
    tenant, owner = await make_tenant(client, admin, "fast")
    for op_id in await _ops(container, tenant["id"]):
        fast = await client.get(f"/v1/operations/{op_id}", headers=owner)
        routed = await client.get(f"/v1/operations/{op_id}?wait=0", headers=owner)
        assert fast.status_code == routed.status_code == 200
        assert fast.content == routed.content
        assert fast.headers["content-type"] == routed.headers["content-type"]
        assert fast.headers["content-length"] == str(len(fast.content))
        assert len(fast.headers["x-request-id"]) == 32
        async with container.db.uow(write=False) as uow:
            orm = operation_view(await uow.operations.get(op_id))
        assert fast.json() == OperationOut.model_validate(orm).model_dump(mode="json")


async def test_same_refusals(client, admin, container):
    tenant, owner = await make_tenant(client, admin, "fast-a")
    _, other = await make_tenant(client, admin, "fast-b")
    op_id = (await _ops(container, tenant["id"]))[0]
    for headers, status in ((other, 404), ({}, 401), ({"Authorization": "Bearer nope"}, 401)):
        fast = await client.get(f"/v1/operations/{op_id}", headers=headers)
        routed = await client.get(f"/v1/operations/{op_id}?wait=0", headers=headers)
        assert fast.status_code == routed.status_code == status
        assert fast.json()["code"] == routed.json()["code"]
    r = await client.post(
        "/v1/roles", json={"name": "none", "permissions": ["user:read"]}, headers=owner
    )
    assert r.status_code == 201
    _, narrow = await make_user(client, owner, "fast-a", "narrow", "none")
    fast = await client.get(f"/v1/operations/{op_id}", headers=narrow)
    assert fast.status_code == 403 and "operation:read" in fast.json()["detail"]
    missing = await client.get("/v1/operations/op-doesnotexist", headers=admin)
    assert missing.status_code == 404
    metrics = (await client.get("/metrics")).text
    assert 'route="/v1/operations/{id}"' in metrics


async def test_each_poll_sees_the_latest_row(client, admin, container):
    """The fast path keeps the rendering of an unchanged row; a change must show at once."""
    tenant, owner = await make_tenant(client, admin, "fast-poll")
    op_id = (await _ops(container, tenant["id"]))[0]
    seen = []
    for progress in (10, 10, 55, 90):
        async with container.db.uow() as uow:
            op = await uow.session.get(Operation, op_id)
            op.state, op.progress = "running", progress
            await uow.commit()
        r = await client.get(f"/v1/operations/{op_id}", headers=owner)
        assert r.status_code == 200
        seen.append((r.json()["state"], r.json()["progress"]))
    assert seen == [("running", 10), ("running", 10), ("running", 55), ("running", 90)]
