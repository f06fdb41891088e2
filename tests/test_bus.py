"""MemoryBus: filters, bounded queues that drop the oldest, and unsubscribing."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from sonicgate.bus.base import RESPONSE_EVENT, SESSION_EVENT, Bus, BusEvent
from sonicgate.bus.memory import MemoryBus, Subscription


def event(session_id: str = "s1", user_id: str = "u1", n: int = 0) -> BusEvent:
    return BusEvent(SESSION_EVENT, session_id, user_id, {"n": n}, "2024-01-01T00:00:00.000Z")


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


async def test_subscribers_see_events_published_before_they_iterate() -> None:
    bus = MemoryBus()
    async with aclosing(bus.subscribe()) as subscription:
        await bus.publish(event(n=1))  # before the first __anext__
        assert await anext(subscription) == event(n=1)


async def test_filters_by_session_and_by_user() -> None:
    bus = MemoryBus()
    everything = bus.subscribe()
    by_session = bus.subscribe(session_id="s1")
    by_user = bus.subscribe(user_id="u2")
    by_both = bus.subscribe(session_id="s2", user_id="u2")
    published = [event("s1", "u1"), event("s2", "u2"), event("s1", "u2"), event("s2", "u1")]
    for item in published:
        await bus.publish(item)

    assert await drain(everything) == published
    assert await drain(by_session) == [published[0], published[2]]
    assert await drain(by_user) == [published[1], published[2]]
    assert await drain(by_both) == [published[1]]
    for subscription in (everything, by_session, by_user, by_both):
        await subscription.aclose()


async def test_a_slow_subscriber_drops_its_oldest_events_without_blocking() -> None:
    bus = MemoryBus(maxsize=3)
    slow = bus.subscribe()
    for n in range(10):
        await asyncio.wait_for(bus.publish(event(n=n)), 1)  # never waits on the reader
    assert [e.data["n"] for e in await drain(slow)] == [7, 8, 9]
    await slow.aclose()


async def test_a_slow_subscriber_does_not_cost_a_fast_one_events() -> None:
    bus = MemoryBus(maxsize=2)
    slow = bus.subscribe()
    fast = bus.subscribe()
    received: list[int] = []
    for n in range(5):
        await bus.publish(event(n=n))
        received.append((await anext(fast)).data["n"])
    assert received == [0, 1, 2, 3, 4]
    assert [e.data["n"] for e in await drain(slow)] == [3, 4]
    await slow.aclose()
    await fast.aclose()


async def test_aclose_unsubscribes_and_ends_iteration() -> None:
    bus = MemoryBus()
    subscription = bus.subscribe()
    await subscription.aclose()
    await bus.publish(event())
    assert [e async for e in subscription] == []
    await subscription.aclose()  # closing twice is harmless


async def test_aclose_wakes_a_waiting_reader() -> None:
    bus = MemoryBus()
    subscription = bus.subscribe(session_id="s1")

    async def read_all() -> list[BusEvent]:
        return [e async for e in subscription]

    reader = asyncio.create_task(read_all())
    await bus.publish(BusEvent(RESPONSE_EVENT, "s1", "u1", {"text": "hi"}, "t"))
    await asyncio.sleep(0.01)
    await subscription.aclose()
    assert [e.data for e in await asyncio.wait_for(reader, 1)] == [{"text": "hi"}]
