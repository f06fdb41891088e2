"""The connection registry: which node holds which live client connection.

In the store by default (one process, or nodes sharing PostgreSQL); in Redis
when the nodes share one for their bus: each node's connections are one hash
that expires unless the node keeps renewing it, so a dead node's connections
leave the registry by themselves.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Protocol

from redis.exceptions import RedisError

from sonicgate.config import Settings
from sonicgate.domain import Connection
from sonicgate.shared_redis import connect
from sonicgate.store.base import Store, StoreUnavailable


def new_connection_id(node_id: str) -> str:
    """'conn-NODE:UUID': the id says which node holds the connection (':' never occurs
    in a node id, so no node's ids are another's)."""
    return f"conn-{node_id}:{uuid.uuid4()}"


def node_of(connection_id: str) -> str:
    """The node holding a connection, from its id (see ``new_connection_id``)."""
    return connection_id.removeprefix("conn-").partition(":")[0]


class Registry(Protocol):
    async def add(self, connection: Connection) -> None:
        """Registers the connection, or updates it (a session started on it)."""

    async def remove(self, connection_id: str) -> None: ...

    async def connections(self) -> list[Connection]:
        """Every node's, oldest first."""

    async def renew(self) -> None:
        """This node lives: its connections stay registered."""

    async def forget_node(self, node_id: str) -> None:
        """The node is gone: its connections leave the registry."""

    async def aclose(self) -> None: ...


class StoreRegistry:
    """The registry as the store's connections table; nodes' liveness is the store's
    node registry (``Store.heartbeat``). After a store outage longer than the nodes'
    silence limit, the first node to beat again takes the others for gone and deletes
    their connections: ``renew`` writes back those of this node's that are missing."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._mine: dict[str, Connection] = {}  # this node's connections, as stored

    async def add(self, connection: Connection) -> None:
        self._mine[connection.connectionId] = connection
        await self._store.put_connection(connection)

    async def remove(self, connection_id: str) -> None:
        self._mine.pop(connection_id, None)
        await self._store.delete_connection(connection_id)

    async def connections(self) -> list[Connection]:
        return await self._store.list_connections()

    async def renew(self) -> None:
        if not self._mine:
            return
        stored = {connection.connectionId for connection in await self._store.list_connections()}
        for connection_id, connection in list(self._mine.items()):
            if connection_id not in stored:
                await self._store.put_connection(connection)
                if connection_id not in self._mine:  # removed meanwhile
                    await self._store.delete_connection(connection_id)

    async def forget_node(self, node_id: str) -> None:
        for connection in await self._store.list_connections():
            if node_of(connection.connectionId) == node_id:
                await self._store.delete_connection(connection.connectionId)

    async def aclose(self) -> None:
        pass  # the store is closed by its owner


class RedisRegistry:
    """``<prefix>:connections:<node>``: a hash of the node's connections (JSON by
    connection id) that expires ``ttl_seconds`` after the node last renewed it; the
    set ``<prefix>:nodes`` names the nodes that have one (no scan of the keyspace).

    The node keeps its own connections in memory too, and each renewal writes them
    all again: a Redis that restarted empty, or missed a removal while it was down,
    is right again within one heartbeat. An unreachable Redis is
    ``StoreUnavailable``, as an unreachable store is.
    """

    def __init__(self, url: str, prefix: str, node_id: str, ttl_seconds: float) -> None:
        self._prefix = f"{prefix}:connections:"
        self._nodes = f"{prefix}:nodes"
        self._node_id = node_id
        self._key = f"{self._prefix}{node_id}"
        self._ttl_ms = int(ttl_seconds * 1000)
        self._mine: dict[str, str] = {}  # this node's connections, as stored
        self._redis = connect(url)

    async def add(self, connection: Connection) -> None:
        value = json.dumps(asdict(connection))
        self._mine[connection.connectionId] = value
        async with _reaching_redis(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key, connection.connectionId, value)
            pipe.pexpire(self._key, self._ttl_ms)
            pipe.sadd(self._nodes, self._node_id)
            await pipe.execute()

    async def remove(self, connection_id: str) -> None:
        self._mine.pop(connection_id, None)
        async with _reaching_redis():
            await self._redis.hdel(self._key, connection_id)

    async def connections(self) -> list[Connection]:
        async with _reaching_redis():
            members = await self._redis.smembers(self._nodes)
            nodes = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
            async with self._redis.pipeline(transaction=False) as pipe:
                for node in nodes:
                    pipe.hvals(f"{self._prefix}{node}")
                hashes: list[list[bytes]] = await pipe.execute()
            # A node whose hash expired (or had nothing) leaves the set until it adds.
            if gone := [node for node, values in zip(nodes, hashes, strict=True) if not values]:
                await self._redis.srem(self._nodes, *gone)
        found = [Connection(**json.loads(value)) for values in hashes for value in values]
        return sorted(found, key=lambda connection: connection.connectedAt)

    async def renew(self) -> None:
        async with _reaching_redis(), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key)
            if self._mine:
                pipe.hset(self._key, items=[part for item in self._mine.items() for part in item])
                pipe.pexpire(self._key, self._ttl_ms)
                pipe.sadd(self._nodes, self._node_id)
            await pipe.execute()

    async def forget_node(self, node_id: str) -> None:
        async with _reaching_redis(), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{self._prefix}{node_id}")
            pipe.srem(self._nodes, node_id)
            await pipe.execute()

    async def aclose(self) -> None:
        await self._redis.aclose()


@contextlib.asynccontextmanager
async def _reaching_redis() -> AsyncIterator[None]:
    """A Redis failure becomes ``StoreUnavailable``: callers have one handler for both."""
    try:
        yield
    except RedisError as exc:
        raise StoreUnavailable(f"the Redis registry is unreachable: {exc}") from exc


def open_registry(settings: Settings, store: Store, ttl_seconds: float) -> Registry:
    """In Redis when the nodes share one for their bus (``--bus redis://...``), else
    in the store."""
    if settings.bus == "memory":
        return StoreRegistry(store)
    return RedisRegistry(settings.bus, settings.bus_prefix, settings.node_id, ttl_seconds)
