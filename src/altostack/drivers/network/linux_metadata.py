"""The metadata service at 169.254.169.254, served by the agent inside each router namespace.

The router namespace carries 169.254.169.254/32 on its loopback and DHCP gives every VM
a route to it through its subnet's gateway, so a VM's request arrives at the router with
the VM's own source address: the service identifies the instance by that address among
the VPC's ``instances`` (one server per router, so overlapping CIDRs of other VPCs never
mix). No NAT is involved and nothing listens outside the namespace: the socket is made
inside it (:func:`linux_netns.listening_socket`) and served by the agent's event loop, so
no process runs per VPC — and nothing answers while the driver is not running (the agent
owns the driver; a new one re-creates the servers in ``ensure_router``).

Layouts are the ones cloud-init reads: OpenStack's ``/openstack/<version>/meta_data.json``
and ``user_data``, EC2's ``/<version>/meta-data/…`` and ``/<version>/user-data``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from http import HTTPStatus

import h11

from altostack.drivers.network.base import InstanceMetadata

PORT = 80
Answer = tuple[int, str, bytes]
_MAX_REQUEST = 16384


def _text(body: str) -> Answer:
    return 200, "text/plain; charset=utf-8", body.encode()


_NOT_FOUND: Answer = (404, "text/plain; charset=utf-8", b"not found\n")


def answer(instance: InstanceMetadata | None, path: str) -> Answer:
    """The response to ``GET path`` from ``instance`` (None: an address we do not know)."""
    if instance is None:
        return _NOT_FOUND
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts and parts[0] == "openstack":
        return _openstack(instance, parts[1:])
    if not parts:
        return _text("latest\n")
    return _ec2(instance, parts[1:])


def _openstack(instance: InstanceMetadata, parts: list[str]) -> Answer:
    if not parts:
        return _text("latest\n")
    if len(parts) == 1:
        files = ["meta_data.json", "network_data.json", "vendor_data.json"]
        return _text("\n".join([*files, "user_data"] if instance.user_data else files) + "\n")
    name = parts[1]
    if name == "meta_data.json":
        keys = {f"key-{n}": key for n, key in enumerate(instance.public_keys)}
        document = {
            "uuid": instance.instance_id,
            "name": instance.hostname,
            "hostname": instance.hostname,
            "public_keys": keys,
            "launch_index": 0,
        }
        return 200, "application/json", json.dumps(document).encode()
    if name in ("network_data.json", "vendor_data.json"):
        return 200, "application/json", b"{}"
    if name == "user_data" and instance.user_data is not None:
        return 200, "application/octet-stream", instance.user_data.encode()
    return _NOT_FOUND


def _ec2(instance: InstanceMetadata, parts: list[str]) -> Answer:
    if not parts:
        return _text("meta-data\n" + ("user-data\n" if instance.user_data else ""))
    if parts[0] == "user-data":
        if instance.user_data is None:
            return _NOT_FOUND
        return 200, "application/octet-stream", instance.user_data.encode()
    if parts[0] != "meta-data":
        return _NOT_FOUND
    values = {
        "instance-id": instance.instance_id,
        "hostname": instance.hostname,
        "local-hostname": instance.hostname,
        "local-ipv4": instance.ip,
    }
    if instance.public_ip is not None:
        values["public-ipv4"] = instance.public_ip
    rest = parts[1:]
    if not rest:
        names = sorted(values) + (["public-keys/"] if instance.public_keys else [])
        return _text("\n".join(names) + "\n")
    if rest[0] == "public-keys" and instance.public_keys:
        return _public_keys(instance, rest[1:])
    if len(rest) == 1 and rest[0] in values:
        return _text(values[rest[0]])
    return _NOT_FOUND


def _public_keys(instance: InstanceMetadata, rest: list[str]) -> Answer:
    keys = instance.public_keys
    if not rest:
        return _text("\n".join(f"{n}=key-{n}" for n in range(len(keys))) + "\n")
    try:
        key = keys[int(rest[0])]
    except (ValueError, IndexError):
        return _NOT_FOUND
    if len(rest) == 1:
        return _text("openssh-key\n")
    if rest[1:] == ["openssh-key"]:
        return _text(key + "\n")
    return _NOT_FOUND


Lookup = Callable[[str], InstanceMetadata | None]


async def serve(sock: socket.socket, lookup: Lookup) -> asyncio.Server:
    """Serve metadata on an already listening ``sock`` (made inside the router namespace)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(_exchange(reader, writer, lookup), 10)
        except (TimeoutError, OSError, h11.ProtocolError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, sock=sock)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lookup: Lookup
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST)
    peer = writer.get_extra_info("peername")[0]
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(4096)
            conn.receive_data(data)
            if not data and conn.their_state is not h11.DONE:
                return
            continue
        if isinstance(event, h11.Request):
            break
        return
    target = event.target.decode("ascii", "replace")
    if event.method in (b"GET", b"HEAD"):
        status, kind, body = answer(lookup(peer), target)
    else:
        status, kind, body = 405, "text/plain; charset=utf-8", b"method not allowed\n"
    headers = [
        ("content-type", kind),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    reason = HTTPStatus(status).phrase.encode()
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
    if event.method != b"HEAD":
        out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    writer.write(out)
    await writer.drain()
