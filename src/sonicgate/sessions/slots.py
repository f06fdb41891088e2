"""How many sessions each client holds, for ``--max-sessions-per-client``.

One node counts its own. Nodes sharing a Redis (``--bus redis://...``) count there:
each client's live sessions are a sorted set, ``PREFIX:sessions:CLIENT``, of session
ids scored by when each lapses (by Redis's clock, so the nodes' clocks do not
matter), which its node renews with each heartbeat. A dead node's sessions lapse
by themselves. While that Redis is unreachable each node counts on its own (the
limit then holds per node), with one warning per outage; a renewal writes the node's
sessions again once it is back.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sonicgate.shared_redis import Outages

# Admits the session unless the client holds the limit already (the session itself
# aside: a resume adds nothing). Returns -1 when admitted, else how many it holds.
CLAIM = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local held = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and held >= tonumber(ARGV[2]) then
    return held
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return -1
"""
# KEYS[i] holds session ARGV[i + 1] for another ARGV[1] milliseconds.
RENEW = """
local now = redis.call('TIME')
local until_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, until_ms, ARGV[i + 1])
    redis.call('PEXPIRE', key, ARGV[1])
end
"""


class SessionSlots(Protocol):
    async def claim(self, client: str, session_id: str) -> int | None:
        """None: the session is the client's, until released; else how many sessions
        the client holds already (the limit or more)."""

    async def release(self, client: str, session_id: str) -> None:
        """Once for each claim that returned None."""

    async def renew(self) -> None:
        """This node lives: the sessions it holds stay counted."""


class HeldSessions:
    """This node's sessions by client, each with the number of its claims: a resume of
    a session live here claims it before its previous holder lets it go."""

    def __init__(self) -> None:
        self._by_client: dict[str, Counter[str]] = {}

    def besides(self, client: str, session_id: str) -> int:
        """The client's sessions other than ``session_id``."""
        held = self._by_client.get(client, Counter())
        return len(held) - (session_id in held)

    def add(self, client: str, session_id: str) -> None:
        self._by_client.setdefault(client, Counter())[session_id] += 1

    def remove(self, client: str, session_id: str) -> bool:
        """Whether the client no longer holds the session."""
        held = self._by_client.get(client)
        if held is None or session_id not in held:
            return False
        held[session_id] -= 1
        if held[session_id] > 0:
            return False
        del held[session_id]
        if not held:
            del self._by_client[client]
        return True

    def pairs(self) -> list[tuple[str, str]]:
        return [(client, sid) for client, held in self._by_client.items() for sid in held]


class LocalSlots:
    """This node's count: ``limit`` sessions per client (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = HeldSessions()

    async def claim(self, client: str, session_id: str) -> int | None:
        held = self.held.besides(client, session_id)
        if self.limit and held >= self.limit:
            return held
        self.held.add(client, session_id)
        return None

    async def release(self, client: str, session_id: str) -> None:
        self.held.remove(client, session_id)

    async def renew(self) -> None:
        pass


class RedisSlots:
    """The count of every node sharing ``redis``: a node's claims lapse ``ttl_seconds``
    after its last renewal."""

    def __init__(self, redis: Redis, prefix: str, limit: int, ttl_seconds: float) -> None:
        self._redis = redis
        self._prefix = f"{prefix}:sessions:"
        self._limit = limit
        self._ttl_ms = int(ttl_seconds * 1000)
        self._local = LocalSlots(limit)  # what this node holds; the count while Redis is away
        self._claim = redis.register_script(CLAIM)
        self._renew = redis.register_script(RENEW)
        self._outages = Outages("sessions per client")

    async def claim(self, client: str, session_id: str) -> int | None:
        if self._outages.worth_trying():
            try:
                held = int(
                    await self._claim([self._key(client)], [session_id, self._limit, self._ttl_ms])
                )
            except RedisError as exc:
                self._outages.failed(exc)
            else:
                self._outages.succeeded()
                if held >= 0:
                    return held
                self._local.held.add(client, session_id)
                return None
        return await self._local.claim(client, session_id)

    async def release(self, client: str, session_id: str) -> None:
        if not self._local.held.remove(client, session_id) or not self._outages.worth_trying():
            return  # still held here; or Redis is away, and the claim lapses there
        # A node where the session resumed meanwhile writes it again as it renews.
        try:
            await self._redis.zrem(self._key(client), session_id)
        except RedisError as exc:
            self._outages.failed(exc)

    async def renew(self) -> None:
        pairs = self._local.held.pairs()
        if not pairs:
            return
        try:
            await self._renew(
                [self._key(client) for client, _ in pairs],
                [self._ttl_ms, *(session_id for _, session_id in pairs)],
            )
        except RedisError as exc:
            self._outages.failed(exc)
        else:
            self._outages.succeeded()

    def _key(self, client: str) -> str:
        return self._prefix + client


def open_slots(limit: int, redis: Redis | None, prefix: str, ttl_seconds: float) -> SessionSlots:
    """In ``redis`` when the nodes share one (and there is a limit to hold), else here."""
    if redis is None or not limit:
        return LocalSlots(limit)
    return RedisSlots(redis, prefix, limit, ttl_seconds)
