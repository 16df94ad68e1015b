"""The compute commands of ``alto`` against a real ``alto up`` with two sim hosts.

One server for the module (started by :mod:`tests.support.alto_server`, killed by its
PID at the end); the VM's whole life runs through the CLI, waiting on real operations.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from altostack.cli.main import app
from altostack.cli.state import CliState
from tests.support.alto_server import ADMIN_PASSWORD, AltoServer, alto_server, server_env

pytestmark = pytest.mark.slow

WAIT = "20"  # seconds any one operation may take before the test fails (exit 4)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AltoServer]:
    env = server_env(ALTO_SIM_HOSTS="2", ALTO_SIM_TIMING_SCALE="0.05")
    with alto_server(tmp_path_factory.mktemp("alto-cli-compute"), env=env) as running:
        yield running


@pytest.fixture
def logged_in(server: AltoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ALTO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ALTO_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    # Build the Click tree once; CliRunner.invoke would rebuild all of it on every call.
    monkeypatch.setattr("typer.testing._get_command", lambda _app: _command())
    alto("login", "--url", server.url, "-u", "admin", "--password", ADMIN_PASSWORD)


@functools.cache
def _command() -> Any:
    return typer.main.get_command(app)


def alto(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, list(args), obj=CliState())
    assert result.exit_code == code, (result.output, result.exception)
    return result


def alto_json(*args: str) -> Any:
    return json.loads(alto("-o", "json", *args).stdout)


def test_vm_life_through_the_cli(logged_in: None, tmp_path: Path) -> None:
    types = alto_json("type", "list")
    assert "c1.small" in {t["name"] for t in types}
    assert "c1.small" in alto("type", "list").stdout
    images = alto_json("image", "list", "--state", "available")
    assert images and "cirros-sim" in alto("image", "list").stdout

    vm = alto_json(
        "vm",
        "create",
        "cli-web",
        "--type",
        "c1.small",
        "--image",
        "cirros-sim",
        "--tag",
        "suite=cli",
        "--timeout",
        WAIT,
    )
    assert (vm["state"], vm["power_state"], vm["tags"]) == ("running", "running", {"suite": "cli"})
    assert vm["host_id"]
    listed = alto_json("vm", "list", "--tag", "suite=cli")
    assert [v["id"] for v in listed] == [vm["id"]]

    stopped = alto_json("vm", "stop", vm["id"], "--force", "--wait-timeout", WAIT)
    assert stopped["state"] == "stopped"
    assert "Nothing to do" in alto("vm", "stop", vm["id"]).stderr
    exported = alto_json("vm", "export-image", vm["id"], "cli-golden", "--timeout", WAIT)
    assert exported["state"] == "available" and exported["format"] == "qcow2", exported
    target = tmp_path / "golden.qcow2"
    assert alto_json("image", "download", exported["id"], str(target))["verified"] is True
    assert target.read_bytes()[:4] == b"QFI\xfb"
    assert alto_json("vm", "start", vm["id"], "--timeout", WAIT)["state"] == "running"

    deleted = alto_json("vm", "delete", vm["id"], "--yes", "--timeout", WAIT)
    assert deleted["state"] == "deleted" and deleted["purge_after"]
    assert vm["id"] in [v["id"] for v in alto_json("recycle-bin", "list")]
    assert vm["id"] in alto("recycle-bin", "list").stdout
    assert vm["id"] not in [v["id"] for v in alto_json("vm", "list")]

    hosts = alto_json("host", "list")
    assert len(hosts) == 2 and {h["state"] for h in hosts} == {"up"}
    assert "sim-001" in alto("host", "list").stdout


def test_image_upload_and_download_round_trip(logged_in: None, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 + 3)
    source = tmp_path / "disk.raw"
    source.write_bytes(data)
    image = alto_json("image", "create", "cli-upload", "--file", str(source))
    assert image["state"] == "available"
    assert image["checksum_sha256"] == hashlib.sha256(data).hexdigest()

    target = tmp_path / "back.raw"
    saved = alto_json("image", "download", image["id"], str(target))
    assert saved["verified"] is True and target.read_bytes() == data
    alto("image", "delete", image["id"], "--yes")
