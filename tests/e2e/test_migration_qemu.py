"""Moving a real guest between two QEMU hosts through the API (``actions/migrate``).

A NATS server, ``alto up`` with no local hosts and two ``alto agent --driver qemu``
processes, each with its own state directory (its own image cache, VM directories and
root disks: nothing is shared but the machine). A guest writes a file to its root disk;
a live migration with ``block_migration`` copies that disk while the guest runs (the
file is there on the new host, the guest never rebooted); the guest writes another file,
is stopped, and a cold migration carries its disk back (both files there after it
boots). Without ``block_migration`` the live move is refused, naming the local disk.
Everything started here is killed by PID at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.drivers.compute.qemu_cmdline import VmPaths
from altostack.drivers.compute.qemu_process import pids_with
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import GUEST_TIMEOUT, SerialConsole, guest_image, kill_qemus_under
from tests.e2e.test_agent_qemu import READY
from tests.support.alto_server import (
    AltoServer,
    join_token,
    server_env,
    start_qemu_agent,
    upload_image,
    wait_for,
)
from tests.support.nats import running_nats

pytestmark = [pytest.mark.slow, pytest.mark.real]
PASSWORD = "Migrate-Me-7"


def _op(http: httpx.Client, op_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        op = http.get(f"/v1/operations/{op_id}?wait=5").json()
        return op if op["state"] in ("succeeded", "failed") else None

    return dict(wait_for(finished, 300, f"operation {op_id}"))


def _guest(state_dir: Path, vm_id: str, command: str) -> str:
    async def run() -> str:
        paths = VmPaths(state_dir / "vms" / vm_id)
        async with SerialConsole.login(paths, "root", PASSWORD) as console:
            return await console.run(command)

    return asyncio.run(run())


def test_a_guest_moves_live_with_its_disk_and_back_cold() -> None:
    image_file = guest_image()
    root = Path(tempfile.mkdtemp(prefix="alto-mig-"))  # short: QEMU sockets live under it
    os.chmod(root, 0o711)  # QEMU runs as its own user, which must reach the VM directories
    agents: list[subprocess.Popen[bytes]] = []
    with running_nats() as nats:
        env = server_env(ALTO_BUS=nats.url, ALTO_AGENT_TIMEOUT_SECONDS="15")
        server = AltoServer(root / "cp", env=env)
        http = server.client(timeout=60.0)
        try:
            server.start()
            http.headers.update(server.login())
            token = http.headers["Authorization"].removeprefix("Bearer ")
            image = upload_image(http, image_file)
            join = join_token(http)
            for name in ("h1", "h2"):
                agents.append(
                    start_qemu_agent(
                        server, join, f"mig-{name}", root / name, root / f"{name}.log",
                        {**env, "ALTO_TOKEN": token},
                    )
                )  # fmt: skip
            hosts = wait_for(
                lambda: len(items := http.get("/v1/hosts?state=up").json()["items"]) == 2 and items,
                30,
                "two hosts",
            )
            state_dir = {h["id"]: root / h["hostname"].removeprefix("mig-") for h in hosts}

            body = {"name": "mover", "instance_type": "c1.small", "image_id": image["id"]}
            r = http.post("/v1/vms", json={**body, "password": PASSWORD})
            assert r.status_code == 202, r.text
            vm_id = r.json()["vm"]["id"]
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"

            def console() -> str:
                return str(http.get(f"/v1/vms/{vm_id}/console-output?lines=1000").json()["output"])

            wait_for(lambda: READY.search(console()), GUEST_TIMEOUT, "the guest's readiness")
            first = http.get(f"/v1/vms/{vm_id}").json()["host_id"]
            _guest(state_dir[first], vm_id, "echo before-live > /root/mark1; sync")

            # Live: refused without block_migration (the root disk is local), then done.
            r = http.post(f"/v1/vms/{vm_id}/actions/migrate", json={})
            assert r.status_code == 409 and r.json()["local_disks"] == ["root"], r.text
            r = http.post(f"/v1/vms/{vm_id}/actions/migrate", json={"block_migration": True})
            assert r.status_code == 202, r.text
            op = _op(http, r.json()["operation"]["id"])
            assert op["state"] == "succeeded", (op, (root / "h1.log").read_text()[-3000:])
            vm = http.get(f"/v1/vms/{vm_id}").json()
            second = vm["host_id"]
            assert second != first and vm["state"] == "running"
            print(
                f"\nlive block migration: {op['result'].get('total_seconds', 0):.2f} s, "
                f"downtime {op['result'].get('downtime_ms', 0):.0f} ms"
            )
            assert not (state_dir[first] / "vms" / vm_id).exists()  # nothing left behind
            assert pids_with(f"{state_dir[first]}/") == []
            assert _guest(state_dir[second], vm_id, "cat /root/mark1").strip() == "before-live"
            assert len(READY.findall(console())) == 1  # the same boot, its console went along

            # Cold: the guest writes again, stops, its disk goes back to the first host.
            _guest(state_dir[second], vm_id, "echo before-cold > /root/mark2; sync")
            r = http.post(f"/v1/vms/{vm_id}/actions/stop")
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"
            r = http.post(f"/v1/vms/{vm_id}/actions/migrate", json={"host_id": first})
            assert r.status_code == 202, r.text
            op = _op(http, r.json()["operation"]["id"])
            assert op["state"] == "succeeded", (op, (root / "h2.log").read_text()[-3000:])
            vm = http.get(f"/v1/vms/{vm_id}").json()
            assert (vm["host_id"], vm["state"]) == (first, "stopped")
            assert not (state_dir[second] / "vms" / vm_id).exists()
            assert list((state_dir[second] / "transfers").iterdir()) == []
            r = http.post(f"/v1/vms/{vm_id}/actions/start")
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"
            wait_for(lambda: len(READY.findall(console())) == 2, GUEST_TIMEOUT, "the second boot")
            marks = _guest(state_dir[first], vm_id, "cat /root/mark1 /root/mark2").split()
            assert marks == ["before-live", "before-cold"]

            # A root disk snapshot while it runs; a later write is undone by a rollback.
            r = http.post("/v1/snapshots", json={"vm_id": vm_id, "name": "before-mark3"})
            assert r.status_code == 202, r.text
            snap_id = r.json()["snapshot"]["id"]
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"
            _guest(state_dir[first], vm_id, "echo after-snapshot > /root/mark3; sync")
            r = http.post(f"/v1/snapshots/{snap_id}/actions/rollback")
            assert r.status_code == 409, r.text  # not under a running guest
            r = http.post(f"/v1/vms/{vm_id}/actions/stop")
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"
            r = http.post(f"/v1/snapshots/{snap_id}/actions/rollback")
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"
            r = http.post(f"/v1/vms/{vm_id}/actions/start")
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"
            wait_for(lambda: len(READY.findall(console())) == 3, GUEST_TIMEOUT, "the third boot")
            files = _guest(state_dir[first], vm_id, "ls /root").split()
            assert "mark1" in files and "mark2" in files and "mark3" not in files, files
            r = http.delete(f"/v1/snapshots/{snap_id}")  # live delete
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"

            r = http.delete(f"/v1/vms/{vm_id}")
            assert _op(http, r.json()["operation"]["id"])["state"] == "succeeded"
        except BaseException:
            for name in ("h1", "h2"):
                log = root / f"{name}.log"
                if log.exists():
                    print(f"--- agent {name} ---\n{log.read_text()[-4000:]}")
            raise
        finally:
            http.close()
            for agent in agents:
                if agent.poll() is None:
                    os.killpg(agent.pid, signal.SIGKILL)
                    agent.wait(timeout=10)
            server.kill()
            kill_qemus_under(root)
            shutil.rmtree(root, ignore_errors=True)
