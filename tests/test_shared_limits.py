"""The limits counted in a Redis that nodes share: rates and sessions per client, and
what each node does while that Redis is unreachable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from sonicgate.server.ratelimit import Counters, RateLimiter
from sonicgate.sessions.slots import LocalSlots, RedisSlots, open_slots
from sonicgate.shared_redis import RETRY_SECONDS, Outages, connect
from tests.conftest import Connect, ServerFactory, free_port
from tests.scripted_engine import ScriptedEngine
from tests.test_bad_input import expect_error


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[Redis]:
    redis = connect(redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
async def unreachable() -> AsyncIterator[Redis]:
    redis = connect(f"redis://127.0.0.1:{free_port()}/0")
    yield redis
    await redis.aclose()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_nodes_sharing_redis_share_a_clients_rate(shared: Redis, bus_prefix: str) -> None:
    node_a, node_b = (RateLimiter(2, "test", Counters(shared, bus_prefix)) for _ in range(2))
    assert [await node.take("c") for node in (node_a, node_b, node_a, node_b)] == [None] * 4
    for node in (node_a, node_b):
        wait = await node.take("c")  # each node alone would allow four
        assert wait is not None and 0 < wait <= 2
    assert await node_b.take("another client") is None


async def test_rates_count_on_each_node_while_redis_is_unreachable(
    unreachable: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RateLimiter(1, "test", Counters(unreachable))
    results = [await limiter.take("c") for _ in range(3)]
    assert results[:2] == [None, None] and results[2] is not None  # the node's own count
    assert len(warnings(caplog)) == 1  # once per outage, and Redis is left alone a while
    assert "counting on this node alone" in warnings(caplog)[0]


def test_redis_is_left_alone_a_while_after_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sonicgate.shared_redis")
    now = [0.0]
    outages = Outages("test", clock=lambda: now[0])
    assert outages.worth_trying()
    for _ in range(2):
        outages.failed(ConnectionError("refused"))
    assert not outages.worth_trying()  # a silent Redis would cost every call its timeout
    now[0] += RETRY_SECONDS
    assert outages.worth_trying()
    outages.succeeded()
    assert len(warnings(caplog)) == 1
    assert "test: Redis reachable again" in caplog.text


async def test_nodes_sharing_redis_share_a_clients_session_cap(
    shared: Redis, bus_prefix: str
) -> None:
    node_a, node_b = (RedisSlots(shared, bus_prefix, 2, ttl_seconds=30) for _ in range(2))
    assert await node_a.claim("c", "s1") is None
    assert await node_b.claim("c", "s2") is None
    assert await node_a.claim("c", "s3") == 2
    assert await node_b.claim("c", "s3") == 2
    assert await node_b.claim("c", "s1") is None  # a resume (here, on another node) adds none
    assert await node_a.claim("another client", "s4") is None
    await node_a.release("c", "s1")
    await node_b.renew()  # ... and the node that resumed it holds it again
    assert await node_a.claim("c", "s3") == 2
    await node_b.release("c", "s1")
    assert await node_a.claim("c", "s3") is None


async def test_the_sessions_of_a_node_that_stops_renewing_lapse(
    shared: Redis, bus_prefix: str
) -> None:
    dead = RedisSlots(shared, bus_prefix, 1, ttl_seconds=0.2)
    alive = RedisSlots(shared, bus_prefix, 1, ttl_seconds=0.2)
    assert await dead.claim("c", "s1") is None
    assert await alive.claim("c", "s2") == 1
    await asyncio.sleep(0.3)  # by Redis's clock, the claim is gone
    assert await alive.claim("c", "s2") is None
    for _ in range(3):  # renewed, it stays
        await asyncio.sleep(0.1)
        await alive.renew()
    assert await dead.claim("c", "s3") == 1


async def test_a_session_resumed_on_its_node_is_held_until_both_holders_let_it_go() -> None:
    slots = LocalSlots(1)
    assert await slots.claim("c", "s1") is None
    assert await slots.claim("c", "s1") is None  # the resume, before the first holder closes
    await slots.release("c", "s1")
    assert await slots.claim("c", "s2") == 1
    await slots.release("c", "s1")
    assert await slots.claim("c", "s2") is None


async def test_sessions_count_on_each_node_while_redis_is_unreachable(
    unreachable: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    slots = RedisSlots(unreachable, "p", 1, ttl_seconds=30)
    assert await slots.claim("c", "s1") is None
    assert await slots.claim("c", "s2") == 1
    await slots.release("c", "s1")
    await slots.renew()
    assert await slots.claim("c", "s2") is None
    assert len(warnings(caplog)) == 1
    assert "sessions per client" in warnings(caplog)[0]


def test_sessions_count_in_redis_only_when_shared_and_limited(shared: Redis) -> None:
    assert isinstance(open_slots(10, shared, "p", 30), RedisSlots)
    assert isinstance(open_slots(0, shared, "p", 30), LocalSlots)
    assert isinstance(open_slots(10, None, "p", 30), LocalSlots)


async def test_a_node_holds_the_limits_alone_while_its_redis_is_unreachable(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await make_server(
        {"scripted": scripted},
        bus=f"redis://127.0.0.1:{free_port()}/0",
        max_sessions_per_client=1,
        max_messages_per_second=1,  # 2 in any 2 seconds
    )
    client = await connect(server.ws())
    await client.initialize()
    other = await connect(server.ws())
    await other.send({"type": "initialize"})
    await expect_error(other, "too_many_sessions")
    await client.send({"type": "text_message", "text": "a third message"})
    await expect_error(client, "rate_limited")
    assert {"rate limits", "sessions per client"} <= {
        message.partition(":")[0] for message in warnings(caplog)
    }
