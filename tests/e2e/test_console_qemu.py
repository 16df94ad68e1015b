"""The console proxy in front of a real QEMU VM: the API's one-time URL, the host agent's
``console`` command (a fresh VNC password over QMP), and QEMU's own RFB greeting read
through the WebSocket.

One guest, no wait for the guest OS: QEMU's VNC server answers as soon as QEMU runs. The
API VM is created on an in-process sim host whose agent is then switched to the qemu
driver, which runs a QEMU under the same VM id (the all-in-one's qemu wiring is not
needed for this).
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from altostack.api.app import create_app
from altostack.drivers.compute.base import VmSpec
from altostack.drivers.compute.local_images import LocalImageCache
from altostack.drivers.compute.qemu import QemuComputeDriver
from tests.compute.conftest import act, create_vm
from tests.conftest import make_settings
from tests.contract import conftest as _contract  # noqa: F401  (defines what the harness extends)
from tests.contract.qemu_harness import guest_image, kill_qemus_under
from tests.identity.helpers import make_tenant
from tests.support.console import BANNER, page_config, serving


@pytest.fixture
def db_url(sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    """SQLite only: the database is not what this test is about."""
    target = tmp_path / "alto.db"
    shutil.copy(sqlite_template, target)
    yield f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def settings(db_url, tmp_path):
    novnc = tmp_path / "novnc"
    (novnc / "core").mkdir(parents=True)
    (novnc / "core" / "rfb.js").write_text("export default class RFB {}\n")
    return make_settings(db_url, tmp_path, sim_hosts=1, novnc_dir=novnc)


@pytest.fixture
def qemu_root() -> Iterator[Path]:
    image = guest_image()
    root = Path(tempfile.mkdtemp(prefix="alto-console-e2e-"))
    (root / "image.qcow2").hardlink_to(image)
    try:
        yield root
    finally:
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def base(container) -> AsyncIterator[str]:
    async with serving(create_app(container, manage_lifecycle=False)) as address:
        yield address


@pytest.mark.slow
@pytest.mark.real
async def test_the_real_rfb_greeting_through_the_proxy(container, client, admin, qemu_root, base):
    _, owner = await make_tenant(client, admin, "console")
    vm = await create_vm(client, owner, name="screen")
    images = LocalImageCache(qemu_root / "images")
    images.add(vm["image_id"], qemu_root / "image.qcow2")
    driver = QemuComputeDriver(qemu_root / "state", images, hostname="console-e2e")
    spec = VmSpec(vm["id"], "screen", vm["generation"], 1, 128, 1, vm["image_id"])
    assert (await driver.ensure_vm(spec)).state == "running"
    (agent,) = container.agents
    agent.compute = driver  # the host agent now answers for the QEMU

    r = await act(client, owner, vm["id"], "console")
    assert r.status_code == 200, r.text
    async with httpx.AsyncClient(base_url=f"http://{base}", timeout=30) as http:
        page = await http.get(r.json()["url"])
    assert page.status_code == 200, page.text
    config = page_config(page.text)
    assert config["password"] and len(config["password"]) == 8  # QEMU's VNC limit

    async with connect(f"ws://{base}{config['path']}", subprotocols=["binary"]) as ws:
        assert await asyncio.wait_for(ws.recv(), 10) == BANNER  # QEMU's own greeting
        await ws.send(BANNER)
        got = bytearray()
        while not got or len(got) < 1 + got[0]:
            got += await asyncio.wait_for(ws.recv(), 10)
        count = got[0]
        types = set(struct.unpack(f"{count}B", bytes(got[1 : 1 + count])))
        assert types == {2}, types  # VNC authentication only: the password is required
