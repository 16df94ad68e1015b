"""The all-in-one with the ``qemu`` driver, through the HTTP API only: one real guest.

``alto up --driver qemu`` runs as a subprocess (as ``make run`` starts it: uvicorn on
uvloop) with SQLite in a temporary data directory and this machine as its one QEMU host
(TCG here). The test checks what a new user sees: the host with its real capacity and
accelerator, the test guest as the default public image (with its checksum), a VM created
through ``POST /v1/vms`` that reaches ``running`` and prints ``ALTO-GUEST-READY`` on
``console-output``, its counters, and stop + delete + purge leaving no QEMU process behind
(checked by PID). The server and every QEMU under the data directory are killed by PID at
the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.drivers.compute.local_images import sha256_file
from altostack.drivers.compute.qemu_host import detect_accel, host_cores, host_memory_mib
from altostack.drivers.compute.qemu_process import pids_with, process_alive
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import GUEST_TIMEOUT, guest_image, kill_qemus_under
from tests.support.alto_server import AltoServer, server_env

pytestmark = [pytest.mark.slow, pytest.mark.real]
READY = re.compile(r"^ALTO-GUEST-READY ip=(\S+) hostname=(\S+)", re.MULTILINE)


@pytest.fixture
def cloud() -> Iterator[tuple[httpx.Client, Path]]:
    image = guest_image()
    # A short root: QEMU's unix sockets live under it (108-byte limit on their paths).
    root = Path(tempfile.mkdtemp(prefix="alto-aio-"))
    root.chmod(0o711)  # reachable for the qemu user, as /var/lib/altostack would be
    env = server_env(ALTO_DRIVER="qemu", ALTO_DEFAULT_IMAGE=str(image))
    server = AltoServer(root / "data", env=env)
    try:
        server.start()
        with server.client(timeout=30.0) as client:
            client.headers.update(server.login())
            yield client, root
    finally:
        server.kill()
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


def _wait_op(client: httpx.Client, op: dict[str, Any]) -> None:
    deadline = time.monotonic() + GUEST_TIMEOUT
    while time.monotonic() < deadline:
        body = client.get(f"/v1/operations/{op['id']}?wait=5").json()
        if body["state"] in ("succeeded", "failed"):
            assert body["state"] == "succeeded", body
            return
    raise AssertionError(f"operation {op['id']} did not finish")


def test_a_new_user_boots_the_default_image_through_the_api(cloud) -> None:
    client, root = cloud

    hosts = client.get("/v1/hosts").json()["items"]
    assert len(hosts) == 1
    host = hosts[0]
    assert host["accel"] == detect_accel() and host["state"] == "up"
    assert host["capacity"]["cores"] == host_cores()
    assert host["capacity"]["memory_mib"] == host_memory_mib()
    assert host["capacity"]["disk_gib"] == shutil.disk_usage(root).total // 1024**3

    images = client.get("/v1/images?name=alto-test").json()["items"]
    assert [i["state"] for i in images] == ["available"]
    image = images[0]
    assert image["visibility"] == "public" and image["format"] == "qcow2"
    assert image["checksum_sha256"] == sha256_file(guest_image())
    assert not client.get("/v1/images?name=cirros-sim").json()["items"]

    r = client.post(
        "/v1/vms",
        json={"name": "aio-guest", "instance_type": "c1.small", "image_id": image["id"]},
    )
    assert r.status_code == 202, r.text
    vm_id = r.json()["vm"]["id"]
    _wait_op(client, r.json()["operation"])
    vm = client.get(f"/v1/vms/{vm_id}").json()
    assert (vm["state"], vm["accel"], vm["host_id"]) == ("running", detect_accel(), host["id"])

    # The base image came from the image store into the host's cache, verified.
    cached = root / "data" / "qemu" / "images" / f"{image['id']}.qcow2"
    assert sha256_file(cached) == image["checksum_sha256"]
    pid = int((root / "data" / "qemu" / "vms" / vm_id / "qemu.pid").read_text())
    assert process_alive(pid, vm_id)
    # Where the host allows it (root, a data directory others can reach: /tmp here) QEMU
    # drops to the dedicated user.
    uid = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Uid:")
    )
    if os.geteuid() == 0:
        assert pwd.getpwuid(uid).pw_name == "alto-qemu"

    started = time.monotonic()
    output = ""
    while not (found := READY.search(output)):
        assert time.monotonic() - started < GUEST_TIMEOUT, f"no readiness line:\n{output}"
        time.sleep(1.0)
        r = client.get(f"/v1/vms/{vm_id}/console-output?lines=200")
        assert r.status_code == 200, r.text
        output = r.json()["output"]
    assert found.group(2) == "aio-guest"
    tail = client.get(f"/v1/vms/{vm_id}/console-output?lines=5").json()
    assert tail["lines"] <= 5

    stats = client.get(f"/v1/vms/{vm_id}/stats").json()
    assert stats["cpu_time_ns"] > 10**9  # booting costs CPU-seconds under any accelerator
    assert stats["memory_rss_bytes"] > 32 * 1024**2
    assert (stats["vcpus"], stats["memory_mib"]) == (1, 512)
    disks = {d["name"]: d for d in stats["disks"]}
    assert disks["root-disk"]["read_bytes"] > 10**6 and disks["seed-disk"]["read_ops"] > 0

    # A live resize: the same QEMU process gets a vCPU and memory, no restart.
    r = client.post(f"/v1/vms/{vm_id}/actions/resize", json={"instance_type": "c1.medium"})
    assert r.status_code == 202, r.text
    _wait_op(client, r.json()["operation"])
    grown = client.get(f"/v1/vms/{vm_id}").json()
    assert (grown["state"], grown["vcpus"], grown["memory_mib"]) == ("running", 2, 2048)
    assert process_alive(pid, vm_id)
    stats = client.get(f"/v1/vms/{vm_id}/stats").json()
    assert (stats["vcpus"], stats["memory_mib"]) == (2, 2048), stats

    r = client.post(f"/v1/vms/{vm_id}/actions/stop", json={"timeout": 30})
    _wait_op(client, r.json()["operation"])
    assert client.get(f"/v1/vms/{vm_id}").json()["state"] == "stopped"
    assert not process_alive(pid, vm_id)
    assert client.get(f"/v1/vms/{vm_id}/stats").status_code == 409
    assert "Power down" in client.get(f"/v1/vms/{vm_id}/console-output").json()["output"]

    # The stopped VM's disk chain exported as a standalone image with the same content.
    r = client.post(f"/v1/vms/{vm_id}/actions/export-image", json={"name": "aio-golden"})
    assert r.status_code == 202, r.text
    _wait_op(client, r.json()["operation"])
    exported = client.get(f"/v1/images/{r.json()['image']['id']}").json()
    assert exported["state"] == "available" and exported["format"] == "qcow2", exported
    copy = root / "exported.qcow2"
    with client.stream("GET", f"/v1/images/{exported['id']}/file") as download:
        assert download.status_code == 200
        with copy.open("wb") as f:
            for chunk in download.iter_bytes():
                f.write(chunk)
    assert sha256_file(copy) == exported["checksum_sha256"]
    info = json.loads(_run("qemu-img", "info", "--output=json", str(copy)))
    assert "backing-filename" not in info and info["format"] == "qcow2", info
    vm_dir = root / "data" / "qemu" / "vms" / vm_id
    _run("qemu-img", "compare", "-q", str(copy), str(vm_dir / "root.qcow2"))  # same bytes
    assert not any((root / "data" / "qemu" / "exports").iterdir())  # the pin was dropped

    r = client.delete(f"/v1/vms/{vm_id}")
    _wait_op(client, r.json()["operation"])
    r = client.delete(f"/v1/recycle-bin/{vm_id}")
    _wait_op(client, r.json())
    assert not (root / "data" / "qemu" / "vms" / vm_id).exists()
    assert pids_with(f"{root}/data/qemu/") == []  # no QEMU of this cloud is left


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout
