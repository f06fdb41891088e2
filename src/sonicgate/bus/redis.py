"""``RedisBus``: events through Redis pub/sub, so /api/events on every node sees them all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sonicgate.bus.base import BusEvent
from sonicgate.bus.memory import MemoryBus, Subscription

log = logging.getLogger(__name__)

# A connect or a command waits no longer than this: publishing happens inside a
# conversation, which must not stall on a Redis that has gone away.
TIMEOUT_SECONDS = 1.0
RETRY_SECONDS = 1.0  # between attempts to subscribe again after losing Redis


class RedisBus:
    """Publishes each event's JSON on ``<prefix>:events``. One pub/sub connection per
    bus feeds a ``MemoryBus``, which filters and queues for the local subscribers.

    While Redis is unreachable events are dropped (one warning per outage), and the
    subscriber side keeps trying to subscribe again.
    """

    def __init__(self, url: str, prefix: str, maxsize: int = 1000) -> None:
        self.channel = f"{prefix}:events"
        # No retries inside redis-py: a dropped event is better than a late conversation,
        # and the reader's own loop is what reconnects.
        self._redis = Redis.from_url(
            url,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        self._local = MemoryBus(maxsize)
        self._reader: asyncio.Task[None] | None = None
        # Set once the reader's first SUBSCRIBE succeeded or failed.
        self._first_attempt = asyncio.Event()
        self._reachable = True

    async def publish(self, event: BusEvent) -> None:
        if self._reader is not None:
            # A subscription made just before this publish must see it, as with MemoryBus.
            await self._first_attempt.wait()
        try:
            await self._redis.publish(self.channel, json.dumps(event.to_json()))
        except RedisError as exc:
            self._lost(exc)
        else:
            self._found()

    def subscribe(self, session_id: str | None = None, user_id: str | None = None) -> Subscription:
        # Started on first use: subscribe() runs inside the event loop, the constructor may not.
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        return self._local.subscribe(session_id, user_id)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._local.aclose()
        await self._redis.aclose()

    async def _read(self) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._found()
                    self._first_attempt.set()
                    async for message in pubsub.listen():
                        await self._deliver(message["data"])
            except RedisError as exc:
                self._lost(exc)
            self._first_attempt.set()
            await asyncio.sleep(RETRY_SECONDS)

    async def _deliver(self, raw: bytes) -> None:
        try:
            event = BusEvent.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            # Someone else writing on our channel must not stop the reader.
            log.warning("ignored a malformed message on %s", self.channel)
            return
        await self._local.publish(event)

    def _lost(self, exc: RedisError) -> None:
        if self._reachable:
            log.warning("Redis bus unreachable, dropping events until it is back: %s", exc)
        self._reachable = False

    def _found(self) -> None:
        if not self._reachable:
            log.info("Redis bus reachable again")
        self._reachable = True
