"""The console proxy: the noVNC page, and a WebSocket ⇄ TCP relay to a VNC listener.

The relay speaks what websockify speaks (noVNC's server side): each binary WebSocket
message carries raw RFB bytes, in both directions, and the ``binary`` subprotocol is
accepted when offered. It never looks inside the RFB stream: the browser's noVNC does
the VNC handshake (and the password) itself, end to end with QEMU.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import re
import secrets
from dataclasses import dataclass

import structlog
from starlette.websockets import WebSocket, WebSocketState

log = structlog.get_logger(__name__)

CONNECT_SECONDS = 5.0
CHUNK = 64 * 1024
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


@dataclass
class RelayStats:
    """What one session carried, for the audit event when it closes."""

    to_vnc: int = 0
    from_vnc: int = 0
    ended_by: str = ""


async def open_vnc(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP to the VNC listener, bounded (a host that drops packets must not hang us)."""
    return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_SECONDS)


async def relay(
    websocket: WebSocket,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    idle_seconds: float,
) -> RelayStats:
    """Carry bytes both ways until either side closes or nothing moves for
    ``idle_seconds``; then close both sides."""
    stats = RelayStats()
    loop = asyncio.get_running_loop()
    last = [loop.time()]

    async def browser_to_vnc() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                stats.ended_by = "browser"
                return
            data = message.get("bytes")
            if data is None:  # websockify's binary protocol has no text frames
                stats.ended_by = "browser sent text"
                return
            last[0] = loop.time()
            stats.to_vnc += len(data)
            writer.write(data)
            await writer.drain()

    async def vnc_to_browser() -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                stats.ended_by = "vnc"
                return
            last[0] = loop.time()
            stats.from_vnc += len(data)
            await websocket.send_bytes(data)

    async def watchdog() -> None:
        while True:
            left = last[0] + idle_seconds - loop.time()
            if left <= 0:
                stats.ended_by = "idle"
                return
            await asyncio.sleep(left)

    tasks = [
        asyncio.create_task(browser_to_vnc()),
        asyncio.create_task(vnc_to_browser()),
        asyncio.create_task(watchdog()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                stats.ended_by = stats.ended_by or f"error: {type(error).__name__}"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        await close_quietly(websocket, 1000 if stats.ended_by in ("vnc", "browser") else 1001)
    return stats


async def close_quietly(websocket: WebSocket, code: int) -> None:
    """Close the WebSocket if it is still open (the browser may already be gone)."""
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):
        await websocket.close(code=code)


def security_headers(nonce: str, host: str | None) -> dict[str, str]:
    """The page holds a VNC password: never cached, never sent on as a referrer, never
    framed, and it runs only its own scripts."""
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    policy = (
        "default-src 'none'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        f"style-src 'nonce-{nonce}'; "
        f"connect-src 'self'{sockets}; "
        "img-src 'self' data: blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return {
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": policy,
    }


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def _json_for_script(value: object) -> str:
    """JSON that cannot end the <script> element it sits in."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(
    *, vm_id: str, vm_name: str, socket_path: str, password: str | None, nonce: str
) -> str:
    """The console page: noVNC's RFB client on a canvas, a status line, Ctrl-Alt-Del.

    noVNC is loaded as ES modules from ``./novnc/`` (served from the novnc package's
    directory); the WebSocket goes to the same host and scheme the page came from."""
    config = _json_for_script(
        {"vm": vm_id, "name": vm_name, "path": socket_path, "password": password}
    )
    title = html.escape(f"{vm_name} ({vm_id}) - console")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style nonce="{nonce}">
  html, body {{ margin: 0; height: 100%; background: #1e1e1e; color: #ddd;
               font: 13px system-ui, sans-serif; }}
  #bar {{ height: 28px; display: flex; align-items: center; gap: 12px; padding: 0 10px;
          background: #2d2d2d; border-bottom: 1px solid #444; }}
  #bar button {{ font: inherit; }}
  #screen {{ position: absolute; top: 29px; bottom: 0; left: 0; right: 0; }}
</style>
</head>
<body>
<div id="bar"><strong>{html.escape(vm_name)}</strong><span id="status">Connecting…</span>
<button id="cad" type="button">Send Ctrl-Alt-Del</button></div>
<div id="screen"></div>
<script id="alto-console" type="application/json">{config}</script>
<script type="module" nonce="{nonce}">
import RFB from "./novnc/core/rfb.js";

const config = JSON.parse(document.getElementById("alto-console").textContent);
document.getElementById("alto-console").remove();
// The token in the address bar is spent: keep it out of history and bookmarks.
history.replaceState(null, "", location.pathname);
const status = document.getElementById("status");
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const rfb = new RFB(document.getElementById("screen"), scheme + location.host + config.path, {{
  credentials: {{ password: config.password || "" }},
  wsProtocols: ["binary"],
}});
rfb.scaleViewport = true;
rfb.addEventListener("connect", () => {{ status.textContent = "Connected"; }});
rfb.addEventListener("disconnect", (e) => {{
  status.textContent = e.detail.clean ? "Disconnected" : "Connection lost";
}});
rfb.addEventListener("securityfailure", (e) => {{
  status.textContent = "VNC authentication failed: " + (e.detail.reason || e.detail.status);
}});
rfb.addEventListener("desktopname", (e) => {{ document.title = e.detail.name; }});
document.getElementById("cad").addEventListener("click", () => rfb.sendCtrlAltDel());
</script>
</body>
</html>
"""
