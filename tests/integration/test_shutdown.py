"""SIGTERM: requests in flight finish, the process leaves within the grace period, running
operations are handed back (pending, checkpoint kept) and finish after the restart."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.db.database import Database
from tests.integration.test_operation_crash import poll, server_db, wait_finished
from tests.support.alto_server import AltoServer, alto_server, server_env
from tests.support.slow_ops import PLUGIN

pytestmark = pytest.mark.slow

GRACE = 3.0
STEPS = 40
STEP_SECONDS = 0.25  # 10 s of work: far longer than the grace period


def read_operation(database_url: str, op_id: str) -> dict[str, Any]:
    """The operation row as stored, read while no server runs."""

    async def read() -> dict[str, Any]:
        db = Database(database_url)
        try:
            async with db.uow(write=False) as uow:
                row = await uow.operations.get(op_id)
                assert row is not None
                return {
                    "state": row.state,
                    "lease_owner": row.lease_owner,
                    "attempts": row.attempts,
                    "checkpoint": dict(row.checkpoint or {}),
                    "progress": row.progress,
                }
        finally:
            await db.dispose()

    return asyncio.run(read())


def start_slow_request(
    server: AltoServer, headers: dict[str, str], seconds: float
) -> tuple[threading.Thread, dict[str, Any]]:
    """A request that is surely being served (not just queued) when this returns."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with server.client(timeout=30) as client:
                out["response"] = client.get(
                    "/v1/test/sleep", params={"seconds": seconds}, headers=headers
                )
        except httpx.HTTPError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    with server.client() as client:
        poll_until = time.monotonic() + 10
        while client.get("/v1/test/sleeping", headers=headers).json()["in_flight"] < 1:
            assert time.monotonic() < poll_until, "the slow request never arrived"
            time.sleep(0.02)
    return thread, out


def test_sigterm_drains_requests_and_hands_operations_back(db_url: str, tmp_path: Path):
    env = server_env(ALTO_PLUGINS=PLUGIN, ALTO_SHUTDOWN_GRACE_SECONDS=str(GRACE))
    data_dir = tmp_path / "data"
    database_url = server_db(db_url) or f"sqlite+aiosqlite:///{data_dir / 'altostack.db'}"
    with alto_server(data_dir, db=server_db(db_url), env=env) as server:
        admin = server.login()
        with server.client() as client:
            r = client.post(
                "/v1/test/steps",
                json={"steps": STEPS, "step_seconds": STEP_SECONDS},
                headers=admin,
            )
            assert r.status_code == 202, r.text
            op_id = r.json()["operation"]["id"]
            poll(client, admin, op_id, lambda op: op["progress"] > 0, timeout=20)

        thread, in_flight = start_slow_request(server, admin, seconds=1.5)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        status = server.wait(timeout=2 * GRACE + 10)
        took = time.monotonic() - signalled
        thread.join(timeout=10)
        log = server.log(200)

        # The request in flight was answered, not cut off.
        assert "error" not in in_flight, f"{in_flight.get('error')!r}\n{log}"
        response = in_flight["response"]
        assert response.status_code == 200
        assert response.json() == {"slept": 1.5}
        # Exited promptly (requests drain within the grace, then the worker gets its grace),
        # and not by being killed.
        assert status in (0, -signal.SIGTERM), f"exit status {status}\n{log}"
        assert took < 2 * GRACE + 5, f"took {took:.1f}s to stop\n{log}"

        # The unfinished operation was handed back to be resumed, not failed or left leased.
        stored = read_operation(database_url, op_id)
        assert stored["state"] == "pending", stored
        assert stored["lease_owner"] is None
        assert stored["attempts"] == 0
        checkpoint = stored["checkpoint"]["step"]
        assert 0 < checkpoint < STEPS

        server.start()
        done = wait_finished(server, server.login(), op_id, timeout=60)

    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1
    assert done["result"]["resumed_from"] == checkpoint


def test_sigterm_exit_status_is_zero(tmp_path: Path):
    """A clean stop on SIGTERM is a success for service managers and scripts."""
    env = server_env(ALTO_SHUTDOWN_GRACE_SECONDS="1")
    with alto_server(tmp_path / "data", env=env) as server:
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
