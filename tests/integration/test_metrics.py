"""GET /metrics: Prometheus text with per-route-template request counts and operations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.settings import Settings
from tests.support.slow_ops import plugin_settings, start_steps, wait_op


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return plugin_settings(db_url, tmp_path)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when it is absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[: line.rindex("}") + 1]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_count_requests_by_route_template_and_operations_by_state(
    client: httpx.AsyncClient, admin: dict[str, str]
):
    ok = await start_steps(client, admin, steps=1, step_seconds=0)
    bad = await start_steps(
        client, admin, steps=1, step_seconds=0, fail_at=0, fail_mode="permanent"
    )
    await wait_op(client, admin, ok["id"])
    await wait_op(client, admin, bad["id"])
    for _ in range(3):
        assert (await client.get(f"/v1/operations/{ok['id']}", headers=admin)).status_code == 200
    assert (await client.get("/v1/operations/op-missing", headers=admin)).status_code == 404
    assert (await client.get("/v1/no-such-thing-123", headers=admin)).status_code == 404

    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE alto_http_requests_total counter" in text
    route = "/v1/operations/{id}"
    # wait_op's long polls count too, so at least the three plain reads.
    got = sample(text, "alto_http_requests_total", method="GET", route=route, status="200")
    assert got is not None and got >= 3
    assert sample(text, "alto_http_requests_total", method="GET", route=route, status="404") == 1
    assert sample(text, "alto_http_requests_total", route="/v1/test/steps", status="202") == 2
    assert (
        sample(text, "alto_http_request_duration_seconds_count", method="GET", route=route)
        is not None
    )
    # Raw paths never become label values (unbounded cardinality): unknown routes pool.
    assert ok["id"] not in text
    assert "no-such-thing" not in text
    assert sample(text, "alto_http_requests_total", route="unmatched", status="404") == 1

    assert sample(text, "alto_operations", state="succeeded") == 1
    assert sample(text, "alto_operations", state="failed") == 1
    assert sample(text, "alto_operations", state="pending") == 0
    assert sample(text, "alto_operations", state="running") == 0


async def test_metrics_and_health_need_no_auth(client: httpx.AsyncClient):
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await client.get(path)).status_code == 200, path


async def test_readyz_reports_a_dependency_that_is_down(container: Any, client: httpx.AsyncClient):
    await container.bus.close()
    r = await client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["bus"].startswith("unavailable")
    assert (await client.get("/healthz")).status_code == 200  # alive, just not ready
