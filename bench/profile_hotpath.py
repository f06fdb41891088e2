"""Where the gateway's CPU goes per chunk: on the Nova Sonic path (through the
emulator and the real SDK) and on the echo path, at a number of real-time sessions.

The load is ``bench.nova_overhead``'s and ``bench.echo_load``'s; py-spy samples
the server's threads while it runs (busy samples only, so waiting costs nothing).
Reports the server's CPU time per chunk (from /proc, over the same window) and
the top functions by the share of samples in which they were running, and by the
share in which they were on the stack. Writes ``bench/results/profile_hotpath.json``.

    python -m bench.profile_hotpath [--sessions 100] [--seconds 30] [--top 25] [--native]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.echo_load import echo_load
from bench.harness import UNLIMITED, cpu_seconds, start_server, wait_ready, write_results
from bench.nova_overhead import SEED_CHUNK_SAMPLES, load, run_emulator


def sample(pid: int, seconds: float, output: Path, native: bool) -> subprocess.Popen[bytes]:
    """py-spy on the server for ``seconds``: its busy stacks, collapsed, into ``output``;
    ``native``: with the C frames (slower to sample, so the server is paused briefly)."""
    command = [
        str(Path(sys.executable).with_name("py-spy")),
        *("record", "--pid", str(pid), "--duration", str(int(seconds))),
        *("--rate", "250", "--format", "raw", "--output", str(output)),
        *(("--native",) if native else ("--nonblocking",)),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top(collapsed: Path, count: int) -> list[dict[str, Any]]:
    """Functions by the share of samples they ran in (own) or were on the stack of."""
    own: Counter[str] = Counter()
    on_stack: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = [_short(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        n = int(samples)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            on_stack[frame] += n
    return [
        {
            "function": name,
            "own_share": round(samples / total, 4),
            "cumulative_share": round(on_stack[name] / total, 4),
        }
        for name, samples in own.most_common(count)
    ]


def _short(frame: str) -> str:
    """``name (path/to/file.py:12)`` as ``name (file.py)``: lines vary within a function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})"


def profile_path(
    name: str,
    server: subprocess.Popen[bytes],
    port: int,
    run: Any,
    seconds: float,
    count: int,
    native: bool,
) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/api/nova-sonic/stream"
    with tempfile.TemporaryDirectory() as scratch:
        collapsed = Path(scratch) / f"{name}.txt"
        try:
            asyncio.run(wait_ready(url))

            async def measured() -> int:
                await asyncio.sleep(2)  # the sessions start: sample their steady state
                spy = sample(server.pid, seconds - 4, collapsed, native)
                before = cpu_seconds(server.pid)
                await asyncio.to_thread(spy.wait)
                return int(1000 * (cpu_seconds(server.pid) - before))

            async def both() -> tuple[int, int]:
                chunks, cpu_ms = await asyncio.gather(run(url), measured())
                return chunks, cpu_ms

            chunks, cpu_ms = asyncio.run(both())
        finally:
            server.terminate()
            server.wait(60)
        chunk_seconds = SEED_CHUNK_SAMPLES / 16_000
        sampled_chunks = chunks * (seconds - 4) / seconds  # those sent while sampled
        cpu_ms_per_chunk = round(cpu_ms / max(sampled_chunks, 1), 4)
        rows = top(collapsed, count)
    print(f"{name}: {cpu_ms_per_chunk} ms of CPU a chunk", file=sys.stderr)
    for row in rows:
        print(f"  {row['own_share']:6.1%} {row['cumulative_share']:6.1%}  {row['function']}")
    return {
        "chunks": chunks,
        "server_cpu_ms_per_chunk": cpu_ms_per_chunk,
        "chunk_ms": chunk_seconds * 1000,
        "top": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument(
        "--native",
        action="store_true",
        help="sample C frames too (pauses the server to read them: CPU figures are not kept)",
    )
    args = parser.parse_args()
    sessions, seconds = args.sessions, args.seconds

    async def echo(url: str) -> int:
        return (await echo_load(url, sessions, seconds, SEED_CHUNK_SAMPLES)).sent

    async def nova(url: str) -> int:
        return len(await load(url, sessions, seconds, 0, SEED_CHUNK_SAMPLES))

    ours, theirs = multiprocessing.Pipe()
    emulator = multiprocessing.Process(target=run_emulator, args=(theirs,), daemon=True)
    emulator.start()
    endpoint, ca_file = ours.recv()
    nova_server = start_server(
        args.port,
        *("--engine", "nova-sonic", "--nova-fallback", "none"),
        *("--nova-endpoint", endpoint, "--nova-ca-file", ca_file, *UNLIMITED),
    )
    try:
        paths = {
            "nova": profile_path(
                "nova", nova_server, args.port, nova, seconds, args.top, args.native
            )
        }
    finally:
        ours.send("stop")
        emulator.join(5)
    port = args.port + 1
    echo_server = start_server(port, "--engine", "echo", *UNLIMITED)
    paths["echo"] = profile_path("echo", echo_server, port, echo, seconds, args.top, args.native)
    if not args.native:  # pausing the server to sample it skews the CPU figures
        write_results("profile_hotpath", {"sessions": sessions, **paths}, seconds=seconds)


if __name__ == "__main__":
    main()
