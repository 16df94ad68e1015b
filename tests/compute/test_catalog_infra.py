"""Images (upload, URL import from a loopback server, export), instance types, hosts."""

from __future__ import annotations

import hashlib
import http.server
import socketserver
import struct
import threading

import pytest

from tests.compute.conftest import create_vm, wait_op

QCOW2 = b"QFI\xfb" + b"\0\0\0\x03" + b"\0" * 16 + struct.pack(">Q", 3 * 1024**3) + b"\0" * 4064


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server serving files from tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_upload_detect_download(client, owner):
    r = await client.post("/v1/images", json={"name": "mine", "os_version": "12"}, headers=owner)
    assert r.status_code == 201 and r.json()["state"] == "importing"
    image = r.json()
    bad = await client.put(
        f"/v1/images/{image['id']}/file?checksum_sha256={'0' * 64}",
        content=QCOW2,
        headers={**owner, "Content-Type": "application/octet-stream"},
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "checksum_sha256"
    again = await client.get(f"/v1/images/{image['id']}", headers=owner)
    assert again.json()["state"] == "error"

    r = await client.post("/v1/images", json={"name": "mine2"}, headers=owner)
    image = r.json()
    sha = hashlib.sha256(QCOW2).hexdigest()
    r = await client.put(
        f"/v1/images/{image['id']}/file?checksum_sha256={sha}",
        content=QCOW2,
        headers={**owner, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "available" and body["format"] == "qcow2"
    assert body["virtual_size_bytes"] == 3 * 1024**3 and body["min_disk_gib"] == 3
    assert body["checksum_sha256"] == sha
    r = await client.get(f"/v1/images/{image['id']}/file", headers=owner)
    assert r.status_code == 200 and r.content == QCOW2
    events = (await client.get(f"/v1/events?resource_id={image['id']}", headers=owner)).json()
    assert any(e["action"] == "image.upload" for e in events["items"])


async def test_url_import_and_in_use(client, owner, http_server):
    root, base = http_server
    (root / "disk.raw").write_bytes(b"\x01" * 4096)
    r = await client.post(
        "/v1/images", json={"name": "from-url", "source_url": f"{base}/disk.raw"}, headers=owner
    )
    assert r.status_code == 202 and r.headers["X-Operation-Id"].startswith("op-")
    op = await wait_op(client, owner, {"id": r.headers["X-Operation-Id"]})
    assert op["state"] == "succeeded", op
    image = (await client.get(f"/v1/images/{r.json()['id']}", headers=owner)).json()
    assert (
        image["state"] == "available" and image["format"] == "raw" and image["size_bytes"] == 4096
    )

    r = await client.post(
        "/v1/images", json={"name": "missing", "source_url": f"{base}/nope"}, headers=owner
    )
    op = await wait_op(client, owner, {"id": r.headers["X-Operation-Id"]})
    assert op["state"] == "failed" and "404" in op["error"]["message"]

    vm = await create_vm(client, owner, image_id=image["id"])
    r = await client.delete(f"/v1/images/{image['id']}", headers=owner)
    assert r.status_code == 409 and vm["id"] in r.json()["detail"]


async def test_public_images_and_types_are_admin_managed(client, admin, owner):
    r = await client.post("/v1/images", json={"name": "pub", "visibility": "public"}, headers=owner)
    assert r.status_code == 403
    r = await client.post(
        "/v1/instance-types", json={"name": "x1", "vcpus": 1, "memory_mib": 512}, headers=owner
    )
    assert r.status_code == 403
    r = await client.get("/v1/instance-types", headers=owner)
    assert [t["name"] for t in r.json()["items"]][:2] == ["c1.small", "c1.medium"]
    seed = (await client.get("/v1/images?name=cirros-sim", headers=owner)).json()["items"][0]
    r = await client.delete(f"/v1/images/{seed['id']}", headers=owner)
    assert r.status_code == 403


async def test_hosts_clusters_and_join(client, admin, owner):
    hosts = (await client.get("/v1/hosts", headers=admin)).json()["items"]
    assert len(hosts) == 3 and {h["state"] for h in hosts} == {"up"}
    assert hosts[0]["capacity"]["cores"] == 64 and hosts[0]["allocatable"]["vcpus"] == 256
    assert (await client.get("/v1/hosts", headers=owner)).status_code == 403

    r = await client.post(f"/v1/hosts/{hosts[0]['id']}/actions/maintain", headers=admin)
    assert r.json()["state"] == "maintenance"
    vms = [await create_vm(client, owner, f"m{i}") for i in range(4)]
    assert all(vm["host_id"] != hosts[0]["id"] for vm in vms)
    r = await client.post(f"/v1/hosts/{hosts[0]['id']}/actions/enable", headers=admin)
    assert r.json()["state"] == "up"

    cluster_id = hosts[0]["cluster_id"]
    r = await client.patch(
        f"/v1/clusters/{cluster_id}", json={"cpu_allocation_ratio": 2.0}, headers=admin
    )
    assert r.status_code == 409 and "only be raised" in r.json()["detail"]
    r = await client.patch(
        f"/v1/clusters/{cluster_id}", json={"cpu_allocation_ratio": 8.0}, headers=admin
    )
    assert r.json()["cpu_allocation_ratio"] == 8.0

    r = await client.post(
        "/v1/hosts/register",
        json={
            "join_token": "join_wrong",
            "hostname": "h9",
            "arch": "x86_64",
            "cores": 8,
            "memory_mib": 8192,
            "disk_gib": 100,
        },
    )
    assert r.status_code == 401
    token = (
        await client.post(f"/v1/clusters/{cluster_id}/actions/join-token", headers=admin)
    ).json()
    r = await client.post(
        "/v1/hosts/register",
        json={
            "join_token": token["join_token"],
            "hostname": "h9",
            "arch": "x86_64",
            "cores": 8,
            "memory_mib": 8192,
            "disk_gib": 100,
            "accel": "kvm",
        },
    )
    assert r.status_code == 201 and r.json()["agent_token"].startswith("agent_")
    again = await client.post(
        "/v1/hosts/register",
        json={
            "join_token": token["join_token"],
            "hostname": "h9",
            "arch": "x86_64",
            "cores": 16,
            "memory_mib": 8192,
            "disk_gib": 100,
        },
    )
    assert again.json()["host"]["id"] == r.json()["host"]["id"]  # re-join keeps the identity
    assert again.json()["host"]["capacity"]["cores"] == 16
