"""Rate limits per client, counted in a moving window: a rate of R a second allows 2R
in any two seconds (a burst of twice the rate, the rate on average).

One node counts in its memory. Nodes sharing a Redis (``--bus redis://...``) count
there with the ``limits`` library, so a client's limit holds across them all; while
that Redis is unreachable each node counts on its own (the limits then hold per
node), with one warning per outage, and asks Redis again every few seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis

from sonicgate.shared_redis import Outages

BURST_SECONDS = 2  # the window: a client may spend this many seconds' worth at once
PRUNE_EVERY = 60.0  # seconds between sweeps of clients whose window has emptied


class LocalWindows:
    """Moving windows in this process: each client's hits of the last window, oldest
    first. (The ``limits`` library's memory storage starts a thread to expire entries
    after a quiet spell, and its asyncio one a thread per key: 0.1-2 ms a message at
    100 sessions, where this costs microseconds.)"""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        # Each key's window length with its hits: limiters of other windows share this.
        self._hits: dict[str, tuple[float, deque[float]]] = {}
        self._pruned = clock()

    def hit(self, item: RateLimitItem, client: str) -> float | None:
        """None: counted; else the seconds until the oldest hit leaves the window."""
        now = self._clock()
        period = item.get_expiry()
        if now - self._pruned > PRUNE_EVERY:
            self._prune(now)
        _, hits = self._hits.setdefault(item.key_for(client), (period, deque()))
        while hits and hits[0] <= now - period:
            hits.popleft()
        if len(hits) >= item.amount:
            return hits[0] + period - now
        hits.append(now)
        return None

    def _prune(self, now: float) -> None:
        self._pruned = now
        for key in [
            key
            for key, (period, hits) in self._hits.items()
            if not hits or hits[-1] <= now - period
        ]:
            del self._hits[key]


class Counters:
    """Where the rate limits are counted: in this process, or in ``redis`` (keys
    under ``prefix``), with this process's count standing in while it is unreachable."""

    def __init__(
        self,
        redis: Redis | None = None,
        prefix: str = "sonicgate:limits",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local = LocalWindows(clock)
        self._shared: MovingWindowRateLimiter | None = None
        if redis is not None:
            storage = RedisStorage(
                "async+redis://",  # the connection comes from the pool, with its timeouts
                implementation="redispy",
                key_prefix=prefix,
                wrap_exceptions=True,
                connection_pool=redis.connection_pool,  # type: ignore[arg-type]
            )
            self._shared = MovingWindowRateLimiter(storage)
        self._outages = Outages("rate limits")

    async def hit(self, item: RateLimitItem, client: str) -> float | None:
        """None: counted, the client may go ahead; else the seconds until it may."""
        if self._shared is not None and self._outages.worth_trying():
            try:
                wait = await _shared_hit(self._shared, item, client)
            except StorageError as exc:
                self._outages.failed(exc)
            else:
                self._outages.succeeded()
                return wait
        return self._local.hit(item, client)


async def _shared_hit(
    limiter: MovingWindowRateLimiter, item: RateLimitItem, client: str
) -> float | None:
    if await limiter.hit(item, client):
        return None
    window = await limiter.get_window_stats(item, client)
    return max(0.0, window.reset_time - time.time())  # the oldest hit leaves the window


class RateLimiter:
    """``rate`` a second per client (0: no limit), ``BURST_SECONDS`` of it at once,
    counted in ``counters`` under ``name``."""

    def __init__(self, rate: float, name: str, counters: Counters) -> None:
        self.rate = rate
        self._window = _window(rate, name) if rate > 0 else None
        self._counters = counters

    async def take(self, client: str) -> float | None:
        """None when the client may go ahead, else the seconds until it may."""
        if self._window is None:
            return None
        return await self._counters.hit(self._window, client)


def _window(rate: float, name: str) -> RateLimitItem:
    """Whole hits in whole seconds: ``rate`` times ``BURST_SECONDS``, or one hit in
    1/``rate`` seconds for rates below one per window."""
    seconds = max(BURST_SECONDS, round(1 / rate))
    return RateLimitItemPerSecond(max(1, round(rate * seconds)), seconds, namespace=name)
