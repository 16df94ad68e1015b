"""A cluster on one machine: control plane and host agent as separate processes over a
real NATS JetStream server. The agent is SIGKILLed mid-create and restarted: the VM ends
running, exactly once, and nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.alto_server import ADMIN_PASSWORD, ALTO, ROOT, AltoServer, server_env
from tests.support.nats import NatsServer, running_nats

pytestmark = pytest.mark.slow


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


class AgentProcess:
    def __init__(self, join: str, token: str, log: Path, env: dict[str, str]) -> None:
        self.cmd = [
            str(ALTO),
            "agent",
            "--join",
            join,
            "--token",
            token,
            "--hostname",
            "rack1-h1",
            "--heartbeat",
            "0.5",
            "--sim-timing-scale",
            "1.0",
        ]
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_agent_killed_mid_create(nats: NatsServer, tmp_path: Path) -> None:
    env = server_env(
        ALTO_BUS=nats.url,
        ALTO_AGENT_TIMEOUT_SECONDS="1.5",
        ALTO_HEARTBEAT_INTERVAL_SECONDS="0.5",
        ALTO_OPERATION_MAX_ATTEMPTS="6",
    )
    server = AltoServer(tmp_path / "cp", env=env)
    agent: AgentProcess | None = None
    try:
        server.start()
        http = server.client()
        token = http.post("/v1/auth/tokens", json={"username": "admin", "password": ADMIN_PASSWORD})
        h = {"Authorization": f"Bearer {token.json()['token']}"}
        cluster = http.get("/v1/clusters", headers=h).json()["items"][0]
        join = http.post(f"/v1/clusters/{cluster['id']}/actions/join-token", headers=h).json()
        agent = AgentProcess(server.url, join["join_token"], tmp_path / "agent.log", env)
        agent.start()
        host = _wait(
            lambda: http.get("/v1/hosts?state=up", headers=h).json()["items"],
            30,
            "the agent to join",
        )[0]
        assert host["hostname"] == "rack1-h1"

        image = http.get("/v1/images?name=cirros-sim", headers=h).json()["items"][0]
        r = http.post(
            "/v1/vms",
            json={"name": "survivor", "instance_type": "c1.small", "image_id": image["id"]},
            headers=h,
        )
        assert r.status_code == 202, r.text
        vm_id, op_id = r.json()["vm"]["id"], r.json()["operation"]["id"]
        # The sim takes ~3 s to create: kill the agent while it is at it.
        _wait(
            lambda: http.get(f"/v1/operations/{op_id}", headers=h).json()["state"] == "running",
            10,
            "the create to start",
        )
        time.sleep(1.0)
        agent.kill()
        time.sleep(0.5)
        agent.start()

        def finished() -> dict | None:
            op = http.get(f"/v1/operations/{op_id}?wait=5", headers=h, timeout=10).json()
            return op if op["state"] in ("succeeded", "failed") else None

        op = _wait(finished, 90, "the create operation to finish")
        assert op["state"] == "succeeded", (op, agent.log.read_text()[-3000:])
        assert op["attempts"] >= 2  # the first attempt died with the agent
        vm = http.get(f"/v1/vms/{vm_id}", headers=h).json()
        assert vm["state"] == "running" and vm["host_id"] == host["id"]
        vms = http.get("/v1/vms", headers=h).json()["items"]
        assert [v["id"] for v in vms] == [vm_id]  # exactly once
        orphans = http.get("/v1/events?action=vm.orphan", headers=h).json()["items"]
        assert orphans == []
        # The restarted agent kept the host identity and is up.
        hosts = http.get("/v1/hosts", headers=h).json()["items"]
        assert [x["id"] for x in hosts] == [host["id"]] and hosts[0]["state"] == "up"
    finally:
        if agent is not None:
            agent.kill()
        server.kill()
