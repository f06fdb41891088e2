"""``RedisBus``: events through Redis pub/sub, so /api/events on every node sees them all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque

from redis.exceptions import RedisError

from sonicgate.bus.base import BusEvent, Filter
from sonicgate.bus.memory import MemoryBus, Subscription
from sonicgate.shared_redis import connect

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # between attempts to reach Redis again after losing it
# After an outage the kept events wait this long, so that every node's reader (which
# retries each RETRY_SECONDS) has subscribed again and sees them.
RESUBSCRIBED_SECONDS = 1.5 * RETRY_SECONDS
FLUSH_SECONDS = 2.0  # how long closing the bus waits for the outbox to go out
OUTBOX_SIZE = 10_000  # events kept through an outage; beyond it the oldest are dropped


class RedisBus:
    """Publishes each event's JSON on ``<prefix>:events``. One pub/sub connection per
    bus feeds a ``MemoryBus``, which filters and queues for the local subscribers.

    ``publish`` only puts the event in an outbox, sent in order by one task. While
    Redis is unreachable the outbox keeps the events (one warning per outage), and
    they go out once Redis and the nodes' subscriptions are back. An event whose
    PUBLISH timed out may be delivered twice.
    """

    def __init__(self, url: str, prefix: str, maxsize: int = 1000) -> None:
        self.channel = f"{prefix}:events"
        self._redis = connect(url)
        self._local = MemoryBus(maxsize)
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()  # the reader listens on the channel
        self._outbox: deque[str] = deque(maxlen=OUTBOX_SIZE)
        self._queued = asyncio.Event()  # the outbox has something to send
        self._sent = asyncio.Event()  # ... and this, once it is empty again
        self._sender: asyncio.Task[None] | None = None
        self._reachable = True
        # Set by any loss of Redis, cleared once the other nodes have had time to
        # subscribe again: until then the outbox holds its events.
        self._after_outage = False

    async def publish(self, event: BusEvent) -> None:
        if len(self._outbox) == self._outbox.maxlen:
            log.warning("Redis bus outbox full: dropped its oldest event")
        self._outbox.append(json.dumps(event.to_transport()))
        self._sent.clear()
        self._queued.set()
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())

    def subscribe(self, wanted: Filter) -> Subscription:
        # Started on first use: subscribe() runs inside the event loop, the constructor may not.
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        return self._local.subscribe(wanted)

    async def aclose(self) -> None:
        if self._sender is not None:
            # The last events (sessions ended by a shutdown, say) go out if Redis is there.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sent.wait(), FLUSH_SECONDS)
        for task in (self._sender, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._local.aclose()
        await self._redis.aclose()

    async def _send(self) -> None:
        while True:
            await self._queued.wait()
            if self._reader is not None:
                # A subscription made just before a publish sees it, as with MemoryBus.
                await self._subscribed.wait()
            try:
                if self._after_outage:
                    await self._redis.ping()
                    await asyncio.sleep(RESUBSCRIBED_SECONDS)
                    self._after_outage = False
                while self._outbox:
                    # Taken out first: events published while this one is sent may fill
                    # the outbox, which drops its oldest, and this one is no longer there.
                    message = self._outbox.popleft()
                    try:
                        await self._redis.publish(self.channel, message)
                    except RedisError:
                        if len(self._outbox) < (self._outbox.maxlen or 0):
                            self._outbox.appendleft(message)  # else it is the oldest: it goes
                        raise
            except RedisError as exc:
                self._lost(exc)
                await asyncio.sleep(RETRY_SECONDS)
            else:
                self._found()
                self._queued.clear()
                self._sent.set()

    async def _read(self) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._found()
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        await self._deliver(message["data"])
            except RedisError as exc:
                self._lost(exc)
            self._subscribed.clear()
            await asyncio.sleep(RETRY_SECONDS)

    async def _deliver(self, raw: bytes) -> None:
        try:
            event = BusEvent.from_transport(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            # Someone else writing on our channel must not stop the reader.
            log.warning("ignored a malformed message on %s", self.channel)
            return
        await self._local.publish(event)

    def _lost(self, exc: RedisError) -> None:
        if self._reachable:
            log.warning("Redis bus unreachable, keeping events until it is back: %s", exc)
        self._reachable = False
        self._after_outage = True

    def _found(self) -> None:
        if not self._reachable:
            log.info("Redis bus reachable again")
        self._reachable = True
