"""``alto agent --driver qemu`` as its own process: a QEMU host joining a control plane.

A real NATS server, ``alto up`` with no local hosts, and one agent process with the QEMU
driver and its own state directory. The agent fetches the base image from the image
service over HTTP (checksum verified), boots the VM, and the guest's readiness line
arrives through ``console-output``. Everything started here (server, agent, NATS, QEMU) is
killed by PID at the end, whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from altostack.drivers.compute.local_images import sha256_file
from altostack.drivers.compute.qemu_host import detect_accel
from altostack.drivers.compute.qemu_process import pids_with
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import GUEST_TIMEOUT, guest_image, kill_qemus_under
from tests.support.alto_server import (
    AltoServer,
    join_token,
    server_env,
    start_qemu_agent,
    upload_image,
    wait_for,
)
from tests.support.nats import NatsServer, running_nats

pytestmark = [pytest.mark.slow, pytest.mark.real]
READY = re.compile(r"^ALTO-GUEST-READY ip=\S+ hostname=(\S+)", re.MULTILINE)


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


def test_a_qemu_agent_joins_fetches_the_image_and_boots_a_guest(nats: NatsServer) -> None:
    image_file = guest_image()
    root = Path(tempfile.mkdtemp(prefix="alto-agt-"))  # short: QEMU sockets live under it
    env = server_env(ALTO_BUS=nats.url, ALTO_AGENT_TIMEOUT_SECONDS="15")
    server = AltoServer(root / "cp", env=env)
    agent: subprocess.Popen[bytes] | None = None
    agent_log = root / "agent.log"
    http = server.client(timeout=60.0)
    try:
        server.start()
        http.headers.update(server.login())
        token = http.headers["Authorization"].removeprefix("Bearer ")
        image = upload_image(http, image_file)
        agent = start_qemu_agent(
            server, join_token(http), "qemu-h1", root / "host", agent_log,
            {**env, "ALTO_TOKEN": token},
        )  # fmt: skip
        hosts = wait_for(lambda: http.get("/v1/hosts?state=up").json()["items"], 30, "the join")
        assert [(h["hostname"], h["accel"]) for h in hosts] == [("qemu-h1", detect_accel())]

        r = http.post(
            "/v1/vms", json={"name": "joined", "instance_type": "c1.small", "image_id": image["id"]}
        )
        assert r.status_code == 202, r.text
        vm_id, op_id = r.json()["vm"]["id"], r.json()["operation"]["id"]

        def finished() -> dict[str, Any] | None:
            op = http.get(f"/v1/operations/{op_id}?wait=5").json()
            return op if op["state"] in ("succeeded", "failed") else None

        op = wait_for(finished, GUEST_TIMEOUT, "the create")
        assert op["state"] == "succeeded", (op, agent_log.read_text()[-3000:])
        cached = root / "host" / "images" / f"{image['id']}.qcow2"
        assert sha256_file(cached) == image["checksum_sha256"]

        def ready() -> bool:
            out = http.get(f"/v1/vms/{vm_id}/console-output?lines=100").json()["output"]
            return any(m.group(1) == "joined" for m in READY.finditer(out))

        wait_for(ready, GUEST_TIMEOUT, "ALTO-GUEST-READY on console-output")
        assert http.get(f"/v1/vms/{vm_id}/stats").json()["cpu_time_ns"] > 0

        r = http.delete(f"/v1/vms/{vm_id}")
        wait_for(lambda: finished_op(http, r.json()["operation"]["id"]), 120, "the delete")
        assert pids_with(f"{root}/host/") == []  # the guest's QEMU is gone
    finally:
        http.close()
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(timeout=10)
        server.kill()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


def finished_op(http: Any, op_id: str) -> bool:
    op = http.get(f"/v1/operations/{op_id}?wait=5").json()
    assert op["state"] != "failed", op
    return bool(op["state"] == "succeeded")
