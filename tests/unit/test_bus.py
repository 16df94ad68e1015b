"""The in-memory bus honours the Bus contract: NATS wildcards, queue groups, timeouts."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from altostack.bus import Message, connect
from altostack.bus.base import subject_matches
from altostack.bus.memory import MemoryBus


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    b = connect("memory://")
    assert isinstance(b, MemoryBus)
    try:
        yield b
    finally:
        await b.close()


async def settle(bus: MemoryBus) -> None:
    """Wait (bounded) until every delivery task has run."""
    for _ in range(100):
        if not bus._tasks:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("deliveries did not finish")


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("a.b.c", "a.b.c", True),
        ("a.b.c", "a.b", False),
        ("a.b", "a.b.c", False),
        ("a.*.c", "a.x.c", True),
        ("a.*.c", "a.x.y.c", False),
        ("a.*", "a", False),
        ("*", "a", True),
        ("*", "a.b", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c.d", True),
        ("a.>", "a", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*.>", "a.b", True),
        ("*.>", "a", False),
        ("a.*.>", "a.b.c", True),
        ("a.*.>", "a.b", False),
        ("vm.*.state", "vm.vm-1.state", True),
        ("vm.*.state", "disk.vm-1.state", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, matches: bool):
    assert subject_matches(pattern, subject) is matches


async def test_wildcard_subscribers_receive_what_they_match(bus: MemoryBus):
    got: dict[str, list[str]] = {"exact": [], "star": [], "tail": [], "other": []}

    def recorder(name: str) -> Any:
        async def handle(message: Message) -> None:
            got[name].append(message.subject)

        return handle

    await bus.subscribe("ops.created", recorder("exact"))
    await bus.subscribe("ops.*", recorder("star"))
    await bus.subscribe("ops.>", recorder("tail"))
    await bus.subscribe("hosts.>", recorder("other"))
    for subject in ("ops.created", "ops.finished", "ops.vm.created", "hosts.h1.up", "x"):
        await bus.publish(subject, {"n": 1})
    await settle(bus)
    assert got["exact"] == ["ops.created"]
    assert sorted(got["star"]) == ["ops.created", "ops.finished"]
    assert sorted(got["tail"]) == ["ops.created", "ops.finished", "ops.vm.created"]
    assert got["other"] == ["hosts.h1.up"]


async def test_message_carries_data_and_headers(bus: MemoryBus):
    seen: list[Message] = []

    async def handle(message: Message) -> None:
        seen.append(message)

    await bus.subscribe("a", handle)
    await bus.publish("a", {"k": "v"}, headers={"trace": "t1"})
    await settle(bus)
    assert seen == [Message("a", {"k": "v"}, {"trace": "t1"})]


async def test_queue_group_delivers_each_message_to_one_member(bus: MemoryBus):
    counts: Counter[str] = Counter()
    fanout: list[int] = []

    def member(name: str) -> Any:
        async def handle(message: Message) -> None:
            counts[name] += 1

        return handle

    async def plain(message: Message) -> None:
        fanout.append(message.data["i"])

    for name in ("w1", "w2", "w3"):
        await bus.subscribe("jobs.>", member(name), queue="workers")
    for name in ("a1", "a2"):
        await bus.subscribe("jobs.>", member(name), queue="auditors")
    await bus.subscribe("jobs.>", plain)
    for i in range(60):
        await bus.publish("jobs.run", {"i": i})
    await settle(bus)
    assert counts["w1"] + counts["w2"] + counts["w3"] == 60
    assert counts["a1"] + counts["a2"] == 60
    assert sorted(fanout) == list(range(60))  # a plain subscriber gets everything
    # The work is shared out among the members of every group, not piled on one.
    for name in ("w1", "w2", "w3", "a1", "a2"):
        assert counts[name] >= 10, counts


async def test_request_gets_the_reply(bus: MemoryBus):
    async def responder(message: Message) -> dict[str, Any]:
        return {"echo": message.data["q"]}

    await bus.subscribe("svc.echo", responder, queue="echo")
    assert await bus.request("svc.echo", {"q": 42}, timeout=1) == {"echo": 42}


async def test_request_without_responder_times_out(bus: MemoryBus):
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await bus.request("nobody.home", {}, timeout=0.1)
    assert loop.time() - started < 1.0


async def test_request_to_a_slow_responder_times_out(bus: MemoryBus):
    async def slow(_message: Message) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    await bus.subscribe("svc.slow", slow)
    with pytest.raises(TimeoutError):
        await bus.request("svc.slow", {}, timeout=0.1)


async def test_failing_handler_does_not_break_publisher_or_others(bus: MemoryBus):
    got: list[int] = []

    async def broken(_message: Message) -> None:
        raise RuntimeError("handler bug")

    async def fine(message: Message) -> None:
        got.append(message.data["i"])

    await bus.subscribe("e", broken)
    await bus.subscribe("e", fine)
    for i in range(3):
        await bus.publish("e", {"i": i})  # must not raise
    await settle(bus)
    assert sorted(got) == [0, 1, 2]
    await bus.ping()


async def test_publish_does_not_wait_for_slow_subscribers(bus: MemoryBus):
    release = asyncio.Event()

    async def slow(_message: Message) -> None:
        await release.wait()

    await bus.subscribe("s", slow)
    await asyncio.wait_for(bus.publish("s", {}), timeout=0.5)
    release.set()
    await settle(bus)


async def test_unsubscribe_and_close(bus: MemoryBus):
    got: list[str] = []

    async def handle(message: Message) -> None:
        got.append(message.subject)

    sub = await bus.subscribe("u", handle)
    await bus.publish("u", {})
    await settle(bus)
    await sub.unsubscribe()
    await sub.unsubscribe()  # twice is fine
    await bus.publish("u", {})
    await settle(bus)
    assert got == ["u"]
    await bus.close()
    with pytest.raises(ConnectionError):
        await bus.ping()
    await bus.publish("u", {})  # a closed bus drops messages quietly


def test_unknown_bus_url_is_refused():
    with pytest.raises(ValueError, match="unsupported bus URL"):
        connect("kafka://localhost")
