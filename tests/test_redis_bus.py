"""The Redis bus across nodes, through outages, and picked by URL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sonicgate.bus import open_bus
from sonicgate.bus import redis as redis_bus
from sonicgate.bus.base import RESPONSE_EVENT, SESSION_EVENT, TRANSCRIPTION_EVENT, BusEvent, Filter
from sonicgate.bus.memory import MemoryBus
from sonicgate.bus.redis import RedisBus
from tests.conftest import Client, Connect, ServerFactory, eventually, free_port
from tests.scripted_engine import ScriptedEngine, tone


def event(n: int) -> BusEvent:
    return BusEvent(SESSION_EVENT, "s1", "u1", {"n": n}, "2024-01-01T00:00:00.000Z")


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    await eventually(lambda: text in caplog.text, f"{text!r} logged")


def test_the_bus_is_picked_by_url(redis_url: str) -> None:
    assert isinstance(open_bus("memory", "p"), MemoryBus)
    assert isinstance(open_bus(redis_url, "p"), RedisBus)
    for bad in ("redis", "http://host", "redis://", "redis://host:port", "redis://host/x"):
        with pytest.raises(ValueError, match=r"use 'memory' or redis://"):
            open_bus(bad, "p")


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis tried again every 20 ms rather than every second."""
    monkeypatch.setattr(redis_bus, "RETRY_SECONDS", 0.02)
    monkeypatch.setattr(redis_bus, "RESUBSCRIBED_SECONDS", 1.5 * 0.02)


async def test_publishing_never_waits_on_an_unreachable_redis_and_warns_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, quick_retries: None
) -> None:
    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", "unreachable")
    pings = 0
    ping = bus._redis.ping

    async def counted_ping() -> object:  # after the first failure, each attempt pings
        nonlocal pings
        pings += 1
        return await ping()

    monkeypatch.setattr(bus._redis, "ping", counted_ping)
    for n in range(3):
        await asyncio.wait_for(bus.publish(event(n)), 0.05)
    await logged(caplog, "unreachable")  # the outbox's sender finds Redis gone
    await eventually(lambda: pings >= 2, "two more attempts")  # without another warning
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping events" in warnings[0].getMessage()
    await asyncio.wait_for(bus.aclose(), 5)  # gives up flushing after a while


async def test_a_conversation_goes_on_while_redis_is_unreachable(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server({"scripted": scripted}, bus=f"redis://127.0.0.1:{free_port()}/0")
    client = await connect(server.ws())
    await client.initialize()
    await client.send({"type": "text_message", "text": "hello"})
    final, _ = await client.final_reply()
    assert final["text"] == scripted.reply


class OwnRedis:
    """A Redis server of the test's own (the machine's shared one is never stopped)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _launch(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)

    async def start(self) -> None:
        self._launch()
        async with Redis.from_url(self.url) as redis:
            for _ in range(100):
                with contextlib.suppress(RedisError):
                    await redis.ping()
                    return
                await asyncio.sleep(0.05)
        raise AssertionError("the test's Redis did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary")
    redis = OwnRedis(tmp_path)
    await redis.start()
    yield redis
    redis.stop()


async def test_events_published_during_an_outage_reach_every_node_once_redis_is_back(
    own_redis: OwnRedis, bus_prefix: str, caplog: pytest.LogCaptureFixture, quick_retries: None
) -> None:
    caplog.set_level(logging.INFO, "sonicgate.bus.redis")
    here, there = RedisBus(own_redis.url, bus_prefix), RedisBus(own_redis.url, bus_prefix)
    mine, theirs = here.subscribe(Filter()), there.subscribe(Filter())
    await subscribed(own_redis.url, f"{bus_prefix}:events", count=2)
    await here.publish(event(1))
    for subscription in (mine, theirs):
        assert (await asyncio.wait_for(anext(subscription), 5)).data == {"n": 1}

    own_redis.stop()
    for n in (2, 3):
        await asyncio.wait_for(here.publish(event(n)), 0.05)  # kept in the outbox
    await logged(caplog, "unreachable")
    await own_redis.start()
    for subscription in (mine, theirs):  # both readers subscribe again, then the outbox goes
        seen = [await asyncio.wait_for(anext(subscription), 10) for _ in range(2)]
        assert [e.data for e in seen] == [{"n": 2}, {"n": 3}]
    assert "reachable again" in caplog.text
    await here.aclose()
    await there.aclose()


async def subscribed(redis_url: str, channel: str, count: int = 1) -> None:
    """Until ``count`` nodes listen on ``channel``: Redis tells nobody, so it is asked."""
    async with Redis.from_url(redis_url) as redis:
        for _ in range(250):
            if dict(await redis.pubsub_numsub(channel)).get(channel.encode(), 0) >= count:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {count} nodes subscribed to {channel} within 5 s")


async def test_events_on_one_node_reach_a_subscriber_on_another(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    redis_url: str,
    bus_prefix: str,
    tmp_path: Path,
) -> None:
    shared = {"bus": redis_url, "bus_prefix": bus_prefix}
    node_a = await make_server({"scripted": scripted}, data_dir=tmp_path / "a", **shared)
    node_b = await make_server({"scripted": scripted}, data_dir=tmp_path / "b", **shared)
    client: Client = await connect(node_a.ws())
    session_id = (await client.initialize(userId="alice"))["sessionId"]
    events: Client = await connect(node_b.ws(f"/api/events?sessionId={session_id}"))
    await subscribed(redis_url, f"{bus_prefix}:events")  # only node B subscribes

    await client.stream_audio(tone(1.5, 16_000))
    await client.send({"type": "audio_chunk", "audio": "", "isComplete": True})
    await client.final_reply()
    await client.send({"type": "end_conversation"})
    await client.until("conversation_ended")

    ended, seen = await events.until(SESSION_EVENT)
    while ended["data"].get("event") != "ended":
        seen.append(ended)
        ended, more = await events.until(SESSION_EVENT)
        seen += more
    assert {e["sessionId"] for e in [*seen, ended]} == {session_id}
    assert {e["userId"] for e in seen} == {"alice"}
    kinds = {e["type"] for e in seen}
    assert {SESSION_EVENT, TRANSCRIPTION_EVENT, RESPONSE_EVENT} <= kinds
    finals = [e["data"] for e in seen if e["type"] == TRANSCRIPTION_EVENT and e["data"]["isFinal"]]
    assert [f["text"] for f in finals] == [scripted.transcript]
    responses = [e["data"]["text"] for e in seen if e["type"] == RESPONSE_EVENT]
    assert responses == [scripted.reply]


async def test_a_full_outbox_drops_only_its_oldest_event_while_one_is_being_sent(
    redis_url: str, bus_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: the outbox keeps up to its size, then the oldest go. An event published
    while the outbox is full and its first event is on its way to Redis must not cost
    another event, one that was never sent."""
    monkeypatch.setattr(redis_bus, "OUTBOX_SIZE", 3)
    bus = RedisBus(redis_url, bus_prefix)
    subscription = bus.subscribe(Filter())
    await subscribed(redis_url, f"{bus_prefix}:events")
    sending, go_on = asyncio.Event(), asyncio.Event()
    publish = bus._redis.publish

    async def slow_publish(channel: str, message: str) -> object:  # a busy Redis
        sending.set()
        await go_on.wait()
        return await publish(channel, message)

    monkeypatch.setattr(bus._redis, "publish", slow_publish)
    for n in (1, 2, 3):
        await bus.publish(event(n))  # the outbox is full
    await asyncio.wait_for(sending.wait(), 5)  # event 1 is on its way
    await bus.publish(event(4))  # one too many: the oldest goes
    go_on.set()
    seen = []
    with contextlib.suppress(TimeoutError):
        while True:
            seen.append((await asyncio.wait_for(anext(subscription), 1)).data["n"])
    await bus.aclose()
    assert seen[-3:] == [2, 3, 4], seen
