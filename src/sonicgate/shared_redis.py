"""The Redis client of the parts gateway nodes share through Redis (the event bus,
the connection registry)."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# A connect or a command waits no longer than this, so a Redis that has gone silent
# is noticed soon; conversations never wait on it.
TIMEOUT_SECONDS = 1.0


def connect(url: str) -> Redis:
    """A client that fails fast, and never retries on its own: the bus's outbox and
    reader, and the registry's renewals, do the retrying."""
    return Redis.from_url(
        url,
        socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
