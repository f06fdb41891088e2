"""Sessions that stream real-time audio through sonicgate's echo engine and check
what comes back: the gateway measured alone, with no model in the way.

Each chunk carries its number in its first samples. The echo engine returns
every chunk as an ``audio_response``, so a session sees at once whether a
chunk was lost or came back out of order, and how long the round trip took
(client → gateway → engine → gateway → client: all of it gateway code).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field

import websockets

from bench.nova_overhead import marked_chunk, read_mark

SEED_CHUNK_SAMPLES = 4096  # the second seed's chunk: 256 ms at 16 kHz
DRAIN_SECONDS = 2.0  # after the last send, for the last echoes


@dataclass
class EchoStats:
    sessions: int
    chunk_seconds: float
    sent: int = 0
    received: int = 0
    reordered: int = 0
    round_trip_ms: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def merge(self, other: EchoStats) -> None:
        self.sent += other.sent
        self.received += other.received
        self.reordered += other.reordered
        self.round_trip_ms += other.round_trip_ms


async def echo_session(
    url: str, index: int, sessions: int, seconds: float, chunk_samples: int, ready: asyncio.Barrier
) -> EchoStats:
    chunk_seconds = chunk_samples / 16_000
    stats = EchoStats(1, chunk_seconds)
    sent_at: dict[int, float] = {}
    count = int(seconds / chunk_seconds)
    all_back = asyncio.Event()
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(
            json.dumps({"type": "initialize", "engine": "echo", "userId": f"load-{index}"})
        )
        reply = json.loads(await ws.recv())
        assert reply["type"] == "initialized", reply

        async def read() -> None:
            expected = 0
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] != "audio_response":
                    continue
                mark = read_mark(base64.b64decode(message["audio"]))
                stats.round_trip_ms.append((time.monotonic() - sent_at[mark]) * 1000)
                stats.received += 1
                stats.reordered += mark != expected
                expected = mark + 1
                if stats.received == count:
                    all_back.set()

        reader = asyncio.create_task(read())
        await ready.wait()
        start = time.monotonic() + index * chunk_seconds / sessions  # spread the sessions
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n * chunk_seconds - time.monotonic()))
            sent_at[n] = time.monotonic()
            payload = base64.b64encode(marked_chunk(n, chunk_samples)).decode()
            await ws.send(json.dumps({"type": "audio_chunk", "audio": payload}))
            stats.sent += 1
        with contextlib.suppress(TimeoutError):  # what is still missing then counts as lost
            await asyncio.wait_for(all_back.wait(), DRAIN_SECONDS)
        reader.cancel()
        await ws.send(json.dumps({"type": "end_conversation"}))
    return stats


async def echo_load(
    url: str, sessions: int, seconds: float, chunk_samples: int = SEED_CHUNK_SAMPLES
) -> EchoStats:
    ready = asyncio.Barrier(sessions)
    results = await asyncio.gather(
        *(echo_session(url, i, sessions, seconds, chunk_samples, ready) for i in range(sessions))
    )
    total = EchoStats(sessions, chunk_samples / 16_000)
    for result in results:
        total.merge(result)
    return total
