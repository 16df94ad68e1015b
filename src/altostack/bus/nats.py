"""NATS JetStream bus for clusters: many processes, one stream of events, commands by request.

Subjects. Our dot subjects live under a prefix, the stream name in lower case (``alto``):

- ``publish("vm.started", …)`` stores ``alto.ev.vm.started`` in the JetStream stream ``ALTO``
  (subjects ``alto.ev.>``, file storage, bounded by ``max_age`` and ``max_bytes``);
- ``request("agent.h1.ensure", …)`` is a core NATS request on ``alto.rpc.agent.h1.ensure``,
  never stored (a command to a dead agent must fail, not wait in a queue).

Every ``subscribe(pattern, handler, queue=…)`` makes two things: a pull consumer on the
stream (events) and a core subscription on the rpc subjects (requests; its handler's return
value is the reply). Delivery of events:

- no queue: an ephemeral consumer (deliver new, no acks): each subscriber gets every event
  published after it subscribed, at most once. If the consumer is lost (server restart,
  long disconnection) it is re-created from the last sequence seen, so a short outage loses
  nothing.
- ``queue="name"``: a durable consumer named after the queue and the pattern, shared by all
  members: each event goes to one member, is acked when the handler returns, and is
  redelivered (after ``retry_delay``, doubling) when the handler raises or the process dies
  before the ack (after ``ack_wait``), at most ``max_deliver`` times: at least once.
  Unsubscribing leaves the durable consumer in place, so events published while no member
  runs wait for the next one.

Errors translated at this boundary (``raise … from`` the nats-py error):

    ConnectionError  the bus is closed, NATS is unreachable, or JetStream did not acknowledge
                     a publish before ``publish_deadline`` (retried with backoff until then)
    TimeoutError     a request found no responder, or no reply came within its timeout
    RemoteError      the responder's handler raised (a RuntimeError; the reply says why)
    ValueError       an invalid subject or pattern

The URL is ``nats://host:port[,nats://host2:port…][?stream=NAME&replicas=3]``. The consuming
half (pull loops, acks, the rpc responder) is ``altostack.bus.nats_subscription``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.nuid import NUID

from altostack.bus.base import Bus, Handler, Subscription
from altostack.bus.nats_subscription import (
    ERROR_HEADER,
    NatsBusSubscription,
    decode,
    encode,
)

log = structlog.get_logger(__name__)

_TOKEN = re.compile(r"^[^\s.*>]+$")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_STREAM_EXISTS = 10058  # JetStream: stream name already in use with a different configuration
# Errors after which publishing again may succeed (reconnect, leader election, JetStream
# still starting). A JetStream API error is retried only when it is a 5xx.
_RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.FlushTimeoutError,
)


class RemoteError(RuntimeError):
    """The responder's handler raised; ``str()`` carries its exception type and message."""


def check_subject(subject: str, *, wildcards: bool) -> None:
    """Dot-separated non-empty tokens; ``*`` anywhere and ``>`` last only in patterns."""
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if wildcards and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        if not _TOKEN.match(token):
            kind = "pattern" if wildcards else "subject (no wildcards)"
            raise ValueError(f"invalid bus {kind} {subject!r}")


def _parse_url(url: str) -> tuple[list[str], dict[str, str]]:
    base, _, query = url.partition("?")
    servers = [s if "://" in s else f"nats://{s}" for s in base.split(",") if s]
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(options) - {"stream", "replicas"}
    if not servers or unknown:
        raise ValueError(f"invalid NATS bus URL {url!r} (query may hold stream= and replicas=)")
    return servers, options


class NatsBus(Bus):
    """The cluster bus. Connects lazily on first use (``connect(url)`` is synchronous)."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = "ALTO",
        name: str | None = None,
        replicas: int | None = None,
        max_age: float = 24 * 3600.0,
        max_bytes: int = 1 << 30,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        retry_delay: float = 1.0,
        publish_timeout: float = 2.0,
        publish_deadline: float = 30.0,
        pull_wait: float = 5.0,
        max_inflight: int = 64,
        drain_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
        connect_timeout: float = 5.0,
    ) -> None:
        self.servers, options = _parse_url(url)
        self.stream = options.get("stream", stream)
        if not _STREAM_NAME.match(self.stream):
            raise ValueError(f"invalid JetStream stream name {self.stream!r}")
        self.prefix = self.stream.lower()
        self.replicas = int(options["replicas"]) if "replicas" in options else replicas
        self.name = name or f"altostack-{socket.gethostname()}-{os.getpid()}"
        self.max_age, self.max_bytes = max_age, max_bytes
        self.ack_wait, self.max_deliver, self.retry_delay = ack_wait, max_deliver, retry_delay
        self.publish_timeout, self.publish_deadline = publish_timeout, publish_deadline
        self.pull_wait, self.max_inflight = pull_wait, max_inflight
        self.drain_timeout, self.reconnect_wait = drain_timeout, reconnect_wait
        self.connect_timeout = connect_timeout
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._subs: set[NatsBusSubscription] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.nuid = NUID()

    # -- subjects ---------------------------------------------------------------------------
    def event_subject(self, subject: str) -> str:
        return f"{self.prefix}.ev.{subject}"

    def rpc_subject(self, subject: str) -> str:
        return f"{self.prefix}.rpc.{subject}"

    def strip(self, nats_subject: str) -> str:
        return nats_subject.split(".", 2)[2]

    # -- connection -------------------------------------------------------------------------
    async def connection(self) -> tuple[NatsClient, JetStreamContext]:
        """The live client and JetStream context, connecting (and creating the stream) once."""
        if self._closed:
            raise ConnectionError("bus is closed")
        if self._nc is None or self._js is None:
            async with self._lock:
                if self._nc is None:
                    await self._connect()
        assert self._nc is not None and self._js is not None
        return self._nc, self._js

    async def _connect(self) -> None:
        nc = NatsClient()
        try:
            # nats-py retries the initial connect forever when reconnects are unbounded:
            # bound it here, so an unreachable bus is an error the caller sees.
            async with asyncio.timeout(self.connect_timeout):
                await nc.connect(
                    servers=self.servers,
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                    connect_timeout=2,
                    ping_interval=10,
                    max_outstanding_pings=3,
                    drain_timeout=max(1, int(self.drain_timeout)),
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
            js = nc.jetstream(timeout=self.publish_timeout)
            await self._ensure_stream(js)
        except asyncio.CancelledError:
            await nc.close()
            raise
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await nc.close()
            raise ConnectionError(f"cannot use NATS at {','.join(self.servers)}: {exc!r}") from exc
        self._nc, self._js = nc, js
        log.info("bus connected", servers=self.servers, stream=self.stream)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.ev.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            duplicate_window=120.0,
            num_replicas=self.replicas or 1,
        )
        try:
            await js.add_stream(config)
            return
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise
        current = (await js.stream_info(self.stream)).config
        wanted = {
            "max_age": self.max_age,
            "max_bytes": self.max_bytes,
            "subjects": config.subjects,
            "num_replicas": self.replicas,
        }
        changes = {k: v for k, v in wanted.items() if v is not None and getattr(current, k) != v}
        if changes:  # replicas=None keeps what the stream has (another process chose it)
            log.info("bus stream updated", stream=self.stream, changes=changes)
            await js.update_stream(current.evolve(**changes))

    async def _on_error(self, exc: Exception) -> None:
        level = log.debug if isinstance(exc, OSError) else log.warning
        level("nats client error", error=repr(exc))

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("bus disconnected from NATS, reconnecting", servers=self.servers)

    async def _on_reconnected(self) -> None:
        log.info("bus reconnected to NATS")
        for sub in list(self._subs):
            sub.wake()  # pull requests waiting on the old connection are gone

    def forget(self, sub: NatsBusSubscription) -> None:
        self._subs.discard(sub)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- Bus --------------------------------------------------------------------------------
    async def publish(
        self, subject: str, data: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        check_subject(subject, wildcards=False)
        payload = encode(data)
        # One message id for every attempt: JetStream drops the duplicate if an attempt whose
        # acknowledgement we lost had in fact been stored.
        hdrs = {"Nats-Msg-Id": self.nuid.next().decode(), **(headers or {})}
        _, js = await self.connection()
        target = self.event_subject(subject)
        deadline = time.monotonic() + self.publish_deadline
        delay, attempts = 0.05, 0
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            try:
                await js.publish(
                    target,
                    payload,
                    timeout=max(0.05, min(self.publish_timeout, remaining)),
                    stream=self.stream,
                    headers=hdrs,
                )
                if attempts > 1:
                    log.info(
                        "bus publish succeeded after retries", subject=subject, attempts=attempts
                    )
                return
            except nats.errors.ConnectionClosedError as exc:
                raise ConnectionError("bus is closed") from exc
            except nats.js.errors.APIError as exc:
                if exc.code is not None and exc.code < 500:
                    raise RuntimeError(f"JetStream refused {subject!r}: {exc}") from exc
                error: Exception = exc
            except _RETRYABLE as exc:
                error = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                raise ConnectionError(
                    f"publish {subject!r}: JetStream gave no acknowledgement in "
                    f"{self.publish_deadline}s ({attempts} attempts; last: {error!r})"
                ) from error
            log.debug("bus publish retry", subject=subject, attempt=attempts, error=repr(error))
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)

    async def subscribe(
        self, pattern: str, handler: Handler, *, queue: str | None = None
    ) -> Subscription:
        check_subject(pattern, wildcards=True)
        if queue is not None and not queue.strip():
            raise ValueError("queue group names must not be blank")
        sub = NatsBusSubscription(self, pattern, handler, queue)
        await sub.start()
        self._subs.add(sub)
        return sub

    async def request(
        self, subject: str, data: dict[str, Any], *, timeout: float
    ) -> dict[str, Any]:
        check_subject(subject, wildcards=False)
        nc, _ = await self.connection()
        try:
            reply = await nc.request(self.rpc_subject(subject), encode(data), timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise TimeoutError(f"no responder for {subject!r}: nobody subscribes to it") from exc
        except nats.errors.TimeoutError as exc:
            raise TimeoutError(f"no reply to {subject!r} within {timeout}s") from exc
        except nats.errors.ConnectionClosedError as exc:
            raise ConnectionError("bus is closed") from exc
        error = (reply.headers or {}).get(ERROR_HEADER)
        if error is not None:
            raise RemoteError(f"responder for {subject!r} failed: {error}")
        return decode(reply.data)

    async def ping(self) -> None:
        nc, js = await self.connection()
        if not nc.is_connected:
            raise ConnectionError("not connected to NATS (reconnecting)")
        try:
            await nc.flush(timeout=2)
            await js.stream_info(self.stream)
        except (TimeoutError, nats.errors.Error) as exc:
            raise ConnectionError(f"NATS or stream {self.stream} unavailable: {exc!r}") from exc

    async def close(self) -> None:
        """Stop pulling, let running handlers finish (up to ``drain_timeout``), drain."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(sub.stop() for sub in list(self._subs)))
        self._subs.clear()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._nc is not None:
            await _shutdown(self._nc)
        self._nc = self._js = None


async def _shutdown(nc: NatsClient) -> None:
    """Drain a connected client; close one that is down, whatever nats-py raises on the way."""
    if nc.is_connected:
        try:
            await nc.drain()
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            log.debug("bus drain failed", error=repr(exc))
    if not nc.is_closed:
        if not nc.is_connected:
            # While reconnecting, nats-py's close() writes its reconnect buffer to the dead
            # socket and stops halfway (subscription tasks left running) when that fails.
            # Nothing buffered can be delivered now: drop it first.
            nc._pending.clear()
            nc._pending_data_size = 0
        with contextlib.suppress(TimeoutError, OSError, nats.errors.Error):
            await nc.close()
