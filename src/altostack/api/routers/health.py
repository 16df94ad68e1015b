"""Liveness, readiness and metrics: no authentication, cheap enough to poll."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from altostack.api.deps import C
from altostack.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, name="health.live")
async def healthz() -> Health:
    """The process is alive and serving HTTP."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    name="health.ready",
    responses={503: {"model": Health}},
)
async def readyz(c: C) -> Response:
    """Ready to serve: the database and the bus answer."""
    checks = await c.ready()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )


@router.get(
    "/metrics",
    name="health.metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(c: C) -> Response:
    """Prometheus text: request counts and latency per route, operations by state."""
    async with c.db.uow(write=False) as uow:
        c.metrics.set_operations(await uow.operations.count_by_state())
    return Response(c.metrics.render(), media_type="text/plain; version=0.0.4")
