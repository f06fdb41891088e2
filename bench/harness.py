"""What the benchmarks share: a server to measure, percentiles, the results file."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from pathlib import Path
from typing import Any

import websockets

from sonicgate.config import default_data_dir
from sonicgate.engines.local.cpu import read_cpu

RESULTS = Path(__file__).parent / "results"
# The libraries whose versions decide the figures, recorded with them.
LIBRARIES = (
    "sonicgate",
    "numpy",
    "soxr",
    "av",
    "uvicorn",
    "starlette",
    "websockets",
    "onnxruntime",
    "faster-whisper",
    "llama-cpp-python",
    "hibari-tts",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# Load generators open every session from one address: no per-client limits.
UNLIMITED = (
    *("--max-sessions-per-client", "0"),
    *("--max-messages-per-second", "0"),
    *("--max-requests-per-second", "0"),
)


def start_server(
    port: int, *options: str, python: tuple[str, ...] = (sys.executable,)
) -> subprocess.Popen[bytes]:
    """A server on a data dir of its own, with the installed models linked in: a run
    neither reads nor grows the user's sessions and recordings (a load run records
    gigabytes), and start-up is measured on an empty database. Removed at exit.
    ``python``: the interpreter's command (a profiler's, say)."""
    data_dir = Path(tempfile.mkdtemp(prefix="sonicgate-bench-"))
    (data_dir / "models").symlink_to(default_data_dir() / "models")
    atexit.register(shutil.rmtree, data_dir, True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        *(*python, "-m", "sonicgate", "serve", "--data-dir", str(data_dir)),
        *("--port", str(port), "--log-level", "warning", *options),
    ]
    return subprocess.Popen(command, env=env)


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its children alive now (a server's workers)."""
    children = (
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    )
    return cpu_seconds(pid) + sum(tree_cpu_seconds(child) for child in children)


def quiet(pid: int, within: float = 300.0) -> None:
    """Waits until a server and its workers are idle (under a tenth of a core for a
    second): all started, their models loaded and warmed up."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = tree_cpu_seconds(pid)
        time.sleep(1.0)
        if tree_cpu_seconds(pid) - before < 0.1:
            return
    raise TimeoutError(f"server {pid} still busy after {within:g} s")


REDIS_BUS = "redis://127.0.0.1:6379/0"


def worker_options(workers: int, bus: str) -> tuple[str, ...]:
    """``serve``'s options for ``workers`` processes (several share a Redis bus)."""
    if workers == 1:
        return ()
    return ("--workers", str(workers), "--bus", bus, "--bus-prefix", "sonicgate-bench")


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


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, Python and library versions."""
    return {
        **read_cpu().describe(),
        "python": platform.python_version(),
        "libraries": {name: version(name) for name in LIBRARIES},
    }


def write_results(name: str, summary: dict[str, Any], **details: Any) -> None:
    """``bench/results/<name>.json``; the summary is printed too."""
    result = {"benchmark": name, "machine": machine(), "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**result, **details}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
