"""The in-process ``Bus``: every subscriber has its own bounded queue."""

from __future__ import annotations

import asyncio

from sonicgate.bus.base import BusEvent, Filter


class Subscription:
    """Events matching the filters, from construction until ``aclose``.

    Registers in the constructor rather than on first iteration, so nothing
    published between ``subscribe()`` and the first ``__anext__`` is missed.
    """

    def __init__(self, bus: MemoryBus, wanted: Filter, maxsize: int) -> None:
        self.wanted = wanted
        self._bus = bus
        # None is the end-of-stream marker that wakes a pending __anext__ on aclose.
        self._queue: asyncio.Queue[BusEvent | None] = asyncio.Queue(maxsize)
        self._closed = False
        bus._subscriptions.add(self)

    def offer(self, item: BusEvent | None) -> None:
        """Enqueue without waiting: a slow subscriber loses its oldest event."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusEvent:
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._subscriptions.discard(self)
        self.offer(None)


class MemoryBus:
    def __init__(self, maxsize: int = 1000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._subscriptions: set[Subscription] = set()

    async def publish(self, event: BusEvent) -> None:
        for subscription in self._subscriptions:
            if subscription.wanted.matches(event):
                subscription.offer(event)

    def subscribe(self, wanted: Filter) -> Subscription:
        return Subscription(self, wanted, self.maxsize)

    async def aclose(self) -> None:
        for subscription in list(self._subscriptions):  # each one leaves the set
            await subscription.aclose()
