"""Operations end to end through the API and the worker, on SQLite and PostgreSQL.

The ``test.steps`` kind (tests/support/slow_ops.py) stands in for real work: it runs N
steps, saves a checkpoint after each and can be told to fail at a step.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.bootstrap import Container
from altostack.controllers.worker import OperationWorker
from altostack.db.models import Operation
from altostack.domain.ids import new_id
from altostack.settings import Settings
from tests.conftest import login
from tests.support.slow_ops import (
    EXECUTIONS,
    KIND,
    get_op,
    plain_tracebacks,
    plugin_settings,
    serve,
    start_steps,
    wait_op,
    wait_until,
)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return plugin_settings(db_url, tmp_path)


async def add_tenant(
    client: httpx.AsyncClient, admin: dict[str, str], name: str, password: str
) -> dict[str, str]:
    """A second tenant; returns its owner's auth headers."""
    r = await client.post(
        "/v1/tenants",
        json={"name": name, "owner": {"username": "owner", "password": password}},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    return await login(client, "owner", password, tenant=name)


async def progress_at_least(
    client: httpx.AsyncClient, admin: dict[str, str], op_id: str, pct: int
) -> dict[str, Any] | None:
    op = await get_op(client, admin, op_id)
    return op if op["progress"] >= pct and op["state"] == "running" else None


async def test_operation_runs_to_success(client: httpx.AsyncClient, admin: dict[str, str]):
    response = await client.post(
        "/v1/test/steps", json={"steps": 3, "step_seconds": 0.01}, headers=admin
    )
    assert response.status_code == 202, response.text
    op = response.json()["operation"]
    assert op["id"].startswith("op-")
    assert op["kind"] == KIND
    assert op["state"] == "pending"
    assert op["progress"] == 0
    assert response.headers["location"] == f"/v1/operations/{op['id']}"
    assert response.json()["test"]["id"] == op["resource_id"]

    done = await wait_op(client, admin, op["id"])
    assert done["state"] == "succeeded"
    assert done["progress"] == 100
    assert done["error"] is None
    assert done["attempts"] == 1
    assert done["result"] == {"steps": 3, "resumed_from": 0, "attempt": 1, "executed": 3}
    assert done["finished_at"] is not None and done["started_at"] is not None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert EXECUTIONS[op["id"]] == [0, 1, 2]


async def test_wait_returns_when_time_runs_out(client: httpx.AsyncClient, admin: dict[str, str]):
    op = await start_steps(client, admin, steps=4, step_seconds=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await client.get(f"/v1/operations/{op['id']}", params={"wait": 0.3}, headers=admin)
    elapsed = loop.time() - started
    assert r.status_code == 200
    assert r.json()["state"] in ("pending", "running")
    assert 0.25 <= elapsed < 2.0

    r = await client.get(f"/v1/operations/{op['id']}", params={"wait": 61}, headers=admin)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "wait"


async def test_unknown_operation_is_404(client: httpx.AsyncClient, admin: dict[str, str]):
    r = await client.get("/v1/operations/op-doesnotexist000", headers=admin)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "NotFound"
    r = await client.get("/v1/operations/op-doesnotexist000", params={"wait": 1}, headers=admin)
    assert r.status_code == 404


async def test_list_filters_by_resource_state_and_kind(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    good = await start_steps(client, admin, steps=1, step_seconds=0)
    bad = await start_steps(
        client, admin, steps=2, step_seconds=0, fail_at=1, fail_mode="permanent"
    )
    assert (await wait_op(client, admin, good["id"]))["state"] == "succeeded"
    assert (await wait_op(client, admin, bad["id"]))["state"] == "failed"

    async def ids(**params: Any) -> list[str]:
        r = await client.get("/v1/operations", params=params, headers=admin)
        assert r.status_code == 200, r.text
        return [item["id"] for item in r.json()["items"]]

    assert await ids(resource_id=good["resource_id"]) == [good["id"]]
    assert await ids(resource_id=bad["resource_id"]) == [bad["id"]]
    assert await ids(state="failed") == [bad["id"]]
    assert await ids(state="succeeded") == [good["id"]]
    assert await ids(state="succeeded", resource_id=bad["resource_id"]) == []
    assert await ids(kind=KIND) == [bad["id"], good["id"]]
    assert await ids(kind="vm.create") == []
    r = await client.get("/v1/operations", params={"state": "exploded"}, headers=admin)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "state"


async def test_other_tenant_cannot_see_operation(client: httpx.AsyncClient, admin: dict[str, str]):
    op = await start_steps(client, admin, steps=1, step_seconds=0)
    alice = await add_tenant(client, admin, "acme", "Alice-Pass-1")

    r = await client.get(f"/v1/operations/{op['id']}", headers=alice)
    assert r.status_code == 404
    assert r.json()["code"] == "NotFound"
    r = await client.get("/v1/operations", headers=alice)
    assert r.json()["items"] == []
    r = await client.get("/v1/operations", params={"tenant_id": op["tenant_id"]}, headers=alice)
    assert r.json()["items"] == []

    mine = await start_steps(client, alice, steps=1, step_seconds=0)
    assert mine["tenant_id"] != op["tenant_id"]
    r = await client.get("/v1/operations", headers=alice)
    assert [item["id"] for item in r.json()["items"]] == [mine["id"]]
    # The platform administrator sees both, and can narrow to one tenant.
    r = await client.get("/v1/operations", params={"tenant_id": mine["tenant_id"]}, headers=admin)
    assert [item["id"] for item in r.json()["items"]] == [mine["id"]]


async def test_permanent_failure_fails_with_reason(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    op = await start_steps(client, admin, steps=4, step_seconds=0, fail_at=2, fail_mode="permanent")
    done = await wait_op(client, admin, op["id"])
    assert done["state"] == "failed"
    assert done["error"]["code"] == "TestStepFailed"
    assert "step 2 failed for good" in done["error"]["message"]
    assert done["attempts"] == 1
    assert done["progress"] == 50  # two of four steps were done
    assert done["result"] is None
    assert done["finished_at"] is not None


async def test_temporary_failure_is_retried_from_the_checkpoint(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    op = await start_steps(
        client, admin, steps=3, step_seconds=0, fail_at=1, fail_mode="temporary", fail_times=2
    )
    done = await wait_op(client, admin, op["id"])
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 3
    assert done["error"] is None  # the retry reason is cleared once it succeeds
    assert done["result"]["resumed_from"] == 1
    assert EXECUTIONS[op["id"]] == [0, 1, 2]  # step 0 was never run again


async def test_unexpected_handler_error_is_retried(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    with plain_tracebacks():
        op = await start_steps(client, admin, steps=2, step_seconds=0, fail_at=0, fail_mode="crash")
        done = await wait_op(client, admin, op["id"])
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2


@pytest.mark.parametrize("max_attempts", [2])
async def test_max_attempts_fails_with_the_last_reason(
    db_url: str, tmp_path: Path, max_attempts: int
):
    settings = plugin_settings(db_url, tmp_path, operation_max_attempts=max_attempts)
    async with serve(settings) as (_c, client, admin):
        op = await start_steps(
            client, admin, steps=2, step_seconds=0, fail_at=0, fail_mode="temporary",
            fail_times=100, retry_delay=0.01,
        )  # fmt: skip
        done = await wait_op(client, admin, op["id"])
    assert done["state"] == "failed"
    assert done["attempts"] == max_attempts
    assert done["error"]["code"] == "TooManyAttempts"
    assert f"after {max_attempts} attempts" in done["error"]["message"]
    assert "step 0 failed on attempt 2" in done["error"]["message"]


async def test_failed_request_rolls_back_its_operation(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    r = await client.post("/v1/test/conflict", json={"steps": 1, "step_seconds": 0}, headers=admin)
    assert r.status_code == 409
    op_id = r.json()["operation_id"]
    r = await client.get(f"/v1/operations/{op_id}", headers=admin)
    assert r.status_code == 404
    r = await client.get("/v1/operations", params={"kind": KIND}, headers=admin)
    assert r.json()["items"] == []


async def test_crashed_worker_is_taken_over_after_the_lease(
    container: Container, client: httpx.AsyncClient, admin: dict[str, str]
):
    container.settings.operation_lease_seconds = 1.0
    op = await start_steps(client, admin, steps=10, step_seconds=0.1)
    seen = await wait_until(lambda: progress_at_least(client, admin, op["id"], 30))
    await container.worker.crash()
    at_crash = await get_op(client, admin, op["id"])
    assert at_crash["state"] == "running"  # a dead worker leaves its lease behind
    assert at_crash["progress"] >= seen["progress"]

    successor = OperationWorker(
        container.db, container.bus, container.registry, container.settings, container.events
    )
    assert successor.owner != container.worker.owner
    loop = asyncio.get_running_loop()
    crashed_at = loop.time()
    await successor.start()
    try:
        done = await wait_op(client, admin, op["id"], timeout=15)
    finally:
        await successor.stop()
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2
    # Not before the lease ran out.
    assert loop.time() - crashed_at >= container.settings.operation_lease_seconds * 0.8
    resumed = done["result"]["resumed_from"]
    assert resumed >= at_crash["progress"] // 10 >= 3
    runs = EXECUTIONS[op["id"]]
    assert sorted(set(runs)) == list(range(10))
    assert len(runs) <= 11  # at most the one step in flight at the crash ran twice


async def test_lease_takeover_counts_towards_max_attempts(db_url: str, tmp_path: Path):
    settings = plugin_settings(
        db_url, tmp_path, operation_max_attempts=1, operation_lease_seconds=1
    )
    async with serve(settings) as (c, client, admin):
        op = await start_steps(client, admin, steps=10, step_seconds=0.1)
        await wait_until(lambda: progress_at_least(client, admin, op["id"], 10))
        await c.worker.crash()
        successor = OperationWorker(c.db, c.bus, c.registry, c.settings, c.events)
        await successor.start()
        try:
            done = await wait_op(client, admin, op["id"], timeout=15)
        finally:
            await successor.stop()
    assert done["state"] == "failed"
    assert done["error"]["code"] == "TooManyAttempts"
    assert "gave up after 1 attempts" in done["error"]["message"]


async def test_stopping_worker_hands_operation_back(
    container: Container, client: httpx.AsyncClient, admin: dict[str, str]
):
    op = await start_steps(client, admin, steps=10, step_seconds=0.1)
    await wait_until(lambda: progress_at_least(client, admin, op["id"], 20))
    await container.worker.stop(grace=0)
    released = await get_op(client, admin, op["id"])
    assert released["state"] == "pending"
    assert released["attempts"] == 0  # a clean hand-back is not a failed attempt
    async with container.db.uow(write=False) as uow:
        row = await uow.operations.get(op["id"])
        assert row is not None
        assert row.lease_owner is None
        checkpoint = dict(row.checkpoint)
    assert checkpoint["step"] >= 2

    successor = OperationWorker(
        container.db, container.bus, container.registry, container.settings, container.events
    )
    await successor.start()
    try:
        done = await wait_op(client, admin, op["id"], timeout=10)
    finally:
        await successor.stop()
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert done["result"]["resumed_from"] >= checkpoint["step"]


async def test_two_workers_never_run_the_same_operation(
    container: Container, client: httpx.AsyncClient, admin: dict[str, str]
):
    await container.worker.stop()
    ops = [await start_steps(client, admin, steps=2, step_seconds=0.05) for _ in range(6)]
    workers = [
        OperationWorker(
            container.db, container.bus, container.registry, container.settings, container.events
        )
        for _ in range(3)
    ]
    claimed = await asyncio.gather(*(w.poll_once() for w in workers))
    assert sum(claimed) == len(ops)
    try:
        for op in ops:
            assert (await wait_op(client, admin, op["id"]))["state"] == "succeeded"
    finally:
        for w in workers:
            await w.stop()
    for op in ops:
        assert EXECUTIONS[op["id"]] == [0, 1]
    async with container.db.uow(write=False) as uow:
        for op in ops:
            row = await uow.operations.get(op["id"])
            assert row is not None and row.attempts == 1


async def test_unknown_kind_is_left_for_a_worker_that_knows_it(
    container: Container, client: httpx.AsyncClient, admin: dict[str, str]
):
    async with container.db.uow() as uow:
        uow.operations.add(
            Operation(
                id=new_id("op"),
                kind="test.nobody-knows",
                tenant_id="t",
                state="pending",
                progress=0,
                input={},
                checkpoint={},
                attempts=0,
            )
        )
        await uow.commit()
    assert await container.worker.poll_once() == 0
    r = await client.get("/v1/operations", params={"kind": "test.nobody-knows"}, headers=admin)
    [item] = r.json()["items"]
    assert item["state"] == "pending" and item["attempts"] == 0


async def test_notification_during_a_poll_is_not_lost(db_url: str, tmp_path: Path):
    """An operation announced while the worker is finishing a poll must start at once,
    not after the next poll interval (30 s here)."""
    settings = plugin_settings(db_url, tmp_path, worker_poll_seconds=30)
    async with serve(settings) as (c, client, admin):
        await c.worker.stop()
        worker = OperationWorker(c.db, c.bus, c.registry, c.settings, c.events)
        original = worker.poll_once
        created: list[dict[str, Any]] = []

        async def racing_poll() -> int:
            started = await original()
            if not created:
                created.append(await start_steps(client, admin, steps=1, step_seconds=0))
                await asyncio.sleep(0.05)  # the bus delivers the "created" notification
            return started

        worker.poll_once = racing_poll  # type: ignore[method-assign]
        await worker.start()
        try:
            op = await wait_until(lambda: asyncio.sleep(0, created), timeout=5)
            done = await wait_op(client, admin, op[0]["id"], timeout=5)
        finally:
            await worker.stop()
    assert done["state"] == "succeeded"


async def test_freed_capacity_starts_the_next_operation_at_once(db_url: str, tmp_path: Path):
    """With every slot busy the next operation waits for a slot, not for the next poll."""
    settings = plugin_settings(db_url, tmp_path, worker_poll_seconds=30, worker_concurrency=1)
    async with serve(settings) as (_c, client, admin):
        first = await start_steps(client, admin, steps=2, step_seconds=0.1)
        second = await start_steps(client, admin, steps=1, step_seconds=0)
        assert (await wait_op(client, admin, first["id"], timeout=5))["state"] == "succeeded"
        assert (await wait_op(client, admin, second["id"], timeout=5))["state"] == "succeeded"


async def test_a_long_step_keeps_its_lease(db_url: str, tmp_path: Path):
    """A handler busy for longer than the lease keeps it (renewed in the background), so
    a second worker does not run the operation twice."""
    settings = plugin_settings(db_url, tmp_path, operation_lease_seconds=1.2)
    async with serve(settings) as (c, client, admin):
        rival = OperationWorker(c.db, c.bus, c.registry, c.settings, c.events)
        await rival.start()
        try:
            op = await start_steps(client, admin, steps=1, step_seconds=3.0)
            done = await wait_op(client, admin, op["id"], timeout=15)
        finally:
            await rival.stop()
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert EXECUTIONS[op["id"]] == [0]


async def test_a_worker_that_lost_its_lease_stops_without_writing(db_url: str, tmp_path: Path):
    """A worker that cannot renew (hung, partitioned) loses the operation to another; its
    next write is refused (LeaseLost) and it stops instead of racing the new owner."""
    settings = plugin_settings(db_url, tmp_path, operation_lease_seconds=0.5)
    async with serve(settings) as (c, client, admin):
        stuck = c.worker

        async def no_renewal(*_args: Any) -> None:
            await asyncio.Event().wait()

        stuck._renew = no_renewal  # type: ignore[method-assign]
        op = await start_steps(client, admin, steps=3, step_seconds=0.8)
        await wait_until(lambda: progress_or_running(client, admin, op["id"]))
        rival = OperationWorker(c.db, c.bus, c.registry, c.settings, c.events)
        await rival.start()
        try:
            done = await wait_op(client, admin, op["id"], timeout=15)
            await wait_until(lambda: asyncio.sleep(0, not stuck._running), timeout=5)
        finally:
            await rival.stop()
    assert done["state"] == "succeeded"
    assert done["attempts"] == 2
    # The stuck worker finished its step in flight, found the lease gone and stopped; the
    # new owner redid that step (nothing was checkpointed) and the rest, once each.
    assert EXECUTIONS[op["id"]] == [0, 0, 1, 2]
    assert done["result"]["resumed_from"] == 0


async def progress_or_running(client: httpx.AsyncClient, admin: dict[str, str], op_id: str) -> bool:
    return (await get_op(client, admin, op_id))["state"] == "running"
