"""The VNC console: one-time tokens, WebSocket tickets, and the host agent's endpoint.

Two signed, single-use credentials carry a browser from the API to the VM's screen:

1. the *token* in the URL that ``POST /v1/vms/{id}/actions/console`` returns (300 s): it
   opens the console page once. Opening it asks the VM's host agent for the console
   endpoint, which sets a fresh VNC password (earlier ones stop working);
2. the *ticket* that page uses for its WebSocket (60 s).

Both are HMACs under a key derived from the server secret, naming the VM, the expiry, a
nonce and who asked. Their single use is recorded in the database (``console_grants``,
keyed by nonce), so it is race-free across API processes and survives restarts (an
in-memory set would forget on restart, and a second API server would not share it). The
ticket's row also holds the VNC listener it leads to: the browser never sees the host's
address.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from altostack.bus import Bus
from altostack.db.database import Database
from altostack.db.models_compute import ConsoleGrant, Vm
from altostack.db.types import utcnow
from altostack.domain import vm_states
from altostack.domain.errors import (
    Conflict,
    DomainError,
    Gone,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from altostack.services.agent_calls import ask_agent
from altostack.services.context import Principal
from altostack.services.events import EventService, build_event

log = structlog.get_logger(__name__)

TOKEN_SECONDS = 300
TICKET_SECONDS = 60
_PAGE = "page"
_SOCKET = "ws"


def derive_key(master_key: bytes) -> bytes:
    """The console's own key: a token can never be mistaken for another signed value."""
    return hmac.new(master_key, b"altostack console v1", hashlib.sha256).digest()


def _sign(key: bytes, claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode())
    text = body.decode().rstrip("=")
    mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    return f"{text}.{mac}"


def _verify(key: bytes, value: str, kind: str, now: float) -> dict[str, Any]:
    """The claims of a genuine, unexpired credential of this kind (forged: 403, expired:
    410 — the caller asks for a new one either way)."""
    text, _, mac = value.partition(".")
    expected = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    if not text or not hmac.compare_digest(mac, expected):
        raise PermissionDenied("the console link is not valid; ask for a new one")
    try:
        claims = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except ValueError:
        raise PermissionDenied("the console link is not valid; ask for a new one") from None
    if not isinstance(claims, dict) or claims.get("k") != kind:
        raise PermissionDenied("the console link is not valid here; ask for a new one")
    if float(claims.get("exp", 0)) < now:
        raise Gone("the console link has expired; ask for a new one")
    return claims


def issue_token(master_key: bytes, vm_id: str, principal: Principal) -> tuple[str, datetime]:
    """The one-time token for ``vm_id`` (the caller was already authorised for it). It
    names the caller so the console's audit events say who opened it."""
    expires = utcnow() + timedelta(seconds=TOKEN_SECONDS)
    claims = {
        "k": _PAGE,
        "vm": vm_id,
        "exp": int(expires.timestamp()),
        "n": secrets.token_hex(16),
        "uid": principal.user_id,
        "who": principal.display,
        "tid": principal.tenant_id,
        "am": principal.auth_method,
    }
    return _sign(derive_key(master_key), claims), expires


@dataclass(frozen=True)
class ConsolePage:
    """What the console page needs. ``password`` is the fresh VNC password: it goes into
    this one page and nowhere else (not logged, not in events)."""

    vm_id: str
    vm_name: str
    ticket: str
    password: str | None
    expires_at: datetime


@dataclass(frozen=True)
class ConsoleTarget:
    """Where a WebSocket ticket leads (from its database row), and on whose behalf."""

    vm_id: str
    tenant_id: str
    host: str
    port: int
    actor: Principal


def _console_allowed(state: str) -> bool:
    try:
        return vm_states.check("console", state)
    except ValueError:
        return False


def _actor(claims: dict[str, Any]) -> Principal:
    tenant_name, _, username = str(claims.get("who", "")).partition("/")
    return Principal(
        user_id=str(claims.get("uid", "")),
        username=username,
        tenant_id=str(claims.get("tid", "")),
        tenant_name=tenant_name,
        role="",
        is_platform_admin=False,
        auth_method=str(claims.get("am", "")),
    )


class ConsoleService:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        events: EventService,
        master_key: bytes,
        *,
        agent_timeout: float,
    ) -> None:
        self.db = db
        self.bus = bus
        self.events = events
        self.key = derive_key(master_key)
        self.agent_timeout = agent_timeout

    async def open_page(self, token: str, source_ip: str | None = None) -> ConsolePage:
        """Spend the token, get a fresh endpoint from the host agent, make the ticket.

        A genuine token that cannot be used (spent, VM stopped, host silent) leaves a
        failure event: someone holding a link is worth knowing about."""
        claims = _verify(self.key, token, _PAGE, time.time())
        vm_id = str(claims.get("vm", ""))
        try:
            return await self._open(claims, vm_id, source_ip)
        except DomainError as exc:
            failure = build_event(
                principal=_actor(claims),
                action="vm.console.open",
                result="failure",
                source_ip=source_ip,
                resource_type="vm",
                resource_id=vm_id,
                status_code=exc.status,
                failure_reason=exc.detail,
                tenant_id=str(claims.get("tid", "")) or None,
            )
            with contextlib.suppress(Exception):
                await self.events.record(failure)
            raise

    async def _open(self, claims: dict[str, Any], vm_id: str, source_ip: str | None) -> ConsolePage:
        async with self.db.uow(write=False) as uow:
            vm = await uow.session.get(Vm, vm_id)
        if vm is None:
            raise NotFound.resource("VM", vm_id)
        if not _console_allowed(vm.state) or not vm.host_id:
            raise Conflict(
                f"cannot open the console of VM {vm.id}: it is {vm.state}",
                extra={"current_state": vm.state},
            )
        await self._spend_token(str(claims.get("n", "")), vm.id, float(claims["exp"]))
        endpoint = await self._ask_agent(vm.host_id, vm.id)
        expires = utcnow() + timedelta(seconds=TICKET_SECONDS)
        nonce = secrets.token_hex(16)
        ticket = _sign(
            self.key,
            {
                **{k: claims.get(k) for k in ("uid", "who", "tid", "am")},
                "k": _SOCKET,
                "vm": vm.id,
                "t": vm.tenant_id,
                "exp": int(expires.timestamp()),
                "n": nonce,
            },
        )
        async with self.db.uow() as uow:  # the ticket's row and the event, together
            uow.session.add(
                ConsoleGrant(
                    nonce=nonce,
                    kind=_SOCKET,
                    vm_id=vm.id,
                    host=str(endpoint["host"]),
                    port=int(endpoint["port"]),
                    used=False,
                    expires_at=expires,
                )
            )
            self.events.add(
                uow,
                build_event(
                    principal=_actor(claims),
                    action="vm.console.open",
                    result="success",
                    source_ip=source_ip,
                    resource_type="vm",
                    resource_id=vm.id,
                    status_code=200,
                    tenant_id=vm.tenant_id,
                ),
            )
            await uow.commit()
        password = endpoint.get("password")
        return ConsolePage(vm.id, vm.name, ticket, str(password) if password else None, expires)

    async def connect(self, ticket: str) -> ConsoleTarget:
        """Spend a WebSocket ticket; where to relay to."""
        claims = _verify(self.key, ticket, _SOCKET, time.time())
        nonce = str(claims.get("n", ""))
        async with self.db.uow() as uow:
            # Conditional: of two uses racing, exactly one flips ``used``.
            spent = await uow.session.execute(
                update(ConsoleGrant)
                .where(
                    ConsoleGrant.nonce == nonce,
                    ConsoleGrant.kind == _SOCKET,
                    ConsoleGrant.used.is_(False),
                )
                .values(used=True)
            )
            row = (
                await uow.session.execute(
                    select(ConsoleGrant.host, ConsoleGrant.port).where(ConsoleGrant.nonce == nonce)
                )
            ).first()
            await uow.commit()
        if not getattr(spent, "rowcount", 0) or row is None or row.host is None:
            raise Gone("this console link was already used; ask for a new one")
        return ConsoleTarget(
            str(claims["vm"]), str(claims["t"]), row.host, int(row.port or 0), _actor(claims)
        )

    async def record(
        self,
        target: ConsoleTarget,
        action: str,
        *,
        source_ip: str | None,
        result: str = "success",
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """An audit event about a console session (never with the password)."""
        try:
            await self.events.record(
                build_event(
                    principal=target.actor,
                    action=action,
                    result=result,
                    source_ip=source_ip,
                    resource_type="vm",
                    resource_id=target.vm_id,
                    failure_reason=reason,
                    tenant_id=target.tenant_id,
                    details=details,
                )
            )
        except Exception:
            log.exception("could not record console event", action=action, vm_id=target.vm_id)

    async def _spend_token(self, nonce: str, vm_id: str, exp: float) -> None:
        now = utcnow()
        try:
            async with self.db.uow() as uow:
                # Grants are only needed until they would have expired anyway.
                await uow.session.execute(delete(ConsoleGrant).where(ConsoleGrant.expires_at < now))
                uow.session.add(
                    ConsoleGrant(
                        nonce=nonce,
                        kind=_PAGE,
                        vm_id=vm_id,
                        used=True,
                        expires_at=datetime.fromtimestamp(exp, UTC),
                    )
                )
                await uow.commit()
        except IntegrityError:
            raise Gone("this console link was already used; ask for a new one") from None

    async def _ask_agent(self, host_id: str, vm_id: str) -> dict[str, Any]:
        """The agent's ``console`` command: the endpoint with a fresh password."""
        reply = await ask_agent(
            self.bus, host_id, "console", timeout=self.agent_timeout, vm_id=vm_id
        )
        endpoint = reply.get("console")
        if not isinstance(endpoint, dict) or "host" not in endpoint or "port" not in endpoint:
            raise Unavailable(f"the agent gave no console endpoint for VM {vm_id}")
        return endpoint
