"""Voice-to-voice latency of the local engine, through a running server.

Plays utterances in hibari's voice into ``/api/nova-sonic/stream`` (second
seed's dialect) at real-time pace, then keeps streaming silence as a microphone
would. A natural voice: the turn detector hears by the intonation when a
speaker is done, and espeak-ng's flat endings would make it wait its 1.5 s
fallback. Per turn it records end of user speech -> first audio byte out, and
the engine's stage timings (the ``metrics`` message). Writes
``bench/results/local_latency.json``.

    python -m bench.local_latency            # starts its own server
    python -m bench.local_latency --url ws://127.0.0.1:8000/api/nova-sonic/stream
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import websockets

from bench.harness import measure, percentile, write_results
from bench.speech import natural, silence
from sonicgate.config import default_data_dir
from sonicgate.engines.local import stt, threads
from sonicgate.engines.local.cpu import load_llama_kernels
from sonicgate.engines.local.llm import ChatModel
from sonicgate.models import locate

UTTERANCES = [
    "What is the capital of France?",
    "Tell me a fun fact about the moon.",
    "How many legs does a spider have?",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book?",
    "What is two plus two?",
    "Why is the sky blue?",
    "Give me a tip for sleeping better.",
    "What is the tallest mountain in the world?",
    "How do I make a cup of tea?",
    "What is the weather usually like in London?",
    "Name a famous painter.",
    "What do bees make?",
    "How far away is the sun?",
    "What is your favourite colour?",
    "Tell me a short joke.",
    "What language is spoken in Brazil?",
    "How many days are in a leap year?",
    "What is the boiling point of water?",
    "Suggest a name for a cat.",
    "What is the largest ocean?",
    "How do plants make food?",
]


@contextlib.asynccontextmanager
async def conversation(url: str) -> AsyncIterator[websockets.ClientConnection]:
    """A session in the second seed's dialect, ended when done."""
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "initialize", "userId": "bench"}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "initialized", ready
        yield ws
        await ws.send(json.dumps({"type": "end_conversation"}))


async def run_turns(url: str, turns: int, chunk_samples: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with conversation(url) as ws:
        for index in range(turns):
            turn = await ask(ws, UTTERANCES[index % len(UTTERANCES)], chunk_samples * 2)
            results.append(turn)
            print(
                f"turn {index + 1:2d}: {turn['latency'] * 1000:6.0f} ms  "
                f"{turn.get('transcript', '')!r} -> {turn['reply'][:60]!r}",
                file=sys.stderr,
            )
    return results


async def ask(ws: websockets.ClientConnection, text: str, chunk_bytes: int) -> dict[str, Any]:
    """Say ``text`` at real-time pace, then silence, until the answer is complete; returns
    its latency and stages once the answer has been heard."""
    speech = natural(text)  # hibari: espeak-ng's flat endings sound unfinished
    audio = silence(0.3) + speech
    speech_end = len(audio) / 32_000  # seconds into the stream
    audio += silence(4.0)
    turn: dict[str, Any] = {"utterance": text, "speech_seconds": len(speech) / 32_000}
    done = asyncio.Event()
    start = time.perf_counter()

    async def listen() -> None:
        reply: list[str] = []
        async for raw in ws:
            message = json.loads(raw)
            kind = message["type"]
            now = time.perf_counter() - start
            if kind == "transcription" and message["isFinal"]:
                turn["transcript"] = message["text"]
            elif kind == "audio_response":
                turn.setdefault("first_audio_at", now)
                audio = base64.b64decode(message["audio"])
                turn["audio_seconds"] = (
                    turn.get("audio_seconds", 0) + len(audio) / 2 / message["sampleRate"]
                )
            elif kind == "text_response" and not message["isFinal"]:
                reply.append(message["text"])
            elif kind == "metrics" and "endpoint" in message["stages"]:
                turn["stages"] = message["stages"]
                turn["reply"] = "".join(reply).strip()
                done.set()
                return

    listener = asyncio.create_task(listen())
    sent = 0
    while not done.is_set():
        chunk = audio[sent : sent + chunk_bytes] or bytes(chunk_bytes)
        sent += chunk_bytes
        # A microphone hands over a chunk once all of it was captured.
        await asyncio.sleep(max(0.0, start + sent / 32_000 - time.perf_counter()))
        payload = {"type": "audio_chunk", "audio": base64.b64encode(chunk).decode()}
        await ws.send(json.dumps(payload))
        if sent / 32_000 > speech_end + 15:
            raise RuntimeError(f"no reply to {text!r}")
    await listener
    turn["latency"] = round(turn["first_audio_at"] - speech_end, 4)
    # Like a person: the next question once the answer has been heard.
    played = start + turn["first_audio_at"] + turn["audio_seconds"]
    await asyncio.sleep(max(0.0, played - time.perf_counter()) + 0.5)
    return turn


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [t["latency"] for t in turns]
    summary: dict[str, Any] = {
        "turns": len(turns),
        "latency_p50": percentile(latencies, 50),
        "latency_p95": percentile(latencies, 95),
        "latency_mean": round(statistics.fmean(latencies), 4),
        "stages_p50": {},
    }
    stage_names = sorted({name for t in turns for name in t.get("stages", {})})
    for name in stage_names:
        values = [t["stages"][name] for t in turns if name in t.get("stages", {})]
        summary["stages_p50"][name] = percentile(values, 50)
    return summary


def llm_figures() -> dict[str, Any]:
    """The default LLM's build, kernels, thread counts and speeds on this machine, as
    the server timed them (on 1 and 2 threads, with the TTS idle) and kept them; timed
    here, the server stopped, if it could not keep them (other work slowed it)."""
    model = locate(default_data_dir()).llm
    choice = threads.known(model) or threads.tune(ChatModel(model), model)
    return {
        "model": model.parent.name,
        "llama_cpp_python": version("llama-cpp-python"),
        "kernels": load_llama_kernels(),
        **choice.describe(),
    }


def stt_figures() -> Any:
    """Whisper's thread count and timings, as the server chose and kept them."""
    model = locate(default_data_dir()).stt
    return threads.read_kept(stt.KIND, stt.cache_key(model))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server's stream URL (default: start one)")
    parser.add_argument("--turns", type=int, default=22)
    parser.add_argument(
        "--chunk-samples", type=int, default=640, help="client chunk size (the web page's: 40 ms)"
    )
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    turns = measure(args.url, args.port, lambda url: run_turns(url, args.turns, args.chunk_samples))
    write_results(
        "local_latency",
        summarize(turns),
        llm=llm_figures(),
        stt=stt_figures(),
        client_chunk_samples=args.chunk_samples,
        turns=turns,
    )


if __name__ == "__main__":
    main()
