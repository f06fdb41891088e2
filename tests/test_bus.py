"""The bus contract, for MemoryBus and RedisBus alike: filters, bounded queues that
drop the oldest, and unsubscribing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from functools import partial

import pytest

from sonicgate.bus.base import RESPONSE_EVENT, SESSION_EVENT, Bus, BusEvent, Filter, Subscription
from sonicgate.bus.memory import MemoryBus
from sonicgate.bus.redis import RedisBus

BusFactory = Callable[..., Bus]


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    """``make_bus(maxsize=...)``: buses of the parameter's kind, closed after the test;
    the Redis ones on the local Redis, on channels of the test's own."""
    kind: Callable[[int], Bus] = MemoryBus
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("bus_prefix")
        kind = partial(RedisBus, url, prefix)
    made: list[Bus] = []

    def factory(maxsize: int = 1000) -> Bus:
        bus = kind(maxsize)
        made.append(bus)
        return bus

    yield factory
    for bus in made:
        await bus.aclose()


def event(session_id: str = "s1", user_id: str = "u1", n: int = 0) -> BusEvent:
    return BusEvent(SESSION_EVENT, session_id, user_id, {"n": n}, "2024-01-01T00:00:00.000Z")


async def publish_all(bus: Bus, events: list[BusEvent]) -> None:
    """Publish, then wait until the bus has handed the last event to its subscribers
    (Redis delivers after ``publish`` returns), reading a witness subscription only."""
    async with aclosing(bus.subscribe(Filter())) as witness:
        for item in events:
            await asyncio.wait_for(bus.publish(item), 1)  # never waits on the readers
        async with asyncio.timeout(5):
            while await anext(witness) != events[-1]:
                pass


async def drain(subscription: Subscription) -> list[BusEvent]:
    """Everything already queued, without waiting for more."""
    seen: list[BusEvent] = []
    while True:
        try:
            seen.append(await asyncio.wait_for(anext(subscription), 0.05))
        except TimeoutError:
            return seen


def test_memory_bus_satisfies_the_protocol() -> None:
    typed: Bus = MemoryBus()
    assert typed is not None


async def test_subscribers_see_events_published_before_they_iterate(make_bus: BusFactory) -> None:
    bus = make_bus()
    async with aclosing(bus.subscribe(Filter())) as subscription:
        await bus.publish(event(n=1))  # before the first __anext__
        assert await asyncio.wait_for(anext(subscription), 5) == event(n=1)


async def test_filters_by_session_and_by_user(make_bus: BusFactory) -> None:
    bus = make_bus()
    everything = bus.subscribe(Filter())
    by_session = bus.subscribe(Filter(session_id="s1"))
    by_user = bus.subscribe(Filter(user_id="u2"))
    by_both = bus.subscribe(Filter(session_id="s2", user_id="u2"))
    published = [event("s1", "u1"), event("s2", "u2"), event("s1", "u2"), event("s2", "u1")]
    await publish_all(bus, published)

    assert await drain(everything) == published
    assert await drain(by_session) == [published[0], published[2]]
    assert await drain(by_user) == [published[1], published[2]]
    assert await drain(by_both) == [published[1]]
    for subscription in (everything, by_session, by_user, by_both):
        await subscription.aclose()


async def test_an_owners_subscription_sees_its_own_sessions_only(make_bus: BusFactory) -> None:
    bus = make_bus()
    alices = bus.subscribe(Filter(owner="sub:alice"))
    snooping = bus.subscribe(Filter(session_id="s1", user_id="u1", owner="sub:bob"))
    published = [
        replace(event("s1", "u1"), owner="sub:alice"),
        replace(event("s2"), owner="sub:bob"),
    ]
    await publish_all(bus, published)

    assert await drain(alices) == [published[0]]  # the owner travels with the event
    assert await drain(snooping) == []
    assert "owner" not in published[0].to_json()  # and never reaches a subscriber's wire
    for subscription in (alices, snooping):
        await subscription.aclose()


async def test_a_slow_subscriber_drops_its_oldest_events_without_blocking(
    make_bus: BusFactory,
) -> None:
    bus = make_bus(maxsize=3)
    slow = bus.subscribe(Filter())
    await publish_all(bus, [event(n=n) for n in range(10)])
    assert [e.data["n"] for e in await drain(slow)] == [7, 8, 9]
    await slow.aclose()


async def test_a_slow_subscriber_does_not_cost_a_fast_one_events(make_bus: BusFactory) -> None:
    bus = make_bus(maxsize=2)
    slow = bus.subscribe(Filter())
    fast = bus.subscribe(Filter())
    received: list[int] = []
    for n in range(5):
        await bus.publish(event(n=n))
        received.append((await asyncio.wait_for(anext(fast), 5)).data["n"])
    assert received == [0, 1, 2, 3, 4]
    assert [e.data["n"] for e in await drain(slow)] == [3, 4]
    await slow.aclose()
    await fast.aclose()


async def test_aclose_unsubscribes_and_ends_iteration(make_bus: BusFactory) -> None:
    bus = make_bus()
    subscription = bus.subscribe(Filter())
    await subscription.aclose()
    await publish_all(bus, [event()])
    assert [e async for e in subscription] == []
    await subscription.aclose()  # closing twice is harmless


async def test_aclose_wakes_a_waiting_reader(make_bus: BusFactory) -> None:
    bus = make_bus()
    subscription = bus.subscribe(Filter(session_id="s1"))
    received = asyncio.Event()

    async def read_all() -> list[BusEvent]:
        seen: list[BusEvent] = []
        async for e in subscription:
            seen.append(e)
            received.set()
        return seen

    reader = asyncio.create_task(read_all())
    await bus.publish(BusEvent(RESPONSE_EVENT, "s1", "u1", {"text": "hi"}, "t"))
    await asyncio.wait_for(received.wait(), 5)  # the reader now waits for the next event
    await subscription.aclose()
    assert [e.data for e in await asyncio.wait_for(reader, 1)] == [{"text": "hi"}]


async def test_closing_the_bus_ends_every_subscription(make_bus: BusFactory) -> None:
    bus = make_bus()
    subscriptions = [bus.subscribe(Filter()), bus.subscribe(Filter(session_id="s1"))]
    readers = [asyncio.create_task(anext(s, None)) for s in subscriptions]
    await bus.aclose()
    assert await asyncio.wait_for(asyncio.gather(*readers), 1) == [None, None]
