"""One ``NatsBus.subscribe()``: a pull loop on a JetStream consumer and a core responder.

See ``altostack.bus.nats`` for the semantics; this module is the consuming half.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from altostack.bus.base import Handler, Message, Subscription

if TYPE_CHECKING:
    from altostack.bus.nats import NatsBus

log = structlog.get_logger(__name__)

ERROR_HEADER = "Alto-Error"


def encode(data: dict[str, Any]) -> bytes:
    if not isinstance(data, dict):
        raise TypeError(f"bus messages are JSON objects, not {type(data).__name__}")
    return json.dumps(data, separators=(",", ":")).encode()


def decode(payload: bytes) -> dict[str, Any]:
    value = json.loads(payload or b"{}")
    if not isinstance(value, dict):
        raise ValueError(f"bus message is not a JSON object: {payload[:80]!r}")
    return value


def user_headers(headers: dict[str, str] | None) -> dict[str, str]:
    """Headers as the publisher set them, without the ones NATS and this module add."""
    return {
        k: v
        for k, v in (headers or {}).items()
        if not k.lower().startswith("nats-") and k != ERROR_HEADER
    }


def consumer_name(queue: str, pattern: str) -> str:
    digest = hashlib.sha256(pattern.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', queue)[:40]}_{digest}"


class NatsBusSubscription(Subscription):
    """One ``subscribe()``: a pull loop on a JetStream consumer and a core rpc responder."""

    def __init__(self, bus: NatsBus, pattern: str, handler: Handler, queue: str | None):
        self.bus, self.pattern, self.handler, self.queue = bus, pattern, handler, queue
        self.durable = queue is not None
        self.consumer = consumer_name(queue, pattern) if queue else bus.nuid.next().decode()
        self.last_seq = 0  # stream sequence of the last event received
        self._inbox = ""
        self._inflight: set[asyncio.Task[Any]] = set()
        self._slot = asyncio.Event()
        self._ended = asyncio.Event()
        self._current = ""  # reply subject of the pull request in flight
        self._remaining = 0
        self._need_ensure = False
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None
        self._pull_sub: NatsSubscription | None = None
        self._rpc_sub: NatsSubscription | None = None
        self._nc: NatsClient | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        nc, _ = await self.bus.connection()
        self._nc = nc
        await self._first_consumer()
        self._inbox = nc.new_inbox()
        self._pull_sub = await nc.subscribe(f"{self._inbox}.*", cb=self._on_event)
        self._rpc_sub = await nc.subscribe(
            self.bus.rpc_subject(self.pattern), queue=self.queue or "", cb=self._on_request
        )
        await nc.flush(timeout=2)
        self._loop = asyncio.create_task(self._pull_loop(), name=f"bus-pull-{self.consumer}")

    async def _first_consumer(self) -> None:
        """Create the consumer, riding out a JetStream leader election like ``publish`` does."""
        deadline = time.monotonic() + self.bus.publish_deadline
        delay = 0.05
        while True:
            try:
                await self._ensure_consumer()
                return
            except (TimeoutError, nats.errors.Error) as exc:
                code = getattr(exc, "code", None)
                if isinstance(code, int) and code < 500:
                    msg = f"JetStream refused a consumer on {self.pattern!r}: {exc}"
                    raise RuntimeError(msg) from exc
                if time.monotonic() + delay > deadline:
                    raise ConnectionError(
                        f"no JetStream consumer for {self.pattern!r} in "
                        f"{self.bus.publish_deadline}s: {exc}"
                    ) from exc
                log.debug("bus consumer create retry", pattern=self.pattern, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def wake(self) -> None:
        """After a reconnect: check the consumer (a restarted server may have lost it), pull."""
        self._need_ensure = True
        self._ended.set()

    async def unsubscribe(self) -> None:
        """Stop delivery here. A queue group's durable consumer stays for the other members."""
        self.bus.forget(self)
        await self.stop()

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.wait([self._loop], timeout=2.0)
        for nats_sub in (self._rpc_sub, self._pull_sub):
            if nats_sub is not None:
                # drain: the server stops sending, events already here are handed back (nak).
                # Bounded: nats-py waits for its queue without a limit.
                try:
                    async with asyncio.timeout(2.0):
                        await nats_sub.drain()  # type: ignore[no-untyped-call]
                except (TimeoutError, nats.errors.Error):
                    with contextlib.suppress(nats.errors.Error):
                        await nats_sub.unsubscribe()
        if not self.durable and self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.jetstream(timeout=1.0).delete_consumer(
                    self.bus.stream, self.consumer
                )

    # -- the consumer -----------------------------------------------------------------------
    def _consumer_config(self) -> ConsumerConfig:
        common: dict[str, Any] = {
            "name": self.consumer,
            "filter_subject": self.bus.event_subject(self.pattern),
        }
        if self.durable:
            return ConsumerConfig(
                durable_name=self.consumer,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.bus.ack_wait,
                max_deliver=self.bus.max_deliver,
                max_ack_pending=max(1000, self.bus.max_inflight * 16),
                description=f"queue {self.queue!r} on {self.pattern!r}",
                **common,
            )
        start: dict[str, Any] = {"deliver_policy": DeliverPolicy.NEW}
        if self.last_seq:  # re-created: resume after the last event seen
            start = {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": self.last_seq + 1,
            }
        return ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            inactive_threshold=max(30.0, 3 * self.bus.pull_wait),
            mem_storage=True,
            num_replicas=1,
            **start,
            **common,
        )

    async def _ensure_consumer(self, *, again: bool = False) -> None:
        _, js = await self.bus.connection()
        if again and not self.durable:
            try:
                await js.consumer_info(self.bus.stream, self.consumer)
                return  # still there: the silence was the connection's
            except nats.js.errors.NotFoundError:
                pass
            except (TimeoutError, nats.errors.Error) as exc:
                # Unreachable, e.g. its only replica was on a server that died: start a new
                # one from where this one stopped (the old one expires by inactivity).
                log.info("bus re-creates a lost consumer", consumer=self.consumer, error=str(exc))
                self.consumer = self.bus.nuid.next().decode()
        try:
            await js.add_consumer(self.bus.stream, self._consumer_config())
        except nats.js.errors.BadRequestError:
            # An existing durable made with other settings (an older release, another
            # ack_wait): use it as it is rather than fail the subscriber.
            if not self.durable:
                raise
            await js.consumer_info(self.bus.stream, self.consumer)
            log.warning(
                "bus queue consumer exists with other settings; using it", consumer=self.consumer
            )

    async def _pull_loop(self) -> None:
        nc, _ = await self.bus.connection()
        wait = self.bus.pull_wait
        backoff, requests = 0.1, 0
        # ``_stopping`` ends the loop even if a cancellation is swallowed (Python 3.11's
        # wait_for returns the result when its future completes as the task is cancelled).
        while not self._stopping:
            while len(self._inflight) >= self.bus.max_inflight:
                self._slot.clear()
                await self._slot.wait()
            try:
                if self._need_ensure:
                    await self._ensure_consumer(again=True)
                    self._need_ensure = False
                next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.bus.stream}.{self.consumer}"
                requests += 1
                self._current = f"{self._inbox}.{requests}"
                self._remaining = self.bus.max_inflight - len(self._inflight)
                self._ended.clear()
                body = {"batch": self._remaining, "expires": int(wait * 1e9)}
                await nc.publish(next_subject, json.dumps(body).encode(), reply=self._current)
                # Ends on: the batch filled, the server's 404/408/409, or a reconnect.
                async with asyncio.timeout(wait + 1.0):
                    await self._ended.wait()
                backoff = 0.1
                continue
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                # No answer at all: the consumer is gone or the server is not there.
                self._need_ensure = nc.is_connected
                if not nc.is_connected:
                    continue
            except nats.errors.ConnectionClosedError:
                return
            except Exception as exc:
                log.warning("bus pull failed, retrying", consumer=self.consumer, error=str(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _on_event(self, msg: Msg) -> None:
        if not msg.reply:  # a status message: it ends a pull request, or it is stale
            status = (msg.headers or {}).get("Status", "")
            if msg.subject == self._current:
                if status not in ("404", "408", "100"):
                    description = (msg.headers or {}).get("Description", "")
                    log.info(
                        "bus pull status",
                        consumer=self.consumer,
                        status=status,
                        description=description,
                    )
                    self._need_ensure = True
                if status != "100":
                    self._ended.set()
            return
        if self._stopping:
            if self.durable:
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak()
            return
        try:
            meta = msg.metadata
        except nats.errors.Error:
            return  # not a JetStream delivery
        self.last_seq = max(self.last_seq, meta.sequence.stream)
        self._remaining -= 1
        if self._remaining <= 0:
            self._ended.set()
        task = self.bus.spawn(self._handle(msg, meta.num_delivered))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._inflight.discard(task)
        self._slot.set()

    async def _handle(self, msg: Msg, delivered: int) -> None:
        try:
            message = Message(
                self.bus.strip(msg.subject), decode(msg.data), user_headers(msg.headers)
            )
        except ValueError:
            log.error("bus dropped an undecodable event", subject=msg.subject)
            if self.durable:
                await msg.term()
            return
        if not self.durable:
            await _call(self.handler, message, self.pattern)
            return
        keepalive = asyncio.create_task(self._in_progress(msg))
        try:
            ok = await _call(self.handler, message, self.pattern)
        finally:
            keepalive.cancel()
        try:
            if ok:
                await msg.ack()
            elif delivered >= self.bus.max_deliver:
                log.error(
                    "bus gave up on an event after max_deliver attempts",
                    subject=message.subject,
                    queue=self.queue,
                    attempts=delivered,
                )
                await msg.term()
            else:
                await msg.nak(delay=min(self.bus.retry_delay * 2 ** (delivered - 1), 60.0))
        except nats.errors.Error as exc:  # the ack is lost: the event comes back (at least once)
            log.warning("bus could not ack an event", subject=message.subject, error=repr(exc))

    async def _in_progress(self, msg: Msg) -> None:
        """Tell JetStream a long handler is alive, so the event is not redelivered meanwhile."""
        while True:
            await asyncio.sleep(self.bus.ack_wait / 2)
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()

    # -- requests ---------------------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        if msg.reply and not self._stopping:
            self.bus.spawn(self._answer(msg))

    async def _answer(self, msg: Msg) -> None:
        headers: dict[str, str] | None = None
        failure: Exception | None = None
        try:
            message = Message(
                self.bus.strip(msg.subject), decode(msg.data), user_headers(msg.headers)
            )
            body = encode(await self.handler(message) or {})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = exc
            headers = {ERROR_HEADER: f"{type(exc).__name__}: {exc}"[:1000]}
            body = encode({"error": headers[ERROR_HEADER]})
        try:  # answer first: the requester is waiting, the log is not
            assert self._nc is not None
            await self._nc.publish(msg.reply, body, headers=headers)
        except nats.errors.Error as exc:
            log.warning("bus could not send a reply", subject=msg.subject, error=repr(exc))
        if failure is not None:
            log.error(
                "bus responder failed", subject=msg.subject, pattern=self.pattern, exc_info=failure
            )


async def _call(
    handler: Callable[[Message], Awaitable[Any]], message: Message, pattern: str
) -> bool:
    """Run a handler; its failure is logged, never raised (CancelledError always is)."""
    try:
        await handler(message)
        return True
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("bus handler failed", subject=message.subject, pattern=pattern)
        return False
