"""Barge-in of the local engine, through a running server.

Asks for a long answer, and once its audio is playing, speaks over it at
real-time pace (second seed's dialect). Per trial it records how long the
engine took from detecting the speech onset to having stopped generation and
synthesis (the engine's ``barge_in_stopped`` stage, sent in ``metrics``), and
how long the client waited from the first audio of its interruption to the
``interrupted`` message (this includes the VAD needing some speech to be
sure). Writes ``bench/results/local_barge_in.json``.

    python -m bench.local_barge_in            # starts its own server
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import time
from typing import Any

import websockets

from bench.harness import measure, percentile, write_results
from bench.speech import silence, speak

QUESTION = "Tell me a long story about a brave knight and a dragon."
# Long replies: the barge-in lands while the LLM is still writing.
STORYTELLER = "You are a storyteller. Tell long, detailed stories."
INTERRUPTION = "Stop, wait a moment please."
CHUNK = 1024 * 2


class Microphone:
    """Sends audio at real-time pace; silence when it has nothing queued."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.queued = bytearray()
        self.started = time.perf_counter()
        self.sent = 0
        self.speech_sent_at: float | None = None  # when queued speech began to go out

    def say(self, pcm: bytes) -> None:
        self.queued += pcm
        self.speech_sent_at = None

    async def run(self) -> None:
        while True:
            chunk = bytes(self.queued[:CHUNK]) or bytes(CHUNK)
            if self.queued and self.speech_sent_at is None:
                self.speech_sent_at = time.perf_counter()
            del self.queued[:CHUNK]
            self.sent += CHUNK
            await asyncio.sleep(max(0.0, self.started + self.sent / 32_000 - time.perf_counter()))
            payload = {"type": "audio_chunk", "audio": base64.b64encode(chunk).decode()}
            await self.ws.send(json.dumps(payload))


async def next_message(ws: Any, kind: str, within: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] == kind:
                return message


async def until_reply_played(ws: Any) -> None:
    """Until the whole reply came (``isFinal`` text) and the client would have played it."""
    first_audio: float | None = None
    seconds = 0.0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "audio_response":
                    first_audio = first_audio or time.perf_counter()
                    seconds += len(base64.b64decode(message["audio"])) / 2 / message["sampleRate"]
                if message["type"] == "text_response" and message["isFinal"]:
                    break
    if first_audio is not None:
        await asyncio.sleep(max(0.0, first_audio + seconds - time.perf_counter()) + 0.3)


async def run_trials(url: str, trials: int) -> list[dict[str, Any]]:
    question = silence(0.3) + speak(QUESTION) + silence(0.1)
    interruption = speak(INTERRUPTION)
    results: list[dict[str, Any]] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(
            json.dumps({"type": "initialize", "userId": "bench", "systemPrompt": STORYTELLER})
        )
        assert (await next_message(ws, "initialized"))["type"] == "initialized"
        mic = Microphone(ws)
        sender = asyncio.create_task(mic.run())
        try:
            for index in range(trials):
                mic.say(question)
                await next_message(ws, "audio_response")
                await asyncio.sleep(0.3)  # the reply is playing
                mic.say(interruption)
                await next_message(ws, "interrupted")
                assert mic.speech_sent_at is not None
                heard = time.perf_counter() - mic.speech_sent_at
                stages = (await next_message(ws, "metrics"))["stages"]
                # The interruption is itself a question: let its answer finish.
                await until_reply_played(ws)
                # barge_in_stopped: generation was under way; barge_in_playback: the
                # reply was all sent and only its playback had to stop.
                [(stage, stopped)] = stages.items()
                trial = {
                    "stage": stage,
                    "stopped": stopped,
                    "speech_sent_to_interrupted": round(heard, 4),
                }
                results.append(trial)
                print(
                    f"trial {index + 1:2d}: {stage} {stopped * 1000:5.0f} ms after onset "
                    f"detection; client told {heard * 1000:5.0f} ms after its speech began",
                    file=sys.stderr,
                )
                await asyncio.sleep(0.5)
        finally:
            sender.cancel()
        await ws.send(json.dumps({"type": "end_conversation"}))
    return results


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    def spread(values: list[float]) -> dict[str, float]:
        return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values)}

    summary: dict[str, Any] = {"trials": len(trials)}
    for stage in ("barge_in_stopped", "barge_in_playback"):
        values = [t["stopped"] for t in trials if t["stage"] == stage]
        if values:
            summary[stage] = {"count": len(values), **spread(values)}
    summary["speech_sent_to_interrupted"] = spread(
        [t["speech_sent_to_interrupted"] for t in trials]
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server's stream URL (default: start one)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    trials = measure(args.url, args.port, lambda url: run_trials(url, args.trials))
    write_results("local_barge_in", summarize(trials), target_seconds=0.2, trials=trials)


if __name__ == "__main__":
    main()
