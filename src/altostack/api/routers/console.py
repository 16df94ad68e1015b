"""The VNC console in the browser: the one-time page and its WebSocket.

Neither route takes an ``Authorization`` header (a browser opening a link or a WebSocket
cannot send one): the one-time token and ticket are the authorisation, issued by
``POST /v1/vms/{id}/actions/console`` (permission ``vm:console``) to a caller who could
see the VM. They are browser endpoints, not API, so they stay out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, FastAPI, Query, Request, WebSocket
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from altostack.api import console_proxy, problems
from altostack.api.deps import C
from altostack.domain.errors import DomainError, Unavailable

if TYPE_CHECKING:
    from altostack.bootstrap import Container

router = APIRouter(tags=["console"])

PAGE_PATH = "/v1/console/vnc"
SOCKET_PATH = "/v1/console/websockify"
NOVNC_PATH = "/v1/console/novnc"
# noVNC's RFB client needs only these two directories of the package.
NOVNC_PARTS = ("core", "vendor")


def mount_novnc(app: FastAPI, novnc_dir: Path) -> None:
    """Serve noVNC's modules next to the page (same origin, so the CSP stays 'self')."""
    for part in NOVNC_PARTS:
        app.mount(
            f"{NOVNC_PATH}/{part}",
            StaticFiles(directory=novnc_dir / part, check_dir=False),
            name=f"novnc-{part}",
        )


@router.get(PAGE_PATH, include_in_schema=False, name="console.page")
async def console_page(
    request: Request,
    c: C,
    token: Annotated[str, Query(max_length=2048)] = "",
) -> HTMLResponse:
    """Spend the token and answer the noVNC page wired to a one-time WebSocket ticket."""
    novnc: Path = c.settings.novnc_dir
    if not (novnc / "core" / "rfb.js").is_file():
        raise Unavailable(
            f"noVNC is not installed in {novnc} (apt-get install novnc, or set ALTO_NOVNC_DIR)"
        )
    client = request.client
    page = await c.console.open_page(token, client.host if client else None)
    nonce = console_proxy.new_nonce()
    body = console_proxy.render_page(
        vm_id=page.vm_id,
        vm_name=page.vm_name,
        socket_path=f"{SOCKET_PATH}?ticket={page.ticket}",
        password=page.password,
        nonce=nonce,
    )
    headers = console_proxy.security_headers(nonce, request.headers.get("host"))
    return HTMLResponse(body, headers=headers)


async def _refuse(websocket: WebSocket, exc: DomainError) -> None:
    """Refuse before the handshake completes: an HTTP problem where the server can send
    one (uvicorn can), else a policy-violation close (which browsers see as a 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = problems.problem_body(
            exc.status, exc.detail, code=exc.code, title=exc.title, instance=SOCKET_PATH
        )
        await websocket.send_denial_response(problems.problem_response(exc.status, body))
    else:
        await websocket.close(code=1008, reason=exc.detail[:120])


@router.websocket(SOCKET_PATH, name="console.websockify")
async def console_socket(
    websocket: WebSocket,
    ticket: Annotated[str, Query(max_length=2048)] = "",
) -> None:
    """Relay a noVNC WebSocket to the VM's VNC listener (websockify framing)."""
    c: Container = websocket.app.state.container
    client = websocket.client
    source_ip = client.host if client else None
    try:
        target = await c.console.connect(ticket)
    except DomainError as exc:
        await _refuse(websocket, exc)
        return
    try:
        reader, writer = await console_proxy.open_vnc(target.host, target.port)
    except (OSError, TimeoutError) as exc:
        reason = f"cannot reach the VNC listener of VM {target.vm_id}: {type(exc).__name__}"
        await c.console.record(
            target, "vm.console.connect", source_ip=source_ip, result="failure", reason=reason
        )
        await _refuse(websocket, Unavailable(reason))
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in offered else None)
    await c.console.record(target, "vm.console.connect", source_ip=source_ip)
    stats = await console_proxy.relay(
        websocket, reader, writer, idle_seconds=c.settings.console_idle_seconds
    )
    await c.console.record(
        target,
        "vm.console.close",
        source_ip=source_ip,
        details={
            "bytes_to_vm": stats.to_vnc,
            "bytes_from_vm": stats.from_vnc,
            "ended_by": stats.ended_by,
        },
    )
