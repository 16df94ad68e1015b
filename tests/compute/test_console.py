"""The VNC console in the browser, on the sim driver with a fake VNC server on loopback:
one-time page, one-time WebSocket ticket, websockify-style relay both ways, refusals."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from altostack.api.app import create_app
from altostack.services.console import _sign, derive_key
from tests.compute.conftest import act, create_vm, wait_op
from tests.conftest import make_settings
from tests.identity.helpers import make_tenant
from tests.support.console import BANNER, FakeVnc, page_config, serving


@pytest.fixture
def settings(db_url, tmp_path):
    novnc = tmp_path / "novnc"  # a stand-in for Debian's /usr/share/novnc
    (novnc / "core").mkdir(parents=True)
    (novnc / "core" / "rfb.js").write_text("export default class RFB {}\n")
    (novnc / "vendor").mkdir()
    return make_settings(db_url, tmp_path, sim_hosts=1, operation_max_attempts=3, novnc_dir=novnc)


@pytest.fixture
async def base(container) -> AsyncIterator[str]:
    async with serving(create_app(container, manage_lifecycle=False)) as address:
        yield address


@pytest.fixture
async def http(base) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{base}", timeout=10) as client:
        yield client


@pytest.fixture
async def vnc() -> AsyncIterator[FakeVnc]:
    async with FakeVnc() as server:
        yield server


def _point_at(container, vm_id: str, port: int) -> None:
    """Make the sim VM's console listener the fake VNC server."""
    (hypervisor,) = container.sim_hypervisors.values()
    hypervisor.require(vm_id).console_port = port


async def _console_vm(container, client, owner, vnc: FakeVnc) -> dict[str, Any]:
    vm = await create_vm(client, owner)
    _point_at(container, vm["id"], vnc.port)
    return vm


async def _url(client, owner, vm_id: str) -> str:
    r = await act(client, owner, vm_id, "console")
    assert r.status_code == 200, r.text
    return str(r.json()["url"])


async def _recv_exactly(ws, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += await asyncio.wait_for(ws.recv(), 5)
    return bytes(got)


async def test_console_relays_rfb_both_ways(container, client, owner, http, base, vnc):
    vm = await _console_vm(container, client, owner, vnc)
    page = await http.get(await _url(client, owner, vm["id"]))
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    config = page_config(page.text)
    (hypervisor,) = container.sim_hypervisors.values()
    password = hypervisor.console_password(vm["id"])
    assert password and config["password"] == password  # fresh, from the agent
    assert config["path"].startswith("/v1/console/websockify?ticket=")
    ticket = config["path"].split("ticket=")[1].split(".")[0]
    claims = json.loads(base64.urlsafe_b64decode(ticket + "=" * (-len(ticket) % 4)))
    assert vnc.port not in claims.values() and "127.0.0.1" not in claims.values()
    assert (await http.get("/v1/console/novnc/core/rfb.js")).status_code == 200

    async with connect(f"ws://{base}{config['path']}", subprotocols=["binary"]) as ws:
        assert ws.subprotocol == "binary"
        assert await asyncio.wait_for(ws.recv(), 5) == BANNER
        await ws.send(BANNER)
        assert await _recv_exactly(ws, len(BANNER)) == BANNER
        blob = os.urandom(300_000)
        await ws.send(blob)
        assert await _recv_exactly(ws, len(blob)) == blob
    await asyncio.wait_for(vnc.closed.wait(), 5)  # the browser left: the TCP side closes
    assert vnc.received == [BANNER + blob]

    wanted = {"vm.console.open", "vm.console.connect", "vm.console.close"}
    for _ in range(100):  # the close event follows the TCP close by a moment
        events = (await client.get(f"/v1/events?resource_id={vm['id']}", headers=owner)).json()
        actions = {e["action"]: e for e in events["items"]}
        if wanted <= actions.keys():
            break
        await asyncio.sleep(0.05)
    for action in ("vm.console.open", "vm.console.connect", "vm.console.close"):
        assert actions[action]["actor_name"] == "compute/owner", actions
    assert actions["vm.console.close"]["details"]["bytes_to_vm"] == len(BANNER) + len(blob)
    assert password not in str(events)


async def test_vnc_closing_closes_the_websocket(container, client, owner, http, base):
    async with FakeVnc(close_after_banner=True) as vnc:
        vm = await _console_vm(container, client, owner, vnc)
        config = page_config((await http.get(await _url(client, owner, vm["id"]))).text)
        async with connect(f"ws://{base}{config['path']}") as ws:
            assert ws.subprotocol is None  # none offered, none chosen
            assert await asyncio.wait_for(ws.recv(), 5) == BANNER
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


async def test_token_and_ticket_are_single_use(container, client, owner, http, base, vnc):
    vm = await _console_vm(container, client, owner, vnc)
    url = await _url(client, owner, vm["id"])
    first, second = await asyncio.gather(http.get(url), http.get(url))  # a race: one wins
    assert sorted([first.status_code, second.status_code]) == [200, 410]
    loser = second if second.status_code == 410 else first
    assert loser.headers["content-type"] == "application/problem+json"
    assert loser.json()["code"] == "Gone" and "already used" in loser.json()["detail"]
    winner = first if first.status_code == 200 else second
    path = page_config(winner.text)["path"]
    async with connect(f"ws://{base}{path}") as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == BANNER
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{base}{path}"):
            pass
    assert refused.value.response.status_code == 410
    assert vnc.connections == 1
    path = f"/v1/events?resource_id={vm['id']}&action=vm.console.open&result=failure"
    (failed,) = (await client.get(path, headers=owner)).json()["items"]
    assert failed["status_code"] == 410 and failed["actor_name"] == "compute/owner"


async def test_forged_and_expired_links_are_refused(container, client, owner, http, base, vnc):
    vm = await _console_vm(container, client, owner, vnc)
    url = await _url(client, owner, vm["id"])
    body, mac = url.split("token=")[1].split(".")
    forged = f"/v1/console/vnc?token={body}.{'0' * len(mac)}"
    assert (await http.get(forged)).status_code == 403
    assert (await http.get("/v1/console/vnc")).status_code == 403
    assert (await http.get("/v1/console/vnc?token=garbage")).status_code == 403
    key = derive_key(container.settings.master_key())
    expired = _sign(key, {"k": "page", "vm": vm["id"], "exp": 1, "n": "x"})
    r = await http.get(f"/v1/console/vnc?token={expired}")
    assert r.status_code == 410 and "expired" in r.json()["detail"]
    # a genuine page token is not a WebSocket ticket, and a forged ticket is refused
    for ticket in (url.split("token=")[1], f"{body}.{'0' * len(mac)}"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://{base}/v1/console/websockify?ticket={ticket}"):
                pass
        assert refused.value.response.status_code == 403
    assert vnc.connections == 0
    assert (await http.get(url)).status_code == 200  # the refusals did not spend it


async def test_another_tenants_vm_is_not_found(container, client, admin, owner, vnc):
    vm = await _console_vm(container, client, owner, vnc)
    _, other = await make_tenant(client, admin, "other")
    r = await act(client, other, vm["id"], "console")
    assert r.status_code == 404, r.text


async def test_stopped_vm_has_no_console(container, client, owner, http, vnc):
    vm = await _console_vm(container, client, owner, vnc)
    url = await _url(client, owner, vm["id"])  # issued while running
    op = await wait_op(
        client, owner, (await act(client, owner, vm["id"], "stop")).json()["operation"]
    )
    assert op["state"] == "succeeded", op
    r = await act(client, owner, vm["id"], "console")
    assert r.status_code == 409 and r.json()["current_state"] == "stopped"
    r = await http.get(url)
    assert r.status_code == 409 and r.json()["current_state"] == "stopped"


async def test_unreachable_vnc_listener_is_503(container, client, owner, http, base):
    async with FakeVnc() as vnc:
        vm = await _console_vm(container, client, owner, vnc)
    # the fake server is gone: nothing listens on its port any more
    config = page_config((await http.get(await _url(client, owner, vm["id"]))).text)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{base}{config['path']}"):
            pass
    assert refused.value.response.status_code == 503


async def test_an_idle_console_is_closed(container, client, owner, http, base, vnc):
    container.settings.console_idle_seconds = 0.5
    vm = await _console_vm(container, client, owner, vnc)
    config = page_config((await http.get(await _url(client, owner, vm["id"]))).text)
    async with connect(f"ws://{base}{config['path']}") as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == BANNER
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    await asyncio.wait_for(vnc.closed.wait(), 5)
    for _ in range(100):  # the close event follows the TCP close by a moment
        path = f"/v1/events?resource_id={vm['id']}&action=vm.console.close"
        items = (await client.get(path, headers=owner)).json()["items"]
        if items:
            break
        await asyncio.sleep(0.05)
    assert items[0]["details"]["ended_by"] == "idle"
