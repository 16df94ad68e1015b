"""The compute commands of ``alto`` against a mocked API (httpx.MockTransport): request
shapes, table and JSON output, waiting for operations (progress, failure, timeout,
``--no-wait``, batches), image transfers with SHA-256, and the SDK's streaming helpers."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from altostack.cli.main import app
from altostack.cli.state import CliState
from altostack.client import AsyncClient, Client, NotFound, TransportFailure, update_profile

URL = "http://alto.test"
Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


class FakeApi:
    """Answers by ``"METHOD /path"`` (replies in turn, the last one repeating) and
    remembers every request."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, route: str, *replies: Reply) -> None:
        self.routes[route] = list(replies)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = f"{request.method} {request.url.path}"
        replies = self.routes.get(route)
        if not replies:
            return problem(404, "NotFound", f"no route {route}")
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return reply(request) if callable(reply) else reply

    def to(self, route: str) -> list[httpx.Request]:
        method, path = route.split(" ", 1)
        return [r for r in self.requests if r.method == method and r.url.path == path]

    def bodies(self, route: str) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.to(route)]

    def polled(self) -> list[str]:
        return [r.url.path for r in self.requests if r.url.path.startswith("/v1/operations/")]


def problem(status: int, code: str, detail: str) -> httpx.Response:
    body = {"type": "t", "title": code, "status": status, "detail": detail, "code": code}
    return httpx.Response(status, json={**body, "errors": []}, headers={"x-request-id": "rid-7"})


def ok(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def page(*items: Any) -> httpx.Response:
    return ok({"items": list(items), "next_cursor": None})


def op(
    op_id: str = "op-1", state: str = "succeeded", progress: int = 100, **extra: Any
) -> dict[str, Any]:
    return {
        "id": op_id,
        "kind": "vm.create",
        "resource_id": "vm-1",
        "state": state,
        "progress": progress,
        "error": None,
        **extra,
    }


def failed(op_id: str = "op-1", message: str = "no host has room") -> dict[str, Any]:
    return op(op_id, "failed", 40, error={"code": "NoCapacity", "message": message})


def vm(vm_id: str = "vm-1", state: str = "running", **extra: Any) -> dict[str, Any]:
    return {
        "id": vm_id,
        "name": "web",
        "state": state,
        "instance_type": "c1.small",
        "vcpus": 1,
        "memory_mib": 2048,
        "host_id": "host-1",
        "private_ip": "10.0.0.5",
        "tags": {},
        "created_at": "2030-01-02T03:04:05.123Z",
        **extra,
    }


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("ALTO_"):
            monkeypatch.delenv(name)
    path = tmp_path / "credentials"
    monkeypatch.setenv("ALTO_CREDENTIALS_FILE", str(path))
    return path


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@functools.cache
def _command() -> Any:
    return typer.main.get_command(app)


@pytest.fixture
def alto(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Run ``alto`` in-process against the fake API, logged in with a token.

    The Click command tree is built once: ``CliRunner.invoke`` would rebuild all of it
    (every command's signature) on each call, which is most of a test's time.
    """
    update_profile(None, url=URL, token="tok")
    monkeypatch.setattr("typer.testing._get_command", lambda _app: _command())

    def run(*args: str, input: str | None = None, code: int = 0) -> Any:
        state = CliState(transport=httpx.MockTransport(api))
        result = CliRunner().invoke(app, list(args), obj=state, input=input)
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


def out_json(result: Any) -> Any:
    return json.loads(result.stdout)


# -- regions, clusters, hosts ---------------------------------------------------------


def test_region_commands(api: FakeApi, alto: Any) -> None:
    region = {"id": "region-1", "name": "eu", "description": "x", "created_at": "t"}
    api.on("GET /v1/regions", page(region))
    api.on("POST /v1/regions", ok(region, 201))
    api.on("DELETE /v1/regions/region-1", httpx.Response(204))
    assert "region-1" in alto("region", "list").stdout
    assert out_json(alto("-o", "json", "region", "create", "eu", "--description", "x")) == region
    assert api.bodies("POST /v1/regions") == [{"name": "eu", "description": "x"}]
    alto("region", "delete", "region-1", input="n\n", code=1)
    assert not api.to("DELETE /v1/regions/region-1")
    assert "Deleted region-1" in alto("region", "delete", "region-1", "-y").stderr


def test_cluster_commands(api: FakeApi, alto: Any) -> None:
    cluster = {"id": "cluster-1", "name": "c", "region_id": "region-1", "policy": "spread"}
    api.on("GET /v1/regions", page({"id": "region-1", "name": "eu"}))
    api.on("POST /v1/clusters", ok(cluster, 201))
    api.on("GET /v1/clusters", page(cluster))
    api.on("GET /v1/clusters/cluster-1", ok(cluster))
    api.on("PATCH /v1/clusters/cluster-1", ok(cluster))
    api.on("DELETE /v1/clusters/cluster-1", httpx.Response(204))
    token = {"cluster_id": "cluster-1", "join_token": "join_SECRET"}
    api.on("POST /v1/clusters/cluster-1/actions/join-token", ok(token))

    alto("cluster", "create", "c", "--region", "eu", "--cpu-ratio", "8", "--policy", "pack")
    assert api.bodies("POST /v1/clusters") == [
        {
            "region_id": "region-1",
            "name": "c",
            "arch": "x86_64",
            "cpu_allocation_ratio": 8.0,
            "policy": "pack",
        }
    ]
    result = alto("cluster", "create", "c", "--region", "nowhere", code=2)
    assert "no region named 'nowhere'" in result.output

    alto("cluster", "list", "--region", "region-1")
    assert api.to("GET /v1/clusters")[-1].url.params["region_id"] == "region-1"
    assert out_json(alto("-o", "json", "cluster", "show", "cluster-1")) == cluster
    alto("cluster", "update", "cluster-1", "--ram-ratio", "1.5")
    assert api.bodies("PATCH /v1/clusters/cluster-1") == [{"ram_allocation_ratio": 1.5}]
    assert "at least one" in alto("cluster", "update", "cluster-1", code=2).output
    result = alto("cluster", "join-token", "cluster-1")
    assert "join_SECRET" in result.stdout and "shown once" in result.stderr
    alto("cluster", "delete", "cluster-1", "--yes")


def test_host_commands(api: FakeApi, alto: Any) -> None:
    host = {
        "id": "host-1",
        "hostname": "sim-001",
        "cluster_id": "cluster-1",
        "state": "up",
        "liveness": "up",
        "allocatable": {"vcpus": 16, "memory_mib": 32768, "disk_gib": 500, "gpus": 0},
        "usage": {"vcpus": 3, "memory_mib": 1536, "disk_gib": 20, "gpus": 0},
        "load": 0.5,
        "last_heartbeat_at": None,
    }
    api.on("GET /v1/hosts", page(host))
    api.on("GET /v1/hosts/host-1", ok(host))
    for verb in ("enable", "disable", "maintain"):
        api.on(f"POST /v1/hosts/host-1/actions/{verb}", ok(host | {"state": verb}))
    api.on("DELETE /v1/hosts/host-1", httpx.Response(204))

    table = alto("host", "list", "--cluster", "cluster-1", "--state", "up").stdout
    assert "3/16" in table and "1.5 GiB/32 GiB" in table and "20/500 GiB" in table
    params = api.requests[-1].url.params
    assert (params["cluster_id"], params["state"]) == ("cluster-1", "up")
    assert out_json(alto("-o", "json", "host", "list")) == [host]  # raw, not the table row
    alto("host", "show", "host-1")
    for verb in ("enable", "disable", "maintain"):
        assert out_json(alto("-o", "json", "host", verb, "host-1"))["state"] == verb
    alto("host", "delete", "host-1", "-y")
    assert api.to("DELETE /v1/hosts/host-1")


# -- instance types -------------------------------------------------------------------


def test_type_commands(api: FakeApi, alto: Any) -> None:
    itype = {
        "id": "itype-1",
        "name": "c1.small",
        "vcpus": 1,
        "memory_mib": 512,
        "min_disk_gib": 1,
        "max_disk_gib": 100,
        "gpus": 0,
        "enabled": True,
        "description": None,
    }
    api.on("GET /v1/instance-types", page(itype))
    api.on("GET /v1/instance-types/c1.small", ok(itype))
    api.on("POST /v1/instance-types", ok(itype, 201))
    api.on("POST /v1/instance-types/c1.small/actions/disable", ok(itype | {"enabled": False}))
    api.on("POST /v1/instance-types/c1.small/actions/enable", ok(itype))
    api.on("DELETE /v1/instance-types/c1.small", httpx.Response(204))

    table = alto("type", "list").stdout
    assert "512 MiB" in table and "1-100 GiB" in table
    assert "include_disabled" not in api.requests[-1].url.params
    alto("type", "list", "--all")
    assert api.requests[-1].url.params["include_disabled"] == "true"
    assert out_json(alto("-o", "json", "type", "show", "c1.small")) == itype
    alto("type", "create", "c1.small", "--vcpus", "1", "--memory-mib", "512", "--max-disk", "100")
    assert api.bodies("POST /v1/instance-types") == [
        {"name": "c1.small", "vcpus": 1, "memory_mib": 512, "max_disk_gib": 100}
    ]
    assert out_json(alto("-o", "json", "type", "disable", "c1.small"))["enabled"] is False
    alto("type", "enable", "c1.small")
    alto("type", "delete", "c1.small", "-y")


# -- images ---------------------------------------------------------------------------


def image(image_id: str = "img-1", state: str = "available", **extra: Any) -> dict[str, Any]:
    return {
        "id": image_id,
        "name": "ubuntu",
        "state": state,
        "visibility": "private",
        "os_family": "linux",
        "os_version": "24.04",
        "arch": "x86_64",
        "format": "raw",
        "size_bytes": 3 * 1024 * 1024,
        "checksum_sha256": None,
        "min_disk_gib": 1,
        "created_at": "2030-01-01T00:00:00Z",
        **extra,
    }


def test_image_list_show_update_delete(api: FakeApi, alto: Any) -> None:
    api.on("GET /v1/images", page(image()))
    api.on("GET /v1/images/img-1", ok(image()))
    api.on("PATCH /v1/images/img-1", ok(image(visibility="shared")))
    api.on("DELETE /v1/images/img-1", httpx.Response(204))
    table = alto("image", "list", "--state", "available", "--name", "ubuntu").stdout
    assert "3.0 MiB" in table and "linux 24.04" in table
    params = api.requests[-1].url.params
    assert (params["state"], params["name"]) == ("available", "ubuntu")
    assert out_json(alto("-o", "json", "image", "show", "img-1")) == image()
    alto(
        "image",
        "update",
        "img-1",
        "--visibility",
        "shared",
        "--share-with",
        "tenant-2",
        "--share-with",
        "tenant-3",
    )
    assert api.bodies("PATCH /v1/images/img-1") == [
        {"visibility": "shared", "shared_with": ["tenant-2", "tenant-3"]}
    ]
    assert "nothing to change" in alto("image", "update", "img-1", code=2).output
    alto("image", "delete", "img-1", "-y")


def test_image_create_from_url_waits_for_the_import(api: FakeApi, alto: Any) -> None:
    headers = {"x-operation-id": "op-1", "location": "/v1/images/img-1"}
    api.on("POST /v1/images", ok(image(state="importing"), 202, **headers))
    api.on(
        "GET /v1/operations/op-1",
        ok(op(state="running", progress=30, kind="image.import")),
        ok(op(kind="image.import")),
    )
    api.on("GET /v1/images/img-1", ok(image()))
    digest = "ab" * 32
    result = alto(
        "-o", "json", "image", "create", "ubuntu", "--url", "https://x/u.img", "--checksum", digest
    )
    assert out_json(result)["state"] == "available"
    assert api.bodies("POST /v1/images") == [
        {"name": "ubuntu", "source_url": "https://x/u.img", "checksum_sha256": digest}
    ]
    assert api.polled() == ["/v1/operations/op-1"] * 2

    api.requests.clear()
    result = alto("-o", "json", "image", "create", "ubuntu", "--url", "https://x", "--no-wait")
    assert out_json(result)["state"] == "importing" and "alto ops wait op-1" in result.stderr
    assert api.polled() == []

    bad = failed(message="https://x answered 404") | {"kind": "image.import"}
    api.on("GET /v1/operations/op-1", ok(bad))
    result = alto("image", "create", "ubuntu", "--url", "https://x", code=1)
    assert "answered 404" in result.stderr and "NoCapacity" in result.stderr


def test_image_create_without_data_tells_how_to_upload(api: FakeApi, alto: Any) -> None:
    api.on("POST /v1/images", ok(image(state="importing"), 201))
    result = alto("image", "create", "ubuntu", "--os-family", "linux", "--min-disk", "5")
    assert "alto image upload img-1 FILE" in result.stderr
    assert api.bodies("POST /v1/images") == [
        {"name": "ubuntu", "os_family": "linux", "min_disk_gib": 5}
    ]
    assert (
        "not both" in alto("image", "create", "x", "--url", "u", "--file", __file__, code=2).output
    )


def _store_upload(request: httpx.Request) -> httpx.Response:
    data = request.read()
    return ok(image(size_bytes=len(data), checksum_sha256=hashlib.sha256(data).hexdigest()))


def test_image_upload_streams_the_file_with_its_sha256(
    api: FakeApi, alto: Any, tmp_path: Path
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 17)  # more than one chunk
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    api.on("PUT /v1/images/img-1/file", _store_upload)

    result = alto("-o", "json", "image", "upload", "img-1", str(path))
    assert out_json(result)["size_bytes"] == len(data)
    sent = api.to("PUT /v1/images/img-1/file")[0]
    assert sent.content == data
    assert sent.headers["content-type"] == "application/octet-stream"
    assert sent.headers["content-length"] == str(len(data))
    assert sent.url.params["checksum_sha256"] == hashlib.sha256(data).hexdigest()
    assert "idempotency-key" not in sent.headers
    assert "upload disk.raw" in result.stderr  # the byte progress bar

    alto("image", "upload", "img-1", str(path), "--no-checksum")
    assert "checksum_sha256" not in api.to("PUT /v1/images/img-1/file")[-1].url.params
    alto("image", "upload", "img-1", str(path), "--checksum", "cd" * 32)
    assert api.to("PUT /v1/images/img-1/file")[-1].url.params["checksum_sha256"] == "cd" * 32

    api.on("PUT /v1/images/img-1/file", problem(400, "InvalidRequest", "expected cd…"))
    assert "expected cd" in alto("image", "upload", "img-1", str(path), code=1).stderr
    alto("image", "upload", "img-1", str(tmp_path / "missing"), code=2)


def test_image_create_with_file_creates_then_uploads(
    api: FakeApi, alto: Any, tmp_path: Path
) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\0" * 4096)
    api.on("POST /v1/images", ok(image(state="importing"), 201))
    api.on("PUT /v1/images/img-1/file", _store_upload)
    result = alto("-o", "json", "image", "create", "ubuntu", "--file", str(path))
    assert out_json(result)["size_bytes"] == 4096
    assert "checksum_sha256" not in api.bodies("POST /v1/images")[0]
    assert api.to("PUT /v1/images/img-1/file")[0].content == b"\0" * 4096

    api.on("PUT /v1/images/img-1/file", problem(400, "InvalidRequest", "unknown format"))
    result = alto("image", "create", "ubuntu", "--file", str(path), code=1)
    assert "alto image delete img-1" in result.stderr


def test_image_download_verifies_sha256(api: FakeApi, alto: Any, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 + 5)
    good = image(checksum_sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    api.on("GET /v1/images/img-1", ok(good))
    api.on(
        "GET /v1/images/img-1/file",
        httpx.Response(200, content=data, headers={"content-type": "application/octet-stream"}),
    )
    target = tmp_path / "out.raw"
    result = alto("-o", "json", "image", "download", "img-1", str(target))
    assert target.read_bytes() == data
    assert out_json(result)["verified"] is True and "download out.raw" in result.stderr
    assert "exists" in alto("image", "download", "img-1", str(target), code=2).output
    alto("image", "download", "img-1", str(target), "--force")
    alto("image", "download", "img-1", str(tmp_path))  # a directory: ID.FORMAT inside
    assert (tmp_path / "img-1.raw").read_bytes() == data

    api.on("GET /v1/images/img-1", ok(good | {"checksum_sha256": "00" * 32}))
    bad_target = tmp_path / "bad.raw"
    result = alto("image", "download", "img-1", str(bad_target), code=1)
    assert "expected " + "00" * 32 in result.stderr
    assert not bad_target.exists() and not list(tmp_path.glob(".*.part"))
    alto("image", "download", "img-1", str(bad_target), "--no-verify")
    assert bad_target.read_bytes() == data

    api.on("GET /v1/images/img-1/file", problem(409, "Conflict", "image is importing"))
    result = alto("image", "download", "img-1", str(tmp_path / "x.raw"), code=1)
    assert "image is importing" in result.stderr and not (tmp_path / "x.raw").exists()


# -- VMs ------------------------------------------------------------------------------


def accepted(body_vm: dict[str, Any], op_id: str | None = "op-1") -> httpx.Response:
    operation = op(op_id, "pending", 0) if op_id else None
    return ok({"operation": operation, "vm": body_vm}, 202, location=f"/v1/vms/{body_vm['id']}")


def test_vm_list_filters_and_columns(api: FakeApi, alto: Any) -> None:
    api.on("GET /v1/vms", page(vm()))
    table = alto(
        "vm",
        "list",
        "--state",
        "running",
        "--name",
        "web",
        "--host",
        "host-1",
        "--tag",
        "env=prod",
        "--tag",
        "team=a=b",
    ).stdout
    for column in ("id", "name", "state", "type", "vcpus", "memory", "host", "ip", "created"):
        assert column in table
    assert "2 GiB" in table and "10.0.0.5" in table and "2030-01-02 03:04:05Z" in table
    params = api.requests[-1].url.params
    assert (params["state"], params["name"], params["host_id"]) == ("running", "web", "host-1")
    assert params.get_list("tag") == ["env=prod", "team=a=b"]
    assert out_json(alto("-o", "json", "vm", "list")) == [vm()]
    assert "key=value" in alto("vm", "list", "--tag", "novalue", code=2).output


def test_vm_create_waits_and_prints_the_running_vm(
    api: FakeApi, alto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAA me@laptop\n")
    user_data = tmp_path / "init.yaml"
    user_data.write_text("#cloud-config\n")
    api.on("GET /v1/images", page(image("img-9")))
    api.on("POST /v1/vms", accepted(vm(state="pending", host_id=None)))
    api.on(
        "GET /v1/operations/op-1",
        ok(op(state="running", progress=20)),
        ok(op(state="running", progress=70)),
        ok(op()),
    )
    api.on("GET /v1/vms/vm-1", ok(vm()))
    monkeypatch.setenv("ALTO_VM_PASSWORD", "Vm-Pass-1")
    result = alto(
        "-o",
        "json",
        "vm",
        "create",
        "web",
        "--type",
        "c1.small",
        "--image",
        "ubuntu",
        "--disk",
        "20",
        "--ssh-key",
        str(key),
        "--user-data",
        str(user_data),
        "--group",
        "pg-1",
        "--tag",
        "env=prod",
    )
    assert out_json(result) == vm()
    assert api.bodies("POST /v1/vms") == [
        {
            "name": "web",
            "instance_type": "c1.small",
            "image_id": "img-9",
            "root_disk_gib": 20,
            "password": "Vm-Pass-1",
            "ssh_keys": ["ssh-ed25519 AAAA me@laptop"],
            "user_data": "#cloud-config\n",
            "placement_group_id": "pg-1",
            "tags": {"env": "prod"},
        }
    ]
    image_query = api.to("GET /v1/images")[0].url.params
    assert (image_query["name"], image_query["state"]) == ("ubuntu", "available")
    assert api.polled() == ["/v1/operations/op-1"] * 3
    assert "vm.create vm-1 succeeded" in result.stderr  # the progress bar's last words
    assert "idempotency-key" in api.to("POST /v1/vms")[0].headers


def test_vm_create_image_id_password_prompt_and_no_wait(api: FakeApi, alto: Any) -> None:
    api.on("POST /v1/vms", accepted(vm(state="pending")))
    result = alto(
        "-o",
        "json",
        "vm",
        "create",
        "web",
        "--type",
        "c1.small",
        "--image",
        "img-1",
        "--password-prompt",
        "--no-wait",
        input="Pw-1\nPw-1\n",
    )
    assert out_json(result)["state"] == "pending"
    assert "alto ops wait op-1" in result.stderr
    assert api.bodies("POST /v1/vms")[0]["password"] == "Pw-1"
    assert not api.to("GET /v1/images") and api.polled() == []


def test_vm_create_unknown_or_ambiguous_image_is_bad_usage(api: FakeApi, alto: Any) -> None:
    api.on("GET /v1/images", page())
    assert (
        "no available image named 'nope'"
        in alto("vm", "create", "w", "--type", "t", "--image", "nope", code=2).output
    )
    api.on("GET /v1/images", page(image("img-1"), image("img-2")))
    result = alto("vm", "create", "w", "--type", "t", "--image", "ubuntu", code=2)
    assert "img-1, img-2" in result.output
    assert not api.to("POST /v1/vms")


def test_vm_create_failure_exits_1_with_the_error(api: FakeApi, alto: Any) -> None:
    api.on("POST /v1/vms", accepted(vm(state="pending")))
    api.on("GET /v1/operations/op-1", ok(failed()))
    result = alto("vm", "create", "web", "--type", "c1.small", "--image", "img-1", code=1)
    assert "no host has room" in result.stderr and "NoCapacity" in result.stderr
    assert result.stdout == ""


def test_vm_create_refused_by_the_api(api: FakeApi, alto: Any) -> None:
    api.on("POST /v1/vms", problem(429, "QuotaExceeded", "vms quota is 2"))
    result = alto("vm", "create", "web", "--type", "c1.small", "--image", "img-1", code=1)
    assert "429 QuotaExceeded: vms quota is 2" in result.stderr and "rid-7" in result.stderr


def test_vm_create_count_waits_for_every_operation(api: FakeApi, alto: Any) -> None:
    vms = [vm("vm-1", "pending"), vm("vm-2", "pending")]
    api.on(
        "POST /v1/vms",
        ok({"operations": [op("op-a", "pending", 0), op("op-b", "pending", 0)], "vms": vms}, 202),
    )
    api.on("GET /v1/operations/op-a", ok(op("op-a", "running", 50)), ok(op("op-a")))
    api.on("GET /v1/operations/op-b", ok(op("op-b")))
    api.on("GET /v1/vms/vm-1", ok(vm("vm-1")))
    api.on("GET /v1/vms/vm-2", ok(vm("vm-2")))
    args = ("vm", "create", "web", "--type", "c1.small", "--image", "img-1", "--count", "2")
    result = alto("-o", "json", *args)
    assert [v["state"] for v in out_json(result)] == ["running", "running"]
    assert api.bodies("POST /v1/vms")[0]["count"] == 2
    assert api.polled().count("/v1/operations/op-a") == 2
    assert api.polled().count("/v1/operations/op-b") == 1  # finished ops are not polled again
    assert "wait" in api.to("GET /v1/operations/op-a")[0].url.params  # the long-poll

    table = alto(*args).stdout
    assert "vm-1" in table and "vm-2" in table

    api.requests.clear()
    result = alto("-o", "json", *args, "--no-wait")
    assert len(out_json(result)) == 2 and "op-a, op-b" in result.stderr
    assert api.polled() == []

    api.on("GET /v1/operations/op-a", ok(failed("op-a", "host sim-001 died")))
    api.on("GET /v1/operations/op-b", ok(failed("op-b", "out of disk")))
    result = alto(*args, code=1)
    assert "host sim-001 died" in result.stderr and "out of disk" in result.stderr
    assert "vm-2" in result.stdout  # the VMs are still shown, as they ended up


def test_vm_wait_timeout_exits_4(api: FakeApi, alto: Any) -> None:
    api.on("POST /v1/vms/vm-1/actions/start", accepted(vm(state="starting")))
    api.on("GET /v1/operations/op-1", ok(op(state="running", progress=10)))
    result = alto("vm", "start", "vm-1", "--timeout", "0", code=4)
    assert "alto ops wait op-1" in result.stderr
    result = alto("vm", "start", "vm-1", "--wait-timeout", "0", code=4)

    vms = [vm("vm-1", "pending"), vm("vm-2", "pending")]
    api.on("POST /v1/vms", ok({"operations": [op("op-1", "pending", 0)], "vms": vms}, 202))
    args = ("vm", "create", "w", "--type", "t", "--image", "img-1", "--count", "2")
    assert "still running" in alto(*args, "--timeout", "0", code=4).stderr


def test_vm_actions_send_their_bodies_and_wait(api: FakeApi, alto: Any) -> None:
    actions = {
        "start": ([], None),
        "stop": (["--force", "--timeout", "5"], {"force": True, "timeout": 5.0}),
        "reboot": ([], None),
        "reinstall": (["--image", "img-2", "-y"], {"image_id": "img-2"}),
        "resize": (
            ["--type", "c1.large", "--allow-restart"],
            {"instance_type": "c1.large", "allow_restart": True},
        ),
        "reset-password": (["--user", "ubuntu"], {"password": "New-1", "user": "ubuntu"}),
        "restore": ([], None),
        "migrate": (
            ["--host", "host-2", "--block-migration"],
            {"block_migration": True, "host_id": "host-2"},
        ),
    }
    api.on("GET /v1/operations/op-1", ok(op()))
    api.on("GET /v1/vms/vm-1", ok(vm(state="settled")))
    for verb, (extra, body) in actions.items():
        api.on(f"POST /v1/vms/vm-1/actions/{verb}", accepted(vm(state=f"in-{verb}")))
        api.requests.clear()
        result = alto("-o", "json", "vm", verb, "vm-1", *extra, input="New-1\nNew-1\n")
        assert out_json(result)["state"] == "settled", verb
        assert api.bodies(f"POST /v1/vms/vm-1/actions/{verb}") == [body], verb
        assert api.polled() == ["/v1/operations/op-1"], verb

    api.requests.clear()
    result = alto("-o", "json", "vm", "stop", "vm-1", "--no-wait")
    assert out_json(result)["state"] == "in-stop" and api.polled() == []
    assert api.bodies("POST /v1/vms/vm-1/actions/stop") == [{"force": False}]


def test_vm_action_with_nothing_to_do(api: FakeApi, alto: Any) -> None:
    api.on("POST /v1/vms/vm-1/actions/start", accepted(vm(state="running"), op_id=None))
    result = alto("-o", "json", "vm", "start", "vm-1")
    assert out_json(result)["state"] == "running"
    assert "Nothing to do: VM vm-1 is already running" in result.stderr
    assert api.polled() == []


def test_vm_action_conflict_and_failure(api: FakeApi, alto: Any) -> None:
    api.on(
        "POST /v1/vms/vm-1/actions/reboot",
        problem(409, "Conflict", "cannot reboot VM vm-1: it is stopped"),
    )
    assert "it is stopped" in alto("vm", "reboot", "vm-1", code=1).stderr
    api.on("POST /v1/vms/vm-1/actions/resize", accepted(vm(state="resizing")))
    api.on("GET /v1/operations/op-1", ok(failed(message="host cannot hot-add")))
    result = alto("vm", "resize", "vm-1", "--type", "c1.large", code=1)
    assert "host cannot hot-add" in result.stderr


def test_vm_delete_goes_to_the_recycle_bin(api: FakeApi, alto: Any) -> None:
    api.on("DELETE /v1/vms/vm-1", accepted(vm(state="deleting")))
    api.on("GET /v1/operations/op-1", ok(op()))
    api.on("GET /v1/vms/vm-1", ok(vm(state="deleted", purge_after="2030-01-09T00:00:00Z")))
    alto("vm", "delete", "vm-1", input="n\n", code=1)
    assert not api.to("DELETE /v1/vms/vm-1")
    result = alto("-o", "json", "vm", "delete", "vm-1", "--yes")
    assert out_json(result)["state"] == "deleted"
    assert "alto vm restore vm-1" in result.stderr


def test_vm_export_image_follows_the_image(api: FakeApi, alto: Any) -> None:
    importing = image("img-9", "importing", name="golden", format=None)
    api.on(
        "POST /v1/vms/vm-1/actions/export-image",
        ok(
            {"operation": op("op-1", "pending", 0), "image": importing},
            202,
            location="/v1/images/img-9",
        ),
    )
    api.on("GET /v1/operations/op-1", ok(op()))
    api.on("GET /v1/images/img-9", ok(image("img-9", name="golden", format="qcow2")))
    result = alto("-o", "json", "vm", "export-image", "vm-1", "golden", "--os-version", "12")
    assert out_json(result)["state"] == "available" and out_json(result)["format"] == "qcow2"
    assert api.bodies("POST /v1/vms/vm-1/actions/export-image") == [
        {"name": "golden", "os_version": "12"}
    ]
    api.requests.clear()
    result = alto("-o", "json", "vm", "export-image", "vm-1", "golden", "--no-wait")
    assert out_json(result)["state"] == "importing" and api.polled() == []


def test_vm_show_and_console(api: FakeApi, alto: Any) -> None:
    api.on("GET /v1/vms/vm-1", ok(vm()))
    console = {"url": "/v1/console/vnc?token=T", "token": "T", "expires_at": "x"}
    api.on("POST /v1/vms/vm-1/actions/console", ok(console))
    assert "10.0.0.5" in alto("vm", "show", "vm-1").stdout
    result = alto("-o", "json", "vm", "console", "vm-1")
    assert out_json(result) == console
    assert f"Open: {URL}/v1/console/vnc?token=T" in result.stderr
    result = alto("vm", "console", "vm-1")
    assert result.stdout.strip() == f"{URL}/v1/console/vnc?token=T"  # the full URL alone
    assert "one opening" in result.stderr


def test_vm_console_output_and_stats(api: FakeApi, alto: Any) -> None:
    text = "ALTO-GUEST-BOOT\nALTO-GUEST-READY ip=none hostname=web\n\nweb login: "
    body = {"vm_id": "vm-1", "host_id": "host-1", "lines": 4, "output": text}
    api.on("GET /v1/vms/vm-1/console-output", ok(body))
    assert alto("vm", "console-output", "vm-1", "--lines", "4").stdout == text
    assert api.to("GET /v1/vms/vm-1/console-output")[0].url.params["lines"] == "4"
    assert out_json(alto("-o", "json", "vm", "console-output", "vm-1")) == body
    alto("vm", "console-output", "vm-1", "--lines", "0", code=2)

    stats = {
        "vm_id": "vm-1", "host_id": "host-1", "collected_at": "2030-01-02T03:04:05Z",
        "started_at": "2030-01-02T03:00:00Z", "cpu_time_ns": 7_500_000_000,
        "memory_rss_bytes": 220 * 1024**2, "memory_mib": 512, "vcpus": 1,
        "disks": [{"name": "root-disk", "read_bytes": 18 * 1024**2, "write_bytes": 4096,
                   "read_ops": 900, "write_ops": 1}],
        "nics": [],
    }  # fmt: skip
    api.on("GET /v1/vms/vm-1/stats", ok(stats))
    table = alto("vm", "stats", "vm-1").stdout
    assert "7.5" in table and "220 MiB" in table and "18.0 MiB" in table
    assert out_json(alto("-o", "json", "vm", "stats", "vm-1")) == stats


async def test_sdk_reads_from_the_vms_host(api: FakeApi) -> None:
    # fresh responses for each request: the sync and async transports read them differently
    api.on("GET /v1/vms/vm-1/console-output", lambda _r: ok({"output": "x\n", "lines": 1}))
    api.on("GET /v1/vms/vm-1/stats", lambda _r: ok({"cpu_time_ns": 1}))
    with Client(URL, token="t", transport=httpx.MockTransport(api)) as c:
        assert c.vm_console_output("vm-1", lines=7)["output"] == "x\n"
        assert c.vm_stats("vm-1") == {"cpu_time_ns": 1}
    async with AsyncClient(URL, token="t", transport=httpx.MockTransport(api)) as ac:
        assert (await ac.vm_console_output("vm-1"))["lines"] == 1
        assert await ac.vm_stats("vm-1") == {"cpu_time_ns": 1}
    params = [r.url.params.get("lines") for r in api.to("GET /v1/vms/vm-1/console-output")]
    assert params == ["7", "50"]


# -- placement groups and the recycle bin -----------------------------------------------


def test_group_commands(api: FakeApi, alto: Any) -> None:
    group = {"id": "pg-1", "name": "db", "policy": "anti-affinity", "mode": "soft"}
    api.on("POST /v1/placement-groups", ok(group, 201))
    api.on("GET /v1/placement-groups", page(group))
    api.on("GET /v1/placement-groups/pg-1", ok(group | {"vm_ids": ["vm-1", "vm-2"]}))
    api.on("DELETE /v1/placement-groups/pg-1", httpx.Response(204))
    alto("group", "create", "db", "--policy", "anti-affinity", "--mode", "soft")
    assert api.bodies("POST /v1/placement-groups") == [
        {"name": "db", "policy": "anti-affinity", "mode": "soft"}
    ]
    assert "policy" in alto("group", "create", "db", "--policy", "apart", code=2).output
    assert "anti-affinity" in alto("group", "list").stdout
    assert "vm-2" in alto("group", "show", "pg-1").stdout
    alto("group", "delete", "pg-1", "-y")
    assert api.to("DELETE /v1/placement-groups/pg-1")


def test_recycle_bin_commands(api: FakeApi, alto: Any) -> None:
    gone = vm(state="deleted", deleted_at="2030-01-02T00:00:00Z", purge_after="2030-01-09T00:00Z")
    api.on("GET /v1/recycle-bin", page(gone))
    api.on("DELETE /v1/recycle-bin/vm-1", ok(op("op-1", "pending", 0, kind="vm.purge"), 202))
    api.on("GET /v1/operations/op-1", ok(op(kind="vm.purge")))
    table = alto("recycle-bin", "list", "--tenant-id", "tenant-2").stdout
    assert "purge_after" in table and "2030-01-02 00:00:00Z" in table
    assert api.requests[-1].url.params["tenant_id"] == "tenant-2"
    result = alto("-o", "json", "recycle-bin", "purge", "vm-1", "-y")
    assert out_json(result)["state"] == "succeeded" and "Purged vm-1" in result.stderr
    api.requests.clear()
    result = alto("recycle-bin", "purge", "vm-1", "-y", "--no-wait")
    assert "alto ops wait op-1" in result.stderr and api.polled() == []
    api.on("GET /v1/operations/op-1", ok(failed(message="disk busy")))
    assert "disk busy" in alto("recycle-bin", "purge", "vm-1", "-y", code=1).stderr


# -- SDK helpers for raw bodies -------------------------------------------------------


def test_send_content_streams_once_and_stream_reads_incrementally(api: FakeApi) -> None:
    api.on("PUT /v1/images/img-1/file", problem(503, "Unavailable", "busy"))
    api.on("GET /v1/images/img-1/file", httpx.Response(200, content=b"x" * 10))
    api.on("GET /v1/images/img-2/file", problem(404, "NotFound", "no image img-2"))
    sleeps: list[float] = []
    with Client(URL, token="t", transport=httpx.MockTransport(api), sleep=sleeps.append) as c:
        response = c.send_content("PUT", "/v1/images/img-1/file", iter([b"a", b"b"]))
        assert response.status_code == 503 and len(api.requests) == 1 and sleeps == []
        assert api.requests[0].content == b"ab"
        with c.stream("GET", "/v1/images/img-1/file") as streamed:
            assert b"".join(streamed.iter_bytes()) == b"x" * 10
        with (
            pytest.raises(NotFound, match="no image img-2"),
            c.stream("GET", "/v1/images/img-2/file"),
        ):
            pass


def test_send_content_transport_failure() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with (
        Client(URL, token="t", transport=httpx.MockTransport(broken)) as c,
        pytest.raises(TransportFailure, match="refused"),
    ):
        c.send_content("PUT", "/v1/images/img-1/file", b"data")


async def test_async_twins(api: FakeApi) -> None:
    api.on("PUT /v1/images/img-1/file", ok(image()))
    api.on("GET /v1/images/img-1/file", httpx.Response(200, content=b"y" * 7))

    async def chunks() -> Any:
        yield b"c1"
        yield b"c2"

    async with AsyncClient(URL, token="t", transport=httpx.MockTransport(api)) as c:
        response = await c.send_content("PUT", "/v1/images/img-1/file", chunks())
        assert response.status_code == 200 and api.requests[0].content == b"c1c2"
        assert api.requests[0].headers["content-type"] == "application/octet-stream"
        async with c.stream("GET", "/v1/images/img-1/file") as streamed:
            assert b"".join([b async for b in streamed.aiter_bytes()]) == b"y" * 7
