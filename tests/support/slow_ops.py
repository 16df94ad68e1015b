"""Test-only plugin: an operation kind that takes its time, and a few routes to drive it.

Load it with ``Settings(plugins=["tests.support.slow_ops"])`` or ``ALTO_PLUGINS``; the API
calls :func:`altostack_plugin` while it builds the app, which registers the ``test.steps``
kind on the container's registry and mounts the routes below. Nothing here ships.

``test.steps`` runs ``steps`` steps of ``step_seconds`` each, saving progress and a
checkpoint after every step and resuming from the checkpoint, the way every real handler
must. It can be told to fail at a step:

- ``permanent``: the operation fails at once (``PermanentError``);
- ``temporary``: the first ``fail_times`` attempts fail with ``TemporaryError``, then it
  succeeds (``fail_times`` larger than the attempt budget exhausts it);
- ``crash``: like ``temporary`` but with an unexpected exception (the worker retries it).

Each step execution is also appended to :data:`EXECUTIONS` (in-process tests read it) and
the result says where the final attempt resumed (subprocess tests read that).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx
import structlog
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from altostack.api.deps import C, Ctx
from altostack.api.schemas import OperationOut
from altostack.controllers.registry import OperationContext
from altostack.domain.errors import Conflict
from altostack.domain.ids import new_id
from altostack.domain.operations import PermanentError, TemporaryError
from altostack.services.operations import operation_view

if TYPE_CHECKING:
    from altostack.bootstrap import Container
    from altostack.settings import Settings

PLUGIN = "tests.support.slow_ops"
KIND = "test.steps"
T = TypeVar("T")

#: operation id -> every step index executed for it, in order, across attempts and workers
EXECUTIONS: dict[str, list[int]] = {}


class StepsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1, le=200)
    step_seconds: float = Field(ge=0, le=5)
    fail_at: int | None = Field(None, ge=0, description="step index at which to fail")
    fail_mode: Literal["permanent", "temporary", "crash"] | None = None
    fail_times: int = Field(1, ge=1, le=100, description="temporary: attempts that fail")
    retry_delay: float = Field(0.05, ge=0, le=5, description="temporary: the retry delay")


async def run_steps(ctx: OperationContext) -> dict[str, Any]:
    """The ``test.steps`` handler: resumable, progress after every step."""
    spec = StepsRequest.model_validate(ctx.input)
    resumed_from = int(ctx.checkpoint.get("step", 0))
    log = EXECUTIONS.setdefault(ctx.id, [])
    for step in range(resumed_from, spec.steps):
        if step == spec.fail_at:
            _maybe_fail(spec, step, ctx.attempt)
        await asyncio.sleep(spec.step_seconds)
        log.append(step)
        done = step + 1
        await ctx.progress(done * 100 // spec.steps, checkpoint={"step": done})
    return {
        "steps": spec.steps,
        "resumed_from": resumed_from,
        "attempt": ctx.attempt,
        "executed": spec.steps - resumed_from,
    }


def _maybe_fail(spec: StepsRequest, step: int, attempt: int) -> None:
    if spec.fail_mode == "permanent":
        raise PermanentError(f"step {step} failed for good", code="TestStepFailed")
    if spec.fail_mode == "temporary" and attempt <= spec.fail_times:
        raise TemporaryError(f"step {step} failed on attempt {attempt}", spec.retry_delay)
    if spec.fail_mode == "crash" and attempt <= spec.fail_times:
        raise RuntimeError(f"step {step} crashed")


router = APIRouter(prefix="/v1/test", tags=["test"])


@router.post("/steps", status_code=202, name="test.steps.create")
async def create_steps(body: StepsRequest, ctx: Ctx, c: C) -> JSONResponse:
    """Start a ``test.steps`` operation inside the request's unit of work."""
    container: Container = c
    async with container.db.uow() as uow:
        op = container.operations.create(
            uow,
            ctx,
            KIND,
            resource_type="test",
            resource_id=new_id("test"),
            input=body.model_dump(),
        )
        await uow.flush()  # fills the defaults (created_at, ...) the view shows
        view = OperationOut.model_validate(operation_view(op)).model_dump(mode="json")
    return JSONResponse(
        {"operation": view, "test": {"id": op.resource_id, "state": "pending"}},
        status_code=202,
        headers={"Location": f"/v1/operations/{op.id}"},
    )


class NoteRequest(BaseModel):
    note: str = Field(max_length=100)


@router.post("/notes", status_code=202, name="test.notes.create", include_in_schema=False)
async def create_note(body: NoteRequest, ctx: Ctx, c: C) -> dict[str, Any]:
    """Create an operation and leave the INSERT to the request's final commit (no flush
    here), as a service that only adds rows to the unit of work does."""
    container: Container = c
    async with container.db.uow() as uow:
        op = container.operations.create(uow, ctx, KIND, input={"steps": 1, "note": body.note})
    return {"operation": {"id": op.id}}


@router.post("/conflict", status_code=202, name="test.conflict", include_in_schema=False)
async def create_then_conflict(body: StepsRequest, ctx: Ctx, c: C) -> JSONResponse:
    """Create an operation, then refuse: the operation must roll back with the request."""
    container: Container = c
    async with container.db.uow() as uow:
        op = container.operations.create(uow, ctx, KIND, input=body.model_dump())
        await uow.flush()
    raise Conflict(f"test conflict after creating {op.id}", extra={"operation_id": op.id})


@router.get("/crash", name="test.crash.get", include_in_schema=False)
async def crash_get(ctx: Ctx) -> None:
    raise RuntimeError("SECRET-CRASH-DETAIL in a read")


@router.post("/crash", name="test.crash.post", include_in_schema=False)
async def crash_post(ctx: Ctx) -> None:
    raise RuntimeError("SECRET-CRASH-DETAIL in a mutation")


#: requests now inside GET /v1/test/sleep (a test can wait until one is surely in flight)
SLEEPING: list[float] = []


@router.get("/sleep", name="test.sleep", include_in_schema=False)
async def sleep(ctx: Ctx, seconds: float = 1.0) -> dict[str, Any]:
    """A slow read: stays in flight for ``seconds`` (at most 10)."""
    SLEEPING.append(seconds)
    try:
        await asyncio.sleep(max(0.0, min(seconds, 10.0)))
    finally:
        SLEEPING.remove(seconds)
    return {"slept": seconds}


@router.get("/sleeping", name="test.sleeping", include_in_schema=False)
async def sleeping(ctx: Ctx) -> dict[str, Any]:
    return {"in_flight": len(SLEEPING)}


def altostack_plugin(app: FastAPI, container: Container) -> None:
    """The hook ``api.app.create_app`` calls for every plugin module."""
    container.registry.register(KIND, run_steps)
    app.include_router(router)


# --- helpers for the tests that drive the plugin over HTTP -------------------------------

FINISHED = ("succeeded", "failed")


async def start_steps(
    client: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> dict[str, Any]:
    """POST /v1/test/steps and return the operation it started."""
    response = await client.post("/v1/test/steps", json=body, headers=headers)
    assert response.status_code == 202, response.text
    operation: dict[str, Any] = response.json()["operation"]
    return operation


async def get_op(client: httpx.AsyncClient, headers: dict[str, str], op_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/operations/{op_id}", headers=headers)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def wait_op(
    client: httpx.AsyncClient, headers: dict[str, str], op_id: str, timeout: float = 15.0
) -> dict[str, Any]:
    """Long-poll the operation until it ends; fail the test if it does not within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        wait = max(0.1, min(remaining, 5.0))
        response = await client.get(
            f"/v1/operations/{op_id}", params={"wait": wait}, headers=headers
        )
        assert response.status_code == 200, response.text
        op: dict[str, Any] = response.json()
        if op["state"] in FINISHED:
            return op
        if time.monotonic() >= deadline:
            raise AssertionError(f"operation {op_id} did not finish in {timeout}s: {op}")


async def wait_until(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0, every: float = 0.05
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def serve(
    settings: Settings,
) -> AsyncIterator[tuple[Container, httpx.AsyncClient, dict[str, str]]]:
    """A started container, an ASGI client and admin headers, for tests that need their
    own settings (the ``client`` fixture's are fixed)."""
    from altostack.api.app import create_app
    from altostack.bootstrap import build
    from tests.conftest import ADMIN_PASSWORD, login

    container = build(settings, migrate=False)
    await container.start()
    try:
        app = create_app(container, manage_lifecycle=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://alto.test") as client:
            yield container, client, await login(client, "admin", ADMIN_PASSWORD)
    finally:
        await container.stop()


@contextlib.contextmanager
def plain_tracebacks() -> Iterator[None]:
    """Log exceptions as plain text while inside: structlog's default console renderer
    draws rich tracebacks with every local variable, which takes seconds per error."""
    saved = structlog.get_config()
    processors = [
        structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        if isinstance(p, structlog.dev.ConsoleRenderer)
        else p
        for p in saved["processors"]
    ]
    structlog.configure(processors=processors)
    try:
        yield
    finally:
        structlog.configure(**saved)


def plugin_settings(db_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """The test settings with this plugin loaded and no simulated hosts (the platform-core
    tests need no hypervisor, and seeding one costs time on every start)."""
    from tests.conftest import make_settings

    values: dict[str, Any] = {"plugins": [PLUGIN], "sim_hosts": 0, **overrides}
    return make_settings(db_url, tmp_path, **values)
