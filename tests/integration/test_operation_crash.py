"""kill -9 of a real ``alto up`` in the middle of an operation: after a restart on the same
data the operation ends (never stuck) and resumes from its checkpoint."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.alto_server import AltoServer, alto_server, server_env
from tests.support.slow_ops import PLUGIN

pytestmark = pytest.mark.slow

STEPS = 10
STEP_SECONDS = 0.3


def poll(
    client: httpx.Client, headers: dict[str, str], op_id: str, until: Any, timeout: float
) -> dict[str, Any]:
    """GET the operation until ``until(op)`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/operations/{op_id}", headers=headers)
        assert r.status_code == 200, r.text
        op: dict[str, Any] = r.json()
        if until(op):
            return op
        if time.monotonic() > deadline:
            raise AssertionError(f"operation not as expected within {timeout}s: {op}")
        time.sleep(0.05)


def wait_finished(
    server: AltoServer, headers: dict[str, str], op_id: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with server.client(timeout=15) as client:
        while True:
            r = client.get(f"/v1/operations/{op_id}", params={"wait": 5}, headers=headers)
            assert r.status_code == 200, r.text
            op: dict[str, Any] = r.json()
            if op["state"] in ("succeeded", "failed"):
                return op
            if time.monotonic() > deadline:
                raise AssertionError(f"operation stuck after {timeout}s: {op}\n{server.log()}")


def server_db(db_url: str) -> str | None:
    """None for SQLite: the server then uses its embedded default in the data dir."""
    return None if db_url.startswith("sqlite") else db_url


def test_sigkill_mid_operation_then_restart_resumes_from_checkpoint(db_url: str, tmp_path: Path):
    env = server_env(ALTO_PLUGINS=PLUGIN)
    with alto_server(tmp_path / "data", db=server_db(db_url), env=env) as server:
        admin = server.login()
        with server.client() as client:
            r = client.post(
                "/v1/test/steps",
                json={"steps": STEPS, "step_seconds": STEP_SECONDS},
                headers=admin,
            )
            assert r.status_code == 202, r.text
            op_id = r.json()["operation"]["id"]
            before = poll(client, admin, op_id, lambda op: op["progress"] >= 20, timeout=STEPS * 2)
        assert before["state"] == "running"
        server.signal(signal.SIGKILL)
        assert server.wait(timeout=10) == -signal.SIGKILL

        server.start()
        admin = server.login()
        done = wait_finished(server, admin, op_id, timeout=60)
        log = server.log(400)

    assert done["state"] == "succeeded", f"{done}\n{log}"
    assert done["progress"] == 100
    assert done["attempts"] == 2
    result = done["result"]
    # It went on from the last checkpoint it saved before the kill, not from the start.
    assert result["resumed_from"] >= before["progress"] * STEPS // 100 >= 2
    assert result["executed"] == STEPS - result["resumed_from"] < STEPS
    assert result["attempt"] == 2
