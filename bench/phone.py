"""Phone calls over Twilio Media Streams, through a server; two measures.

``latency``: end of the caller's speech -> the first reply audio on the call, local
engine, at real-time pace: questions in hibari's voice at telephone quality (8 kHz
μ-law, 20 ms frames) from the phone emulator of ``tests/emulators/twilio_phone.py``,
and the same questions in the same voice through the second seed's WebSocket dialect
in 20 ms chunks of 16 kHz pcm16 (``bench.local_latency``), on the same server, turn
about. Goal: the call within 50 ms of the WebSocket.

``cost``: what the μ-law/resampling path costs per 20 ms frame while N calls on the
echo engine stream speech at real-time pace from another process: the caller's frame
decoded and upsampled to 16 kHz, and its echo resampled to 8 kHz and encoded, each
timed inside the server (which runs in this process for that). Goal: p99 <= 1 ms at
100 calls. Also the server's CPU per call, and each frame's echo round trip at the
phone (which includes the output resampler's hold-back, see the README).

Writes ``bench/results/phone.json``.

    python -m bench.phone [--part latency|cost|both] [--turns 10] [--calls 100] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.harness import (
    UNLIMITED,
    cpu_seconds,
    percentile,
    start_server,
    wait_ready,
    write_results,
)
from bench.local_latency import UTTERANCES, ask, conversation
from bench.speech import natural, silence, speak
from sonicgate.audio.telephony import FRAME_SECONDS, CallerAudio, ReplyAudio
from sonicgate.config import Settings
from sonicgate.engines.echo import EchoEngine
from sonicgate.server.app import create_app
from sonicgate.server.graceful import GracefulServer, server_config
from tests.emulators.twilio_phone import Phone

FRAME_SAMPLES = 320  # 20 ms at 16 kHz: the WebSocket client's chunks match the call's frames
QUIET_AFTER_REPLY = 1.5  # seconds without reply audio that end a reply


# latency ---------------------------------------------------------------------------------


async def both_ways(server: str, turns: int) -> dict[str, list[dict[str, Any]]]:
    """The same questions over the WebSocket and over a call, turn about: one
    conversation each, so that both carry the same history."""
    runs: dict[str, list[dict[str, Any]]] = {"websocket": [], "call": []}
    phone = await Phone.ring(server)
    try:
        async with conversation(server.replace("http", "ws", 1) + "/api/nova-sonic/stream") as ws:
            for index in range(turns):
                text = UTTERANCES[index % len(UTTERANCES)]
                runs["websocket"].append(await ask(ws, text, FRAME_SAMPLES * 2))
                runs["call"].append({"utterance": text, "latency": await ask_by_phone(phone, text)})
                print(
                    f"turn {index + 1:2d}: websocket {runs['websocket'][-1]['latency'] * 1000:5.0f}"
                    f" ms, call {runs['call'][-1]['latency'] * 1000:5.0f} ms",
                    file=sys.stderr,
                )
    finally:
        await phone.hang_up()
    return runs


async def ask_by_phone(phone: Phone, text: str) -> float:
    """Say ``text``; seconds from its end to the first frame of the answer, once the
    answer has been heard."""
    said = silence(0.3) + natural(text)  # as bench.local_latency's ask says it
    before = len(phone.messages("media"))
    phone.say(said)
    await phone.until(lambda: phone.speech_sent_at is not None, 5)
    assert phone.speech_sent_at is not None
    # The first frame goes once all of it was heard: it began 20 ms before.
    speech_end = phone.speech_sent_at - FRAME_SECONDS + len(said) / 32_000
    await phone.until(lambda: len(phone.messages("media")) > before, 30)
    first = [when for when, m in phone.received if m["event"] == "media"][before]
    await reply_heard(phone)
    return round(first - speech_end, 4)


async def reply_heard(phone: Phone) -> None:
    """Until the reply has played and no more of it came for a while."""
    while True:
        count = len(phone.messages("media"))
        await asyncio.sleep(QUIET_AFTER_REPLY)
        if len(phone.messages("media")) == count and not phone.playing:
            await asyncio.sleep(0.5)  # like a person, as bench.local_latency's
            return


def measure_latency(turns: int, port: int) -> dict[str, Any]:
    server = start_server(port, *UNLIMITED)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(f"ws://127.0.0.1:{port}/api/nova-sonic/stream"))
        runs = asyncio.run(both_ways(url, turns))
    finally:
        server.terminate()
        server.wait()
    p50 = {way: percentile([t["latency"] for t in runs[way]], 50) for way in runs}
    summary = {
        "turns": turns,
        "call_latency_p50": p50["call"],
        "call_latency_p95": percentile([t["latency"] for t in runs["call"]], 95),
        "websocket_latency_p50": p50["websocket"],
        "websocket_latency_p95": percentile([t["latency"] for t in runs["websocket"]], 95),
        "call_minus_websocket_p50": round(p50["call"] - p50["websocket"], 4),
    }
    return {"summary": summary, "turns": runs}


# cost ------------------------------------------------------------------------------------


def timed(owner: type, name: str, into: list[float]) -> None:
    """Have ``owner.name`` record how long each call of it takes."""
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(self: Any, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args)
        finally:
            into.append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def run_calls(server: str, calls: int, seconds: float, pipe: Connection) -> None:
    """The load generator's process: ``calls`` phones saying speech for ``seconds``;
    sends back each frame's echo round trip (k-th frame sent -> k-th frame back)."""

    async def call(speech: bytes) -> list[float]:
        phone = await Phone.ring(server, query="?engine=echo")
        for _ in range(int(seconds / (len(speech) / 32_000)) + 1):
            phone.say(speech)
        await asyncio.sleep(seconds)
        await phone.hang_up()
        back = [when for when, m in phone.received if m["event"] == "media"]
        return [b - s for s, b in zip(phone.frames_sent_at, back, strict=False)]

    async def load() -> list[float]:
        speech = speak("The quick brown fox jumps over the lazy dog, again and again.")
        trips = await asyncio.gather(*(call(speech) for _ in range(calls)))
        return [trip for each in trips for trip in each[50:]]  # the first second warms up

    pipe.send(asyncio.run(load()))


async def serve_and_load(port: int, calls: int, seconds: float) -> dict[str, Any]:
    decode: list[float] = []
    encode: list[float] = []
    timed(CallerAudio, "feed", decode)
    timed(ReplyAudio, "feed", encode)
    with tempfile.TemporaryDirectory(prefix="sonicgate-bench-") as data_dir:
        settings = echo_settings(port, Path(data_dir))
        trips, cpu = await serve(settings, calls, seconds)
    return cost_summary(decode, encode, trips, calls, cpu)


def echo_settings(port: int, data_dir: Path) -> Settings:
    """A server for load: echo engine, no per-client limits (one address calls)."""
    return Settings(
        port=port,
        engine="echo",
        data_dir=data_dir,
        log_level="warning",
        max_sessions_per_client=0,
        max_messages_per_second=0,
        max_requests_per_second=0,
    )


async def serve(settings: Settings, calls: int, seconds: float) -> tuple[list[float], float]:
    """The server here, the calls from another process; their echo round trips, and
    the server's CPU (in cores) while they lasted."""
    app = create_app(settings, {"echo": EchoEngine()})
    server = GracefulServer(server_config(app, settings), app.state.manager)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # it failed to start: say why
        await asyncio.sleep(0.05)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    context = multiprocessing.get_context("spawn")
    load = context.Process(
        target=run_calls, args=(f"http://127.0.0.1:{settings.port}", calls, seconds, sender)
    )
    cpu_before, wall_before = cpu_seconds(os.getpid()), time.monotonic()
    load.start()
    trips: list[float] = await asyncio.to_thread(receiver.recv)
    cpu = cpu_seconds(os.getpid()) - cpu_before
    wall = time.monotonic() - wall_before
    load.join()
    server.should_exit = True
    await serving
    return trips, cpu / wall


def cost_summary(
    decode: list[float], encode: list[float], trips: list[float], calls: int, cpu: float
) -> dict[str, Any]:
    def ms(values: list[float], q: float) -> float:
        return round(percentile(values, q) * 1000, 4)

    # Each frame is decoded once and, on the echo engine, encoded once: the n-th of each
    # taken together.
    per_frame = [a + b for a, b in zip(decode, encode, strict=False)]
    return {
        "calls": calls,
        "frames": len(per_frame),
        "added_ms_per_frame_p50": ms(per_frame, 50),
        "added_ms_per_frame_p99": ms(per_frame, 99),
        "added_ms_per_frame_max": round(max(per_frame) * 1000, 4),
        "decode_ms_p99": ms(decode, 99),
        "encode_ms_p99": ms(encode, 99),
        "server_cpu_percent": round(100 * cpu, 1),
        "server_cpu_percent_per_call": round(100 * cpu / calls, 3),
        "echo_round_trip_ms_p50": ms(trips, 50),
        "echo_round_trip_ms_p99": ms(trips, 99),
        "echo_round_trip_ms_mean": round(statistics.fmean(trips) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("latency", "cost", "both"), default="both")
    parser.add_argument("--turns", type=int, default=10, help="questions each way")
    parser.add_argument("--calls", type=int, default=100, help="calls at once, for the cost")
    parser.add_argument("--seconds", type=float, default=60, help="how long they last")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    summary: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if args.part in ("latency", "both"):
        latency = measure_latency(args.turns, args.port)
        summary["latency"], details["turns"] = latency["summary"], latency["turns"]
    if args.part in ("cost", "both"):
        summary["cost"] = asyncio.run(serve_and_load(args.port + 1, args.calls, args.seconds))
    write_results(
        "phone",
        summary,
        goals={
            "latency": "call_minus_websocket_p50 <= 0.05 s",
            "cost": "added_ms_per_frame_p99 <= 1 ms at 100 calls",
        },
        **details,
    )


if __name__ == "__main__":
    main()
