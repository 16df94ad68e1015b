"""A stopped VM exported as an image, through its host agent and the storage driver, and
the image downloaded again with its checksum."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.compute.conftest import act, create_vm, wait_op
from tests.identity.helpers import make_user

GIB = 1024**3


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)


async def _stopped_vm(client, owner, name: str = "src", **extra: Any) -> dict[str, Any]:
    vm = await create_vm(client, owner, name, **extra)
    r = await act(client, owner, vm["id"], "stop")
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    return vm


async def _export(client, headers, vm_id: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    r = await client.post(
        f"/v1/vms/{vm_id}/actions/export-image", json={"name": name}, headers=headers
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["Location"] == f"/v1/images/{body['image']['id']}"
    assert body["image"]["state"] == "importing" and body["operation"]["kind"] == "image.export"
    op = await wait_op(client, headers, body["operation"])
    image = (await client.get(f"/v1/images/{body['image']['id']}", headers=headers)).json()
    return op, image


async def _download(client, headers, image: dict[str, Any]) -> bytes:
    r = await client.get(f"/v1/images/{image['id']}/file", headers=headers)
    assert r.status_code == 200, r.text
    data = r.content
    sha = hashlib.sha256(data).hexdigest()
    assert sha == image["checksum_sha256"] == r.headers["X-Checksum-Sha256"]
    assert r.headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(sha)).decode()}:"
    assert int(r.headers["Content-Length"]) == len(data) == image["size_bytes"]
    return data


async def test_export_a_stopped_vm_as_an_image(client, owner, tmp_path: Path):
    vm = await _stopped_vm(client, owner)
    op, image = await _export(client, owner, vm["id"], "golden")
    assert op["state"] == "succeeded" and op["progress"] == 100, op
    assert op["result"]["vm_id"] == vm["id"]
    assert image["state"] == "available", image
    assert image["format"] == "qcow2"
    assert image["virtual_size_bytes"] == vm["root_disk_gib"] * GIB
    assert image["min_disk_gib"] == vm["root_disk_gib"] and image["arch"] == vm["arch"]
    # Compact: the installed system and the VM's own data, not its whole virtual size.
    assert 512 * 1024 < image["size_bytes"] < 2 * 1024 * 1024, image

    data = await _download(client, owner, image)
    assert data[:4] == b"QFI\xfb"
    if shutil.which("qemu-img"):
        path = tmp_path / "golden.qcow2"
        path.write_bytes(data)
        check = qemu_img("check", str(path))
        assert check.returncode == 0, check.stdout + check.stderr
        info = json.loads(qemu_img("info", "--output=json", str(path)).stdout)
        assert info["format"] == "qcow2"
        assert info["virtual-size"] == vm["root_disk_gib"] * GIB

    # The same disk gives the same bytes; a boot writes to it, so the next export differs.
    _, again = await _export(client, owner, vm["id"], "golden-again")
    assert again["checksum_sha256"] == image["checksum_sha256"]
    r = await act(client, owner, vm["id"], "start")
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    r = await act(client, owner, vm["id"], "stop")
    assert (await wait_op(client, owner, r.json()["operation"]))["state"] == "succeeded"
    _, booted = await _export(client, owner, vm["id"], "golden-booted")
    assert booted["checksum_sha256"] != image["checksum_sha256"]

    # The image boots new VMs, and the export was recorded in the event log.
    clone = await create_vm(client, owner, "from-golden", image_id=image["id"])
    assert clone["state"] == "running" and clone["image_id"] == image["id"]
    r = await client.get(
        "/v1/events", params={"resource_id": image["id"], "action": "image.export"}, headers=owner
    )
    assert [e["result"] for e in r.json()["items"]] == ["success"], r.text


async def test_export_needs_a_stopped_vm_and_the_permission(client, owner):
    vm = await create_vm(client, owner, "busy")
    r = await client.post(
        f"/v1/vms/{vm['id']}/actions/export-image", json={"name": "live"}, headers=owner
    )
    assert r.status_code == 409, r.text
    assert r.json()["current_state"] == "running" and "stop it first" in r.json()["detail"]
    images = (await client.get("/v1/images", params={"name": "live"}, headers=owner)).json()
    assert images["items"] == []

    _, reader = await make_user(client, owner, "compute", "reader", "readonly")
    r = await client.post(
        f"/v1/vms/{vm['id']}/actions/export-image", json={"name": "nope"}, headers=reader
    )
    assert r.status_code == 403 and "vm:export-image" in r.text, r.text
    r = await client.post(
        "/v1/vms/vm-missing/actions/export-image", json={"name": "nope"}, headers=owner
    )
    assert r.status_code == 404
    r = await client.post(f"/v1/vms/{vm['id']}/actions/export-image", json={}, headers=owner)
    assert r.status_code in (400, 422)


async def test_an_export_that_cannot_run_leaves_the_image_in_error(client, owner, container):
    vm = await _stopped_vm(client, owner, "gone")
    # The VM vanishes from its host between the request and the pin (an agent wiped).
    for hypervisor in container.sim_hypervisors.values():
        if hypervisor.find(vm["id"]) is not None:
            hypervisor.remove(vm["id"])
    op, image = await _export(client, owner, vm["id"], "broken")
    assert op["state"] == "failed", op
    assert image["state"] == "error" and image["error"], image
    r = await client.get(f"/v1/images/{image['id']}/file", headers=owner)
    assert r.status_code == 409


async def test_exports_count_against_the_images_quota(client, admin, owner):
    vm = await _stopped_vm(client, owner, "quota")
    quotas = (await client.get("/v1/quotas", headers=owner)).json()
    tenant_id = quotas["tenant_id"]
    assert quotas["quotas"]["images"] == {"limit": 50, "usage": 0, "default": True}, quotas
    r = await client.put(f"/v1/quotas/{tenant_id}", json={"images": 1}, headers=admin)
    assert r.status_code == 200, r.text
    _, first = await _export(client, owner, vm["id"], "one")
    r = await client.post(
        f"/v1/vms/{vm['id']}/actions/export-image", json={"name": "two"}, headers=owner
    )
    assert r.status_code == 429 and r.json()["code"] == "QuotaExceeded", r.text
    assert "images" in r.json()["detail"]
    r = await client.post("/v1/images", json={"name": "upload"}, headers=owner)
    assert r.status_code == 429, r.text
    assert (await client.delete(f"/v1/images/{first['id']}", headers=owner)).status_code == 204
    _, second = await _export(client, owner, vm["id"], "two")
    assert second["state"] == "available"
