"""The one ASGI middleware in front of every request.

In order: a request id (echoed in ``X-Request-Id`` and bound to every log line), the
caller's identity, and for mutations the request's unit of work, the idempotency replay,
and the audit event. It is plain ASGI (no BaseHTTPMiddleware) because it sits on the hot
path of every read.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError

from altostack.api import problems
from altostack.api.schemas import OperationOut
from altostack.domain.errors import DomainError, InvalidRequest, Unauthenticated
from altostack.logging import REQUEST_ID
from altostack.services.context import Principal, RequestContext
from altostack.services.events import build_event
from altostack.services.idempotency import StoredResponse, check_key, request_fingerprint

if TYPE_CHECKING:
    from altostack.bootstrap import Container

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = structlog.get_logger(__name__)

SIGNED_SCHEME = "ALTO1-HMAC-SHA256"
_OPERATION_PATH = re.compile(r"^/v1/operations/([A-Za-z0-9_-]{1,64})$")
_OPERATION_ROUTE = SimpleNamespace(path="/v1/operations/{id}", name="operation.get")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY = 8 * 1024 * 1024
REPLAY_HEADER = "idempotent-replayed"


class _Captured:
    """Collects a response so it can be stored and sent after the commit."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def stored(self) -> StoredResponse:
        keep = {b"content-type", b"location"}
        headers = {k.decode(): v.decode() for k, v in self.headers if k.lower() in keep}
        return StoredResponse(self.status, bytes(self.body), headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_of(scope: Scope) -> tuple[str, str | None]:
    route = scope.get("route")
    if route is None:
        return "unmatched", None
    return getattr(route, "path", "unmatched"), getattr(route, "name", None)


async def _read_body(receive: Receive) -> bytes:
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks += message.get("body", b"")
        if len(chunks) > MAX_BODY:
            raise _TooLarge()
        if not message.get("more_body"):
            break
    return bytes(chunks)


class _TooLarge(Exception):
    pass


class _KeyRace(Exception):
    """Another request with the same idempotency key committed while we waited."""


def _problem_captured(scope: Scope, exc: DomainError) -> _Captured:
    response = problems.from_domain(exc, scope.get("path"))
    captured = _Captured()
    captured.status = exc.status
    captured.headers = list(response.raw_headers)
    captured.body = bytearray(bytes(response.body))
    return captured


def _crashed(scope: Scope) -> _Captured:
    captured = _Captured()
    body = problems.problem_body(
        500, "an internal error occurred; it was logged", instance=scope.get("path")
    )
    captured.headers = [(b"content-type", problems.MEDIA_TYPE.encode())]
    captured.body = bytearray(json.dumps(body).encode())
    return captured


def _replay_receive(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _send_response(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def _render_operation(view: dict[str, Any]) -> bytes:
    return OperationOut.model_validate(view).model_dump_json().encode()


class ApiMiddleware:
    def __init__(self, app: ASGIApp, container: Container) -> None:
        self.app = app
        self.c = container

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or ""
        if not (0 < len(request_id) <= 64 and request_id.isprintable()):
            request_id = os.urandom(16).hex()
        REQUEST_ID.set(request_id)  # logged by altostack.logging.add_request_id
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        client = scope.get("client")
        source_ip = client[0] if client else None
        status_holder = [0]  # 0: no response started yet
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        try:
            body: bytes | None = None
            if (_header(scope, b"authorization") or "").startswith(SIGNED_SCHEME):
                body = await _read_body(receive)  # the signature covers the body
                receive = _replay_receive(body)
            principal = await self._authenticate(scope, state, body)
            ctx = RequestContext(principal, request_id, source_ip) if principal else None
            state["ctx"] = ctx
            path: str = scope["path"]
            if ctx is not None and scope["method"] == "GET" and not scope.get("query_string"):
                match = _OPERATION_PATH.match(path)
                if match is not None:
                    status_holder[0] = 200
                    await self._operation_fast(scope, send, send_with_id, ctx, match.group(1))
                    return
            streamed = _header(scope, b"content-type") == "application/octet-stream"
            if scope["method"] in MUTATING and path.startswith("/v1/") and streamed:
                await self._upload(scope, receive, send_with_id, ctx)
            elif scope["method"] in MUTATING and path.startswith("/v1/"):
                await self._mutation(scope, receive, send_with_id, ctx, source_ip)
            else:
                await self.app(scope, receive, send_with_id)
        except _TooLarge:
            await self._problem(send_with_id, scope, 413, "request body is over 8 MiB")
        except Exception as exc:
            if status_holder[0]:
                # Starlette's error middleware inside has answered (our problem handler
                # logged it) and re-raised for the server's sake: nothing left to do.
                return
            log.exception("request crashed", path=scope.get("path"), exc_info=exc)
            await self._problem(
                send_with_id, scope, 500, "an internal error occurred; it was logged"
            )
        finally:
            route, _ = _route_of(scope)
            self.c.metrics.observe(
                scope["method"], route, status_holder[0] or 500, time.perf_counter() - started
            )

    async def _operation_fast(
        self, scope: Scope, raw_send: Send, send: Send, ctx: RequestContext, op_id: str
    ) -> None:
        """``GET /v1/operations/{id}``, the path every client polls, answered without the
        framework: same authorisation, same body bytes as the routed handler (a test holds
        them equal), a fraction of the cost."""
        scope["route"] = _OPERATION_ROUTE
        try:
            body = await self.c.operations.view_rendered(ctx, op_id, _render_operation)
        except DomainError as exc:
            response = problems.from_domain(exc, scope["path"])
            await _send_response(send, exc.status, response.raw_headers, bytes(response.body))
            return
        # The success answer's headers are built in one go (the wrapper ``send`` would
        # copy them to add the request id): the same bytes, ~2 % less CPU per poll.
        headers = [
            _JSON_CONTENT_TYPE,
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", scope["state"]["request_id"].encode()),
        ]
        await raw_send({"type": "http.response.start", "status": 200, "headers": headers})
        await raw_send({"type": "http.response.body", "body": body})

    async def _problem(self, send: Send, scope: Scope, status: int, detail: str) -> None:
        body = problems.problem_body(status, detail, instance=scope.get("path"))
        await _send_response(
            send,
            status,
            [(b"content-type", problems.MEDIA_TYPE.encode())],
            json.dumps(body).encode(),
        )

    async def _authenticate(
        self, scope: Scope, state: dict[str, Any], body: bytes | None
    ) -> Principal | None:
        header = _header(scope, b"authorization")
        if not header:
            return None
        try:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return await self.c.auth.authenticate_token(credentials.strip())
            if scheme == SIGNED_SCHEME:
                raw_path = scope.get("raw_path") or scope["path"].encode()
                return await self.c.auth.authenticate_signature(
                    header,
                    method=scope["method"],
                    path=raw_path.decode("latin-1"),
                    query=scope.get("query_string", b""),
                    body=body or b"",
                )
            raise Unauthenticated(
                "unsupported Authorization scheme; use 'Bearer <token>' from "
                f"POST /v1/auth/tokens or a signed '{SIGNED_SCHEME}' request"
            )
        except DomainError as exc:
            state["auth_error"] = exc
            return None

    async def _mutation(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        ctx: RequestContext | None,
        source_ip: str | None,
    ) -> None:
        body = await _read_body(receive)
        key = _header(scope, b"idempotency-key") if scope["method"] == "POST" else None
        principal = ctx.principal if ctx else None
        if key is not None and principal is not None:
            try:
                check_key(key)
            except DomainError as exc:
                response = problems.from_domain(exc, scope["path"])
                await _send_response(send, exc.status, response.raw_headers, bytes(response.body))
                return
            fingerprint = request_fingerprint(
                scope["method"], scope["path"], scope.get("query_string", b"").decode(), body
            )
            idem: tuple[str, str, str] | None = (principal.user_id, key, fingerprint)
        else:
            idem = None
        try:
            if principal is None:
                # Only logging in (or a 401) happens without a caller: the service keeps
                # its own transactions, e.g. to count a failed attempt that must survive.
                captured, replayed = _Captured(), False
                await self.app(scope, _replay_receive(body), captured.send)
                ctx = scope["state"].get("ctx")
                if captured.status < 400 and ctx is not None:
                    await self.c.events.record(self._event(scope, ctx, captured, "success"))
            else:
                captured, replayed = await self._run_in_transaction(scope, body, ctx, idem)
        except DBAPIError as exc:
            reason = problems.bad_value_reason(exc)
            if reason is None:
                log.exception("mutation crashed", path=scope.get("path"), exc_info=exc)
                captured, replayed = _crashed(scope), False
            else:  # a value from the request that the database refused at commit
                captured, replayed = _problem_captured(scope, InvalidRequest(reason)), False
        except Exception as exc:
            log.exception("mutation crashed", path=scope.get("path"), exc_info=exc)
            captured, replayed = _crashed(scope), False
        headers = captured.headers
        if replayed:
            headers = [*headers, (REPLAY_HEADER.encode(), b"true")]
        if captured.status >= 400 and (principal or _is_login(scope)):
            await self._record_failure(scope, ctx, source_ip, captured)
        await _send_response(send, captured.status, headers, bytes(captured.body))

    async def _upload(
        self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext | None
    ) -> None:
        """Large bodies (image uploads) stream through: no buffering, no request
        transaction (the service commits what it must), but an event all the same."""
        status = [500]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if ctx is not None:
            captured = _Captured()
            captured.status = status[0]
            result = "success" if status[0] < 400 else "failure"
            await self.c.events.record(self._event(scope, ctx, captured, result))

    async def _run_in_transaction(
        self,
        scope: Scope,
        body: bytes,
        ctx: RequestContext | None,
        idem: tuple[str, str, str] | None,
    ) -> tuple[_Captured, bool]:
        for _attempt in range(3):
            try:
                return await self._attempt(scope, body, ctx, idem)
            except _KeyRace:
                # A twin request with the same key committed first: replay its answer.
                continue
        raise DomainError("could not settle a concurrent request with the same key")

    async def _attempt(
        self,
        scope: Scope,
        body: bytes,
        ctx: RequestContext | None,
        idem: tuple[str, str, str] | None,
    ) -> tuple[_Captured, bool]:
        captured = _Captured()
        async with self.c.db.uow() as uow:
            if idem is not None:
                try:
                    stored = await self.c.idempotency.find(uow, *idem)
                except DomainError as exc:
                    response = problems.from_domain(exc, scope["path"])
                    captured.status = exc.status
                    captured.headers = list(response.raw_headers)
                    captured.body = bytearray(bytes(response.body))
                    return captured, False
                if stored is not None:
                    captured.status = stored.status_code
                    captured.headers = [(k.encode(), v.encode()) for k, v in stored.headers.items()]
                    captured.body = bytearray(stored.body)
                    return captured, True
                try:
                    await self.c.idempotency.reserve(uow, *idem)
                except IntegrityError as exc:
                    raise _KeyRace() from exc
            await self.app(scope, _replay_receive(body), captured.send)
            ctx = scope["state"].get("ctx") or ctx  # login establishes the caller late
            if captured.status < 400:
                if idem is not None:
                    await self.c.idempotency.complete(uow, idem[0], idem[1], captured.stored())
                if ctx is not None:
                    self.c.events.add(uow, self._event(scope, ctx, captured, "success"))
                await uow.commit()
        return captured, False

    def _event(
        self,
        scope: Scope,
        ctx: RequestContext | None,
        captured: _Captured,
        result: str,
    ) -> Any:
        _, name = _route_of(scope)
        action = (ctx.audit.action if ctx else None) or name or f"{scope['method']} {scope['path']}"
        resource_type = (ctx.audit.resource_type if ctx else None) or action.split(".")[0]
        resource_id = (ctx.audit.resource_id if ctx else None) or _resource_id(scope, captured)
        reason = None
        if result == "failure":
            reason = _failure_reason(captured)
        return build_event(
            principal=ctx.principal if ctx else None,
            action=action,
            result=result,
            request_id=scope["state"]["request_id"],
            source_ip=(scope.get("client") or [None])[0],
            resource_type=resource_type,
            resource_id=resource_id,
            status_code=captured.status,
            failure_reason=reason,
            operation_id=ctx.audit.operation_id if ctx else None,
            tenant_id=ctx.audit.details.get("tenant_id") if ctx else None,
            details={
                **scope["state"].get("audit_details", {}),
                **(ctx.audit.details if ctx else {}),
            },
        )

    async def _record_failure(
        self,
        scope: Scope,
        ctx: RequestContext | None,
        source_ip: str | None,
        captured: _Captured,
    ) -> None:
        try:
            await self.c.events.record(self._event(scope, ctx, captured, "failure"))
        except Exception:
            log.exception("could not record failure event")


def _is_login(scope: Scope) -> bool:
    return bool(scope["path"] == "/v1/auth/tokens")


def _resource_id(scope: Scope, captured: _Captured) -> str | None:
    params = scope.get("path_params") or {}
    if "id" in params:
        return str(params["id"])
    if captured.status >= 400 or not captured.body:
        return None
    try:
        data = json.loads(captured.body)
    except ValueError:
        return None
    if isinstance(data, dict):
        if isinstance(data.get("id"), str):
            return str(data["id"])
        for value in data.values():
            ident = value.get("id") if isinstance(value, dict) else None
            if isinstance(ident, str) and not ident.startswith("op-"):
                return ident
    return None


def _failure_reason(captured: _Captured) -> str | None:
    try:
        data = json.loads(captured.body)
    except ValueError:
        return None
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("title") or "")
    return None
