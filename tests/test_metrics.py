"""Prometheus /metrics after real traffic through the server."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sonicgate import metrics
from tests.conftest import Connect, RunningServer
from tests.scripted_engine import tone
from tests.test_seed_typed import initialize


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with server.http() as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_metrics_count_sessions_turns_audio_and_errors(
    server: RunningServer, connect: Connect
) -> None:
    client = await connect(server.ws())
    await initialize(client)
    audio = base64.b64encode(tone(0.5, 16_000)).decode()
    await client.send({"type": "audio_chunk", "audio": audio, "isComplete": True})
    await client.until("audio_response")
    await client.final_reply()
    await client.send("{not json")
    await client.until("error")

    seen = await scrape(server)
    assert seen[("sonicgate_active_sessions", ())] == 1
    assert seen[("sonicgate_active_connections", ())] == 1
    engine = (("engine", "scripted"),)
    assert seen[("sonicgate_turns_total", (*engine, ("interrupted", "false")))] >= 1
    assert seen[("sonicgate_audio_seconds_total", (("direction", "in"), *engine))] == 0.5
    assert seen[("sonicgate_audio_seconds_total", (("direction", "out"), *engine))] > 0
    assert seen[("sonicgate_errors_total", (("code", "malformed_json"),))] == 1


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_workers_share_a_directory_and_a_killed_supervisors_is_removed() -> None:
    stale = Path(tempfile.gettempdir()) / f"{metrics.SHARED_PREFIX}{dead_pid()}-left"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    live = Path(tempfile.mkdtemp(prefix=f"{metrics.SHARED_PREFIX}{os.getpid()}-"))
    try:
        with metrics.shared_between_processes():
            shared = Path(os.environ[metrics.SHARED_DIR])
            assert shared.is_dir() and shared.name.startswith(
                f"{metrics.SHARED_PREFIX}{os.getpid()}-"
            )
            assert not stale.exists() and live.exists()  # a running owner's stays
        assert not shared.exists() and metrics.SHARED_DIR not in os.environ
    finally:
        live.rmdir()
