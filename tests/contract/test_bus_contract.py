"""The bus contract (``altostack.bus.base.Bus``), run on every implementation.

``memory``: the in-process bus of the all-in-one. ``nats``: NatsBus on a real nats-server
with JetStream; every ``make()`` there is a separate connection, as separate processes are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from altostack.bus import Bus, Message
from altostack.bus.memory import MemoryBus
from tests.support.nats import FailingInbox, Inbox, NatsBuses, NatsServer, running_nats

MakeBus = Callable[[], Awaitable[Bus]]
QUIET = 0.3  # how long "nothing more arrives" is watched


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with running_nats() as server:
        yield server


@pytest.fixture(params=["memory", pytest.param("nats", marks=pytest.mark.real)])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    """A factory of handles on one bus: the same MemoryBus, or new NatsBus connections."""
    if request.param == "memory":
        memory = MemoryBus()

        async def same() -> Bus:
            return memory

        yield same
        await memory.close()
        return
    server: NatsServer = request.getfixturevalue("nats_server")
    buses = NatsBuses(server.url)

    async def new() -> Bus:
        return buses.new()

    try:
        yield new
    finally:
        await buses.aclose()


async def test_wildcards_match_one_token_or_the_rest(make_bus: MakeBus) -> None:
    sub_bus, pub_bus = await make_bus(), await make_bus()
    exact, star, rest = Inbox(), Inbox(), Inbox()
    await sub_bus.subscribe("vm.a.started", exact)
    await sub_bus.subscribe("vm.*.started", star)
    await sub_bus.subscribe("vm.>", rest)
    for subject in ["vm.a.started", "vm.b.started", "vm.a.b.started", "vm", "net.a.started"]:
        await pub_bus.publish(subject, {"s": subject})
    await rest.wait_for(3)
    await star.wait_for(2)
    await exact.wait_for(1)
    await asyncio.sleep(QUIET)
    assert sorted(exact.subjects) == ["vm.a.started"]
    assert sorted(star.subjects) == ["vm.a.started", "vm.b.started"]
    assert sorted(rest.subjects) == ["vm.a.b.started", "vm.a.started", "vm.b.started"]
    assert all(m.data == {"s": m.subject} for m in rest.messages)


async def test_data_and_headers_arrive_as_sent(make_bus: MakeBus) -> None:
    sub_bus, pub_bus = await make_bus(), await make_bus()
    inbox = Inbox()
    await sub_bus.subscribe("ops.created", inbox)
    data = {"id": "op-1", "n": 3, "nested": {"ok": True, "items": [1, "two", None]}}
    await pub_bus.publish("ops.created", data, headers={"X-Request-Id": "req-7"})
    await inbox.wait_for(1)
    assert inbox.messages == [Message("ops.created", data, {"X-Request-Id": "req-7"})]


async def test_two_plain_subscribers_both_get_every_message(make_bus: MakeBus) -> None:
    first, second, pub_bus = await make_bus(), await make_bus(), await make_bus()
    a, b = Inbox(), Inbox()
    await first.subscribe("auth.invalidate", a)
    await second.subscribe("auth.invalidate", b)
    for i in range(5):
        await pub_bus.publish("auth.invalidate", {"i": i})
    await a.wait_for(5)
    await b.wait_for(5)
    assert sorted(m.data["i"] for m in a.messages) == list(range(5))
    assert sorted(m.data["i"] for m in b.messages) == list(range(5))


async def test_queue_group_delivers_each_message_to_exactly_one_member(make_bus: MakeBus) -> None:
    group, watcher, pub_bus = Inbox(), Inbox(), await make_bus()
    await (await make_bus()).subscribe("jobs.>", group, queue="workers")
    await (await make_bus()).subscribe("jobs.>", group, queue="workers")
    await (await make_bus()).subscribe("jobs.>", watcher)  # not in the group: gets all
    count = 30
    for i in range(count):
        await pub_bus.publish(f"jobs.k{i % 3}", {"i": i})
    await watcher.wait_for(count)
    await group.wait_for(count)
    await asyncio.sleep(QUIET)
    got = [m.data["i"] for m in group.messages]
    assert sorted(got) == list(range(count)), "each message exactly once in the group"


async def test_request_gets_the_handlers_reply(make_bus: MakeBus) -> None:
    agent, caller = await make_bus(), await make_bus()

    async def ensure(message: Message) -> dict[str, Any]:
        return {"vm": message.data["vm"], "state": "running", "subject": message.subject}

    async def silent(message: Message) -> None:
        return None

    await agent.subscribe("agent.h1.ensure", ensure)
    await agent.subscribe("agent.h1.noop", silent)
    reply = await caller.request("agent.h1.ensure", {"vm": "vm-1"}, timeout=2)
    assert reply == {"vm": "vm-1", "state": "running", "subject": "agent.h1.ensure"}
    assert await caller.request("agent.h1.noop", {}, timeout=2) == {}


async def test_request_without_responder_raises_timeout_within_the_timeout(
    make_bus: MakeBus,
) -> None:
    caller = await make_bus()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await caller.request("agent.gone.ensure", {"vm": "vm-1"}, timeout=0.3)
    assert time.monotonic() - started < 0.3 + 0.7


async def test_request_to_a_failing_responder_raises_not_hangs(make_bus: MakeBus) -> None:
    agent, caller = await make_bus(), await make_bus()

    async def broken(message: Message) -> dict[str, Any]:
        raise ValueError("boom: disk full")

    await agent.subscribe("agent.h2.ensure", broken)
    started = time.monotonic()
    with pytest.raises(Exception, match="boom: disk full") as raised:
        await caller.request("agent.h2.ensure", {}, timeout=2)
    assert not isinstance(raised.value, TimeoutError)
    assert time.monotonic() - started < 2.0  # the request's timeout


async def test_failing_handler_breaks_neither_publisher_nor_other_subscribers(
    make_bus: MakeBus,
) -> None:
    sub_bus, pub_bus = await make_bus(), await make_bus()
    broken, good = FailingInbox(), Inbox()
    await sub_bus.subscribe("vm.changed", broken)
    await sub_bus.subscribe("vm.changed", good)
    for i in range(3):
        await pub_bus.publish("vm.changed", {"i": i})  # must not raise
    await good.wait_for(3)
    await broken.wait_for(3)  # the broken one keeps getting later messages too
    assert sorted(m.data["i"] for m in good.messages) == [0, 1, 2]


async def test_unsubscribe_stops_delivery(make_bus: MakeBus) -> None:
    sub_bus, pub_bus = await make_bus(), await make_bus()
    stays, leaves = Inbox(), Inbox()
    await sub_bus.subscribe("net.updated", stays)
    subscription = await sub_bus.subscribe("net.updated", leaves)
    await pub_bus.publish("net.updated", {"n": 1})
    await leaves.wait_for(1)
    await subscription.unsubscribe()
    await pub_bus.publish("net.updated", {"n": 2})
    await stays.wait_for(2)
    await asyncio.sleep(QUIET)
    assert [m.data["n"] for m in leaves.messages] == [1]


async def test_close_is_clean(make_bus: MakeBus) -> None:
    bus = await make_bus()
    before = asyncio.all_tasks()
    inbox = Inbox()
    await bus.subscribe("x.y", inbox)
    await bus.publish("x.y", {})
    await inbox.wait_for(1)
    await bus.ping()
    await bus.close()
    await bus.close()  # twice is fine
    with pytest.raises(ConnectionError):
        await bus.ping()
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == [], f"tasks left running after close: {leftover}"
