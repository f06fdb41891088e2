"""The Redis client of the parts gateway nodes share through Redis (the event bus,
the connection registry, the limits)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

log = logging.getLogger(__name__)

# A connect or a command waits no longer than this, so a Redis that has gone silent
# is noticed soon; conversations never wait on it.
TIMEOUT_SECONDS = 1.0
# After a failure, Redis is left alone this long: a silent Redis would otherwise cost
# every message its timeout.
RETRY_SECONDS = 5.0
# Connections to Redis at once. A burst of commands beyond them waits its turn (up to
# TIMEOUT_SECONDS): redis-py's default pool refuses the 101st ("Too many connections"),
# and 2,000 sessions opening at once took that for Redis being down.
POOL_SIZE = 64


def connect(url: str) -> Redis:
    """A client that fails fast, and never retries on its own: the bus's outbox and
    reader, and the registry's renewals, do the retrying."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=TIMEOUT_SECONDS,
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)


class Outages:
    """Whether to ask Redis now, for what counts on this node alone while Redis is
    unreachable: not for ``RETRY_SECONDS`` after a failure; one warning per outage."""

    def __init__(self, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._what = what
        self._clock = clock
        self._retry_at = 0.0
        self._down = False

    def worth_trying(self) -> bool:
        return self._clock() >= self._retry_at

    def failed(self, exc: Exception) -> None:
        if not self._down:
            log.warning("%s: Redis unreachable, counting on this node alone: %s", self._what, exc)
        self._down = True
        self._retry_at = self._clock() + RETRY_SECONDS

    def succeeded(self) -> None:
        if self._down:
            log.info("%s: Redis reachable again", self._what)
        self._down = False
