"""What sonicgate adds on the Nova Sonic path, at 1, 10, 50 and 100 sessions.

Three processes on this machine: the Nova Sonic emulator (HTTP/2 + TLS +
eventstream, ``tests/emulators``), a sonicgate server using the Nova engine
through the real SDK, and a load generator whose sessions stream audio in
real time in the second seed's dialect (by default its recommended 4096-sample
chunks, 256 ms; ``--chunk-samples 512`` for 32 ms ones). Each chunk carries a
counter in its low bits; the emulator notes when each counter arrives. The
added latency of a chunk is its arrival at the emulator minus its send by the
client (one monotonic clock for all processes), so it counts the client's
WebSocket hop, sonicgate, the SDK and HTTP/2: an upper bound on what sonicgate
adds. CPU per session is the server's CPU time over the run, per session.
Writes ``bench/results/nova_overhead.json``.

    python -m bench.nova_overhead [--levels 1 10 50 100] [--seconds 60] [--chunk-samples 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.harness import (
    REDIS_BUS,
    UNLIMITED,
    cpu_seconds,
    percentile,
    quiet,
    tree_cpu_seconds,
    wait_ready,
    worker_options,
    write_results,
)
from bench.lean_ws import LeanWebSocket

SEED_CHUNK_SAMPLES = 4096  # the second seed's recommendation: 256 ms at 16 kHz
MARK_SAMPLES = 4  # base-256 digits of the counter: too quiet to sound like speech


def marked_chunk(counter: int, samples: int) -> bytes:
    digits = [(counter >> (8 * i)) & 0xFF for i in range(MARK_SAMPLES)]
    marks = b"".join(digit.to_bytes(2, "little") for digit in digits)
    return marks + bytes((samples - MARK_SAMPLES) * 2)


def encoded_chunk(counter: int, samples: int) -> str:
    """``marked_chunk`` as an ``audio_chunk`` carries it: base64."""
    return base64.b64encode(marked_chunk(counter, samples)).decode()


def read_mark(pcm: bytes) -> int:
    return sum(int.from_bytes(pcm[2 * i : 2 * i + 2], "little") << (8 * i) for i in range(4))


def run_emulator(pipe: Connection) -> None:
    """The emulator's process: reports its endpoint, then the arrival time of each mark."""
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from tests.emulators.nova_sonic import NovaEmulator

    arrivals: dict[int, float] = {}

    async def serve() -> None:
        async with NovaEmulator() as emulator:

            def arrived(pcm: bytes) -> None:
                arrivals.setdefault(read_mark(pcm), time.monotonic())

            emulator.on_audio = arrived
            pipe.send((emulator.endpoint, emulator.ca_file))
            while True:
                await asyncio.to_thread(pipe.poll, None)
                if pipe.recv() == "stop":
                    pipe.send(arrivals)
                    return
                pipe.send(arrivals)
                arrivals.clear()

    asyncio.run(serve())


async def load(
    url: str, sessions: int, seconds: float, base: int, chunk_samples: int
) -> dict[int, float]:
    """``sessions`` clients streaming for ``seconds``; the send time of every mark."""
    chunk_seconds = chunk_samples / 16_000
    sends: dict[int, float] = {}
    ready = asyncio.Barrier(sessions)

    async def client(index: int) -> None:
        ws = await LeanWebSocket.connect(url)  # a client that costs the machine little
        opening = {
            "type": "initialize",
            "userId": f"bench-{index}",
            "awsAccessKeyId": "AKIDEXAMPLE",
            "awsSecretAccessKey": "bench-secret",
        }
        ws.send(json.dumps(opening).encode())
        ready_message = json.loads(await ws.recv())
        assert ready_message["type"] == "initialized", ready_message
        ws.on_message = lambda _: None  # what the engine says back is not measured here
        await ready.wait()
        start = time.monotonic() + index * chunk_seconds / sessions  # spread the sends
        count = int(seconds / chunk_seconds)
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n * chunk_seconds - time.monotonic()))
            mark = base + index * count + n
            payload = encoded_chunk(mark, chunk_samples)
            sends[mark] = time.monotonic()
            ws.send(json.dumps({"type": "audio_chunk", "audio": payload}).encode())
        await asyncio.sleep(0.5)  # the last chunks reach the emulator
        ws.send(json.dumps({"type": "end_conversation"}).encode())
        await ws.close()

    await asyncio.gather(*(client(i) for i in range(sessions)))
    return sends


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50, 100])
    # A conversation lasts minutes: 60 s per level lets the steady state dominate, and
    # each session's first chunk (its stream's first write) is reported apart.
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--chunk-samples", type=int, default=SEED_CHUNK_SAMPLES)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--bus", default=REDIS_BUS, help="the Redis that several workers share")
    args = parser.parse_args()

    ours, theirs = multiprocessing.Pipe()
    emulator = multiprocessing.Process(target=run_emulator, args=(theirs,), daemon=True)
    emulator.start()
    endpoint, ca_file = ours.recv()
    command = [
        *(sys.executable, "-m", "sonicgate", "serve", "--port", str(args.port)),
        *("--engine", "nova-sonic", "--nova-fallback", "none", "--log-level", "warning"),
        *("--nova-endpoint", endpoint, "--nova-ca-file", ca_file),
        *UNLIMITED,
        *worker_options(args.workers, args.bus),
    ]
    server = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"ws://127.0.0.1:{args.port}/api/nova-sonic/stream"
    levels: list[dict[str, Any]] = []
    try:
        asyncio.run(wait_ready(url))
        quiet(server.pid)  # the first worker listens while the others still start
        assert emulator.pid is not None
        emulator_pid = emulator.pid

        def cpu_used() -> tuple[float, float, float]:
            """The server's (its workers too), the emulator's and this process's own."""
            own = cpu_seconds(os.getpid())
            return tree_cpu_seconds(server.pid), cpu_seconds(emulator_pid), own

        for level, sessions in enumerate(args.levels):
            before = cpu_used()
            wall_before = time.monotonic()
            sends = asyncio.run(load(url, sessions, args.seconds, level << 24, args.chunk_samples))
            cpu, emulator_cpu, load_cpu = (
                after - used for after, used in zip(cpu_used(), before, strict=True)
            )
            wall = time.monotonic() - wall_before
            ours.send("report")
            arrivals: dict[int, float] = ours.recv()
            added = [(arrivals[m] - sent) * 1000 for m, sent in sends.items() if m in arrivals]
            # Each session's first chunk also pays for its stream's first write (~40 ms
            # here, TCP-level): shown apart so the steady state is visible too.
            per_session = int(args.seconds / (args.chunk_samples / 16_000))
            first = [
                (arrivals[m] - sent) * 1000
                for m, sent in sends.items()
                if m in arrivals and (m - (level << 24)) % per_session == 0
            ]
            steady = sorted(added)
            for value in first:
                steady.remove(value)
            result = {
                "sessions": sessions,
                "workers": args.workers,
                "chunks_sent": len(sends),
                "chunks_arrived": len(added),
                "added_ms_p50": round(percentile(added, 50), 3),
                "added_ms_p99": round(percentile(added, 99), 3),
                "added_ms_max": round(max(added), 3),
                "first_chunk_ms_p50": round(percentile(first, 50), 3),
                "after_first_chunk_ms_p99": round(percentile(steady, 99), 3),
                "server_cpu_percent_per_session": round(100 * cpu / wall / sessions, 3),
                "server_cpu_percent": round(100 * cpu / wall, 1),
                # The same 2 cores also run these: a saturated emulator shows up as latency.
                "emulator_cpu_percent": round(100 * emulator_cpu / wall, 1),
                "load_generator_cpu_percent": round(100 * load_cpu / wall, 1),
            }
            levels.append(result)
            print(json.dumps(result), file=sys.stderr)
    finally:
        server.terminate()
        server.wait()
        ours.send("stop")
        emulator.join(5)
    write_results(
        "nova_overhead",
        {"levels": levels},
        chunk_ms=args.chunk_samples / 16,
        seconds_per_level=args.seconds,
        target="p99 added latency <= 5 ms at 100 sessions",
    )


if __name__ == "__main__":
    main()
