"""Load: many sessions streaming real-time audio through one sonicgate process
for minutes, on the echo engine so that only the gateway is measured.

Checks that no chunk is lost or reordered, reports the round-trip latency
(p50/p99) and samples the server's memory every few seconds: after warm-up
it must stay flat. Writes ``bench/results/load.json``.

    python -m bench.load [--sessions 100] [--minutes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.echo_load import SEED_CHUNK_SAMPLES, echo_load
from bench.harness import (
    UNLIMITED,
    cpu_seconds,
    percentile,
    rss_mb,
    start_server,
    wait_ready,
    write_results,
)

SAMPLE_SECONDS = 5.0
# The first 30 % of the run: buffers, pools and each session's turn recording
# (capped at a minute, sessions.sinks.RECORDING_LIMIT_SECONDS) filling up.
WARM_UP = 0.3


async def sample_memory(pid: int, into: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while True:
        into.append((round(time.monotonic() - start, 1), round(rss_mb(pid), 1)))
        await asyncio.sleep(SAMPLE_SECONDS)


async def run(url: str, pid: int, sessions: int, seconds: float) -> dict[str, Any]:
    memory: list[tuple[float, float]] = []
    sampler = asyncio.create_task(sample_memory(pid, memory))
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    stats = await echo_load(url, sessions, seconds, SEED_CHUNK_SAMPLES)
    cpu = cpu_seconds(pid) - cpu_before
    wall = time.monotonic() - wall_before
    sampler.cancel()
    settled = [mb for at, mb in memory if at >= WARM_UP * seconds]
    half = len(settled) // 2
    first, last = statistics.mean(settled[:half]), statistics.mean(settled[half:])
    return {
        "summary": {
            "sessions": sessions,
            "seconds": seconds,
            "chunk_ms": stats.chunk_seconds * 1000,
            "chunks_sent": stats.sent,
            "chunks_lost": stats.lost,
            "chunks_reordered": stats.reordered,
            "round_trip_ms_p50": round(percentile(stats.round_trip_ms, 50), 2),
            "round_trip_ms_p99": round(percentile(stats.round_trip_ms, 99), 2),
            "round_trip_ms_max": round(max(stats.round_trip_ms), 2),
            "server_cpu_percent": round(100 * cpu / wall, 1),
            "rss_mb_after_warm_up": round(first, 1),
            "rss_mb_at_end": round(last, 1),
            # Second half of the settled run against the first: ~0 when memory is flat.
            "rss_growth_percent": round(100 * (last - first) / first, 2),
        },
        "memory_mb": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=8768)
    args = parser.parse_args()
    server = start_server(args.port, "--engine", "echo", *UNLIMITED)
    url = f"ws://127.0.0.1:{args.port}/api/nova-sonic/stream"
    try:
        asyncio.run(wait_ready(url))
        result = asyncio.run(run(url, server.pid, args.sessions, args.minutes * 60))
    finally:
        server.terminate()
        server.wait()
    write_results("load", result["summary"], memory_mb=result["memory_mb"], engine="echo")


if __name__ == "__main__":
    main()
