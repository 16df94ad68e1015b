"""NatsBus against a real nats-server: durability, redelivery, crashes. The shared contract
cases (wildcards, queue groups, request/reply…) are in tests/contract/test_bus_contract.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from altostack.bus import Message, connect, nats_subscription
from altostack.bus.nats import NatsBus, NatsBusSubscription, RemoteError
from tests.support.nats import FailingInbox, Inbox, NatsBuses, NatsServer, nats_admin, running_nats
from tests.support.real import free_port

pytestmark = pytest.mark.real


@pytest.fixture
async def buses(nats_server: NatsServer) -> AsyncIterator[NatsBuses]:
    factory = NatsBuses(nats_server.url)
    try:
        yield factory
    finally:
        await factory.aclose()


async def stream_config(url: str, stream: str) -> Any:
    async with nats_admin(url) as nc:
        return (await nc.jetstream().stream_info(stream)).config


def test_connect_routes_nats_urls_with_options() -> None:
    bus = connect("nats://127.0.0.1:1,nats://127.0.0.1:2?stream=EDGE&replicas=3")
    assert isinstance(bus, NatsBus)
    assert bus.servers == ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]
    assert (bus.stream, bus.prefix, bus.replicas) == ("EDGE", "edge", 3)
    with pytest.raises(ValueError, match="query"):
        connect("nats://127.0.0.1:1?colour=blue")
    with pytest.raises(ValueError, match="stream name"):
        NatsBus("nats://127.0.0.1:1", stream="a.b")


async def test_invalid_subjects_are_refused(buses: NatsBuses) -> None:
    bus = buses.new()
    for bad in ["", "a..b", "a.*", "a.>", "a b"]:
        with pytest.raises(ValueError, match="invalid bus"):
            await bus.publish(bad, {})
    with pytest.raises(ValueError, match="invalid bus pattern"):
        await bus.subscribe("a.>.b", Inbox())


async def test_unreachable_server_is_a_connection_error() -> None:
    bus = NatsBus(f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot use NATS"):
        await bus.ping()
    assert time.monotonic() - started < 3
    await bus.close()


async def test_stream_is_created_with_file_storage_and_limits(
    buses: NatsBuses, nats_server: NatsServer
) -> None:
    await buses.new(max_age=3600.0).ping()
    config = await stream_config(nats_server.url, buses.stream)
    assert config.subjects == [f"{buses.stream.lower()}.ev.>"]
    assert config.storage == "file" and config.max_age == 3600.0
    # a later process with other limits updates the stream, and keeps its replicas
    await buses.new(max_age=7200.0, max_bytes=1 << 20).ping()
    config = await stream_config(nats_server.url, buses.stream)
    assert (config.max_age, config.max_bytes, config.num_replicas) == (7200.0, 1 << 20, 1)


async def test_queue_group_keeps_events_published_while_no_member_runs(buses: NatsBuses) -> None:
    first = buses.new()
    gone = Inbox()
    subscription = await first.subscribe("vm.>", gone, queue="vm-controller")
    await subscription.unsubscribe()
    await first.close()  # the whole process is gone
    publisher = buses.new()
    for i in range(3):
        await publisher.publish(f"vm.v{i}.changed", {"i": i})
    late = Inbox()
    await buses.new().subscribe("vm.>", late, queue="vm-controller")
    await late.wait_for(3)
    assert [m.data["i"] for m in late.messages] == [0, 1, 2]
    assert gone.messages == []


async def test_plain_subscriber_gets_only_what_is_published_after_it_subscribed(
    buses: NatsBuses,
) -> None:
    publisher = buses.new()
    await publisher.publish("ops.created", {"n": "before"})
    inbox = Inbox()
    await buses.new().subscribe("ops.created", inbox)
    await publisher.publish("ops.created", {"n": "after"})
    await inbox.wait_for(1)
    await asyncio.sleep(0.3)
    assert [m.data["n"] for m in inbox.messages] == ["after"]


async def test_failed_handler_gets_the_event_again_until_it_succeeds(buses: NatsBuses) -> None:
    attempts: dict[int, int] = {}
    done = Inbox()

    async def flaky(message: Message) -> None:
        i = message.data["i"]
        attempts[i] = attempts.get(i, 0) + 1
        if i == 1 and attempts[i] < 3:
            raise RuntimeError("transient")
        await done(message)

    await buses.new().subscribe("jobs.run", flaky, queue="runners")
    publisher = buses.new()
    for i in range(3):
        await publisher.publish("jobs.run", {"i": i})
    await done.wait_for(3)
    await asyncio.sleep(0.3)
    assert attempts == {0: 1, 1: 3, 2: 1}
    assert sorted(m.data["i"] for m in done.messages) == [0, 1, 2]


class _Silent:
    """A logger that costs nothing: rendering tracebacks would blur the retry timing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


async def test_redelivery_backs_off_and_stops_after_max_deliver(
    buses: NatsBuses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nats_subscription, "log", _Silent())
    broken = FailingInbox()
    calls: list[float] = []

    async def always_broken(message: Message) -> None:
        calls.append(time.monotonic())
        await broken(message)

    bus = buses.new(max_deliver=3, retry_delay=0.2)
    await bus.subscribe("jobs.bad", always_broken, queue="runners")
    await buses.new().publish("jobs.bad", {})
    await broken.wait_for(3)
    await asyncio.sleep(0.9)  # beyond the next backoff (0.8 s): no fourth attempt
    assert len(calls) == 3
    first, second = calls[1] - calls[0], calls[2] - calls[1]
    assert first >= 0.2 and second >= 0.4, (first, second)  # 0.2 s, then doubled


async def test_event_unacked_by_a_dead_member_goes_to_another(buses: NatsBuses) -> None:
    stuck = asyncio.Event()

    async def hangs(message: Message) -> None:
        stuck.set()
        await asyncio.Event().wait()  # never returns: the process "dies" holding it

    dying = buses.new(ack_wait=1.0)
    await dying.subscribe("vm.ensure", hangs, queue="workers")
    await buses.new().publish("vm.ensure", {"vm": "vm-9"})
    await asyncio.wait_for(stuck.wait(), 5)
    assert dying._nc is not None
    await dying._nc.close()  # connection dropped without an ack, as when a process is killed
    survivor = Inbox()
    await buses.new(ack_wait=1.0).subscribe("vm.ensure", survivor, queue="workers")
    started = time.monotonic()
    await survivor.wait_for(1, timeout=5)
    assert survivor.messages[0].data == {"vm": "vm-9"}
    assert time.monotonic() - started < 4  # ack_wait is 1 s


async def test_plain_subscriber_survives_losing_its_consumer(
    buses: NatsBuses, nats_server: NatsServer
) -> None:
    inbox = Inbox()
    bus = buses.new()
    subscription = await bus.subscribe("net.changed", inbox)
    assert isinstance(subscription, NatsBusSubscription)
    await bus.publish("net.changed", {"n": 1})
    await inbox.wait_for(1)
    async with nats_admin(nats_server.url) as nc:  # an operator (or inactivity) deletes it
        await nc.jetstream().delete_consumer(buses.stream, subscription.consumer)
    await bus.publish("net.changed", {"n": 2})  # published while no consumer exists
    await inbox.wait_for(2, timeout=5)  # re-created from the last sequence seen
    assert [m.data["n"] for m in inbox.messages] == [1, 2]


async def test_duplicate_message_ids_are_stored_once(buses: NatsBuses) -> None:
    inbox = Inbox()
    bus = buses.new()
    await bus.subscribe("billing.usage", inbox)
    for _ in range(2):  # a retried publish of the same message
        await bus.publish("billing.usage", {"n": 1}, headers={"Nats-Msg-Id": "usage-1"})
    await bus.publish("billing.usage", {"n": 2})
    await inbox.wait_for(2)
    await asyncio.sleep(0.3)
    assert [m.data["n"] for m in inbox.messages] == [1, 2]
    assert inbox.messages[0].headers == {}  # NATS' own headers are not the caller's


async def test_failing_responder_raises_remote_error(buses: NatsBuses) -> None:
    async def broken(message: Message) -> dict[str, Any]:
        raise KeyError("vm-3")

    await buses.new().subscribe("agent.h3.ensure", broken, queue="agents")
    with pytest.raises(RemoteError, match="KeyError"):
        await buses.new().request("agent.h3.ensure", {}, timeout=2)


async def test_request_to_a_slow_responder_times_out(buses: NatsBuses) -> None:
    async def slow(message: Message) -> dict[str, Any]:
        await asyncio.sleep(2)
        return {}

    await buses.new().subscribe("agent.h4.ensure", slow)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no reply"):
        await buses.new().request("agent.h4.ensure", {}, timeout=0.3)
    assert time.monotonic() - started < 1


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    """A server of the test's own, since the test kills it."""
    with running_nats() as server:
        yield server


@pytest.mark.slow
async def test_publish_rides_out_a_server_crash_and_restart(own_nats: NatsServer) -> None:
    # each attempt waits 0.3 s for its acknowledgement, the server is down for longer:
    # only retrying gets the event through
    buses = NatsBuses(own_nats.url, publish_deadline=10.0, publish_timeout=0.3)
    try:
        sub_bus, pub_bus = buses.new(), buses.new()
        plain, worker = Inbox(), Inbox()
        await sub_bus.subscribe("vm.>", plain)
        await sub_bus.subscribe("vm.>", worker, queue="vm-controller")
        await pub_bus.publish("vm.v1.started", {"n": 1})
        await worker.wait_for(1)
        await plain.wait_for(1)

        own_nats.kill()
        with pytest.raises(ConnectionError):
            await pub_bus.ping()
        publishing = asyncio.create_task(pub_bus.publish("vm.v2.started", {"n": 2}))
        late = Inbox()
        subscribing = asyncio.create_task(sub_bus.subscribe("vm.>", late, queue="late"))
        await asyncio.sleep(1.0)
        assert not publishing.done(), "publish must wait and retry while the server is down"
        assert not subscribing.done(), "subscribe too"
        started = time.monotonic()
        own_nats.restart()
        await asyncio.wait_for(publishing, 10)
        print(f"\npublish acknowledged {time.monotonic() - started:.2f}s after the restart")
        await asyncio.wait_for(subscribing, 10)
        await pub_bus.publish("vm.v3.started", {"n": 3})
        await late.wait_for(1)
        assert late.messages[-1].data == {"n": 3}
        await worker.wait_for(2, timeout=10)  # the durable consumer survived on disk
        await plain.wait_for(2, timeout=10)  # the ephemeral one was re-created
        assert [m.data["n"] for m in worker.messages][:2] == [1, 2]
        assert [m.data["n"] for m in plain.messages][:2] == [1, 2]
        await pub_bus.ping()
    finally:
        await buses.aclose()


@pytest.mark.slow
async def test_publish_gives_up_at_its_deadline(own_nats: NatsServer) -> None:
    buses = NatsBuses(own_nats.url, publish_deadline=1.0, publish_timeout=0.2)
    try:
        bus = buses.new()
        await bus.ping()
        own_nats.kill()
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="no acknowledgement") as raised:
            await bus.publish("vm.v1.started", {})
        assert 0.9 < time.monotonic() - started < 3.0
        attempts = int(str(raised.value).split("(")[1].split()[0])
        assert attempts >= 3, str(raised.value)
    finally:
        own_nats.restart()
        await buses.aclose()


@pytest.mark.slow
async def test_close_while_the_server_is_down_is_clean(own_nats: NatsServer) -> None:
    buses = NatsBuses(own_nats.url, publish_deadline=0.3, publish_timeout=0.1)
    before = asyncio.all_tasks()
    bus = buses.new()
    await bus.subscribe("vm.>", Inbox())
    await bus.subscribe("vm.>", Inbox(), queue="workers")
    own_nats.kill()
    with pytest.raises(ConnectionError):
        await bus.publish("vm.v1.started", {})  # leaves data in the reconnect buffer
    await asyncio.wait_for(bus.close(), 5)
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == [], f"tasks left running after close: {leftover}"
