"""The connection registry contract, in the store and in Redis: which node holds
which connection, every node's seen from any, and a gone node's dropped. Then
what is Redis's own: expiry, renewal after Redis lost its data, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sonicgate.domain import Connection
from sonicgate.store.base import StoreUnavailable
from sonicgate.store.registry import RedisRegistry, Registry, StoreRegistry, node_of
from sonicgate.store.sqlite import SqliteStore
from tests.conftest import free_port

RegistryMaker = Callable[[str], Registry]  # a node's registry, by node id


@pytest.fixture(params=["store", "redis"])
async def make_registry(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RegistryMaker]:
    """Registries of the nodes of one cluster, closed after the test."""
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    made: list[Registry] = []

    def make(node_id: str) -> Registry:
        registry: Registry = StoreRegistry(store)
        if request.param == "redis":
            url, prefix = (
                request.getfixturevalue("redis_url"),
                request.getfixturevalue("bus_prefix"),
            )
            registry = RedisRegistry(url, prefix, node_id, ttl_seconds=30)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.aclose()
    await store.close()


def connection(node_id: str, n: int, session_id: str | None = None) -> Connection:
    return Connection(f"conn-{node_id}:{n}", session_id, "u", "typed", f"2024-01-01T00:00:0{n}Z")


def test_the_node_is_read_from_the_connection_id() -> None:
    assert node_of("conn-gw-1.eu:0b9e") == "gw-1.eu"


async def test_every_node_sees_the_connections_of_all_oldest_first(
    make_registry: RegistryMaker,
) -> None:
    a, b = make_registry("a"), make_registry("b")
    await b.add(connection("b", 2))
    await a.add(connection("a", 1))
    await a.add(connection("a", 3))
    for registry in (a, b):
        assert [c.connectionId for c in await registry.connections()] == [
            "conn-a:1",
            "conn-b:2",
            "conn-a:3",
        ]


async def test_adding_again_updates_and_removing_forgets(make_registry: RegistryMaker) -> None:
    a = make_registry("a")
    await a.add(connection("a", 1))
    await a.add(connection("a", 1, session_id="s1"))  # a session started on it
    await a.add(connection("a", 2))
    await a.remove("conn-a:2")
    await a.remove("conn-a:9")  # unknown: nothing to do
    assert await a.connections() == [connection("a", 1, session_id="s1")]


async def test_a_gone_node_leaves_the_registry_alone(make_registry: RegistryMaker) -> None:
    a, b = make_registry("a"), make_registry("b")
    await a.add(connection("a", 1))
    await b.add(connection("b", 2))
    await b.forget_node("a")  # what a node does for one that fell silent
    assert [c.connectionId for c in await b.connections()] == ["conn-b:2"]


async def test_a_burst_of_connections_is_saved_whole(make_registry: RegistryMaker) -> None:
    """Hundreds of connections at once (a reconnect storm after a deploy, a load
    test's ramp): every one is saved, beyond what the Redis client's pool holds."""
    a = make_registry("a")
    await asyncio.gather(*(a.add(connection("a", n)) for n in range(300)))
    assert len(await a.connections()) == 300


@pytest.fixture
def redis_registry(redis_url: str, bus_prefix: str) -> Callable[..., RedisRegistry]:
    def make(node_id: str = "a", ttl_seconds: float = 30) -> RedisRegistry:
        return RedisRegistry(redis_url, bus_prefix, node_id, ttl_seconds)

    return make


async def test_a_node_that_stops_renewing_expires_with_its_connections(
    redis_registry: Callable[..., RedisRegistry], redis_url: str, bus_prefix: str
) -> None:
    dying, living = redis_registry("dying", 0.3), redis_registry("living", 0.3)
    await dying.add(connection("dying", 1))
    await living.add(connection("living", 2))
    for _ in range(4):  # 0.6 s: only the living node renews
        await asyncio.sleep(0.15)
        await living.renew()
    assert [c.connectionId for c in await living.connections()] == ["conn-living:2"]
    async with Redis.from_url(redis_url) as redis:  # and it left the set of nodes
        assert await redis.smembers(f"{bus_prefix}:nodes") == {b"living"}
    await dying.aclose()
    await living.aclose()


async def test_renewing_writes_the_node_connections_again(
    redis_registry: Callable[..., RedisRegistry], redis_url: str, bus_prefix: str
) -> None:
    a = redis_registry("a")
    await a.add(connection("a", 1))
    async with Redis.from_url(redis_url) as redis:
        await redis.delete(f"{bus_prefix}:connections:a")  # Redis restarted empty
        await redis.hset(f"{bus_prefix}:connections:a", "conn-a:7", "{}")  # a missed removal
    await a.renew()
    assert await a.connections() == [connection("a", 1)]
    await a.aclose()


async def test_an_unreachable_redis_is_an_unavailable_store() -> None:
    registry = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", "gone", "a", 30)
    with pytest.raises(StoreUnavailable, match="Redis registry"):
        await registry.add(connection("a", 1))
    with pytest.raises(StoreUnavailable):
        await registry.connections()
    await registry.aclose()
