"""What the benchmarks share: a server to measure, percentiles, the results file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import websockets

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_server(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "sonicgate",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, env=env)


async def wait_ready(url: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            async with websockets.connect(url):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def measure[T](url: str | None, port: int, run: Callable[[str], Coroutine[Any, Any, T]]) -> T:
    """``run`` against ``url``, or against a server of our own on ``port``."""
    server = None
    if url is None:
        server = start_server(port)
        url = f"ws://127.0.0.1:{port}/api/nova-sonic/stream"
    try:
        asyncio.run(wait_ready(url))
        return asyncio.run(run(url))
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def write_results(name: str, summary: dict[str, Any], **details: Any) -> None:
    """``bench/results/<name>.json``; the summary is printed too."""
    result = {"benchmark": name, "machine": {"cores": os.cpu_count()}, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**result, **details}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
