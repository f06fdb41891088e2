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
from dataclasses import dataclass, field

from bench.lean_ws import LeanWebSocket, frame
from bench.nova_overhead import encoded_chunk, read_mark

SEED_CHUNK_SAMPLES = 4096  # the second seed's chunk: 256 ms at 16 kHz
DRAIN_SECONDS = 2.0  # after the last send, for the last echoes
AUDIO_RESPONSE = b'"audio_response"'
AUDIO_KEY = b'"audio":"'
MARK_CHARS = 12  # base64 characters that hold the mark's 8 bytes (and one more)


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
    url: str,
    index: int,
    sessions: int,
    frames: list[bytes],
    chunk_seconds: float,
    ready: asyncio.Barrier,
) -> EchoStats:
    """One session sending ``frames`` (chunk n's ``audio_chunk``, framed) in real time.

    Sends are timer callbacks and replies are read in the protocol's callback: no
    task wakes per chunk, so the load generator's own CPU stays small beside the
    server's (they share the machine)."""
    stats = EchoStats(1, chunk_seconds)
    count = len(frames)
    sent_at = [0.0] * count
    ws = await LeanWebSocket.connect(url)
    opening = {"type": "initialize", "engine": "echo", "userId": f"load-{index}"}
    ws.send(json.dumps(opening).encode())
    reply = json.loads(await ws.recv())
    assert reply["type"] == "initialized", reply
    loop = asyncio.get_running_loop()
    all_back = asyncio.Event()
    expected = 0

    def on_message(raw: bytes) -> None:
        nonlocal expected
        if AUDIO_RESPONSE not in raw:
            return
        at = raw.find(AUDIO_KEY) + len(AUDIO_KEY)
        mark = read_mark(base64.b64decode(raw[at : at + MARK_CHARS]))
        stats.round_trip_ms.append((loop.time() - sent_at[mark]) * 1000)
        stats.received += 1
        stats.reordered += mark != expected
        expected = mark + 1
        if stats.received == count:
            all_back.set()

    ws.on_message = on_message
    await ready.wait()
    start = loop.time() + index * chunk_seconds / sessions  # spread the sessions
    sent = loop.create_future()

    def send(n: int) -> None:
        sent_at[n] = loop.time()
        ws.send_frame(frames[n])
        stats.sent += 1
        if n + 1 < count:
            loop.call_at(start + (n + 1) * chunk_seconds, send, n + 1)
        else:
            sent.set_result(None)

    loop.call_at(start, send, 0)
    await sent
    with contextlib.suppress(TimeoutError):  # what is still missing then counts as lost
        await asyncio.wait_for(all_back.wait(), DRAIN_SECONDS)
    ws.on_message = None
    ws.send(json.dumps({"type": "end_conversation"}).encode())
    await ws.close()
    return stats


async def echo_load(
    url: str, sessions: int, seconds: float, chunk_samples: int = SEED_CHUNK_SAMPLES
) -> EchoStats:
    chunk_seconds = chunk_samples / 16_000
    # Encoded and framed once: every session sends the same marked chunks.
    messages = (
        {"type": "audio_chunk", "audio": encoded_chunk(n, chunk_samples)}
        for n in range(int(seconds / chunk_seconds))
    )
    frames = [frame(json.dumps(message).encode()) for message in messages]
    ready = asyncio.Barrier(sessions)
    results = await asyncio.gather(
        *(echo_session(url, i, sessions, frames, chunk_seconds, ready) for i in range(sessions))
    )
    total = EchoStats(sessions, chunk_samples / 16_000)
    for result in results:
        total.merge(result)
    return total
