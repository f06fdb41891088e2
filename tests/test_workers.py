"""``serve --workers``: several gateway processes on one port, each a node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.harness import UNLIMITED, wait_ready
from sonicgate import cli
from sonicgate.config import default_data_dir
from tests.conftest import Client, Connect, free_port


def test_several_workers_need_a_shared_bus(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--workers", "2", "--port", str(free_port())]) == 1
    assert "needs a shared bus (--bus redis://...)" in capsys.readouterr().err


def test_workers_do_not_join_a_port_in_use(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        arguments = ["serve", "--workers", "2", "--bus", redis_url, "--port", str(port)]
        assert cli.main(arguments) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


class Workers:
    def __init__(self, redis_url: str, prefix: str, data_dir: Path) -> None:
        self.port = free_port()
        self.log = data_dir / "server.log"
        command = [
            *(sys.executable, "-m", "sonicgate", "serve", "--workers", "2"),
            *("--port", str(self.port), "--node-id", "gw", "--engine", "echo"),
            *("--bus", redis_url, "--bus-prefix", prefix, "--data-dir", str(data_dir)),
            *("--log-level", "info", *UNLIMITED),
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=log
            )
        self.url = f"ws://127.0.0.1:{self.port}/api/nova-sonic/stream"

    async def all_listening(self, within: float) -> None:
        """The workers start one after another; the supervisor says when all listen."""
        for _ in range(int(within / 0.5)):
            if "2 workers listening" in self.log.read_text():
                return
            assert self.process.poll() is None, self.log.read_text()
            await asyncio.sleep(0.5)
        raise TimeoutError(self.log.read_text())

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()]
        return [pid for pid in pids if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]

    async def scraped(self, name: str, times: int = 6) -> set[float]:
        """``name``'s value at each of ``times`` scrapes, each on a connection of its own
        (so the kernel hands them to either worker)."""
        values = set()
        for _ in range(times):
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
            lines = [line for line in text.splitlines() if line.startswith(name)]
            values |= {float(line.split()[-1]) for line in lines}
        return values

    async def connections_by_node(self) -> dict[str, int]:
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{self.port}/api/nova-sonic/status")
        by_node: dict[str, int] = reply.json()["connectionsByNode"]
        return {node: count for node, count in by_node.items() if count}


@pytest.fixture
def workers(redis_url: str, bus_prefix: str, tmp_path: Path) -> Iterator[Workers]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(default_data_dir() / "models")  # installed once
    running = Workers(redis_url, bus_prefix, data_dir)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            pids = running.worker_pids()
            running.process.kill()
            running.process.wait()
            for pid in pids:  # they stop by themselves (see the test below); kill anyway
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.models  # each worker loads the local models at start
async def test_workers_share_the_port_and_stop_gracefully(
    workers: Workers, connect: Connect
) -> None:
    await workers.all_listening(within=240)
    clients: list[Client] = []
    for index in range(16):  # the kernel spreads them: all on one worker is 1 in 2**15
        client = await connect(workers.url)
        await client.initialize(userId=f"user-{index}")
        clients.append(client)
    assert set(await workers.connections_by_node()) == {"gw-w0", "gw-w1"}
    # Whichever worker a scrape reaches, it counts every worker's.
    assert await workers.scraped("sonicgate_active_sessions ") == {16.0}
    assert await workers.scraped("sonicgate_active_connections ") == {16.0}
    await clients[0].send({"type": "text_message", "text": "hello there"})
    assert (await clients[0].final_reply())[0]["text"] == "hello there"

    killed = workers.worker_pids()[0]  # a worker dies: its supervisor starts it again
    os.kill(killed, signal.SIGKILL)
    for _ in range(240):
        pids = workers.worker_pids()
        if len(pids) == 2 and killed not in pids:
            break
        await asyncio.sleep(0.5)
    await wait_ready(workers.url, within=120)

    survivors = [client for client in clients if not await _dropped(client)]
    assert 0 < len(survivors) < len(clients)  # the other worker's sessions go on
    assert await workers.scraped("sonicgate_active_sessions ") == {float(len(survivors))}
    pids = workers.worker_pids()
    workers.process.send_signal(signal.SIGTERM)
    for client in survivors:  # each ends its session and tells its clients
        ended, _ = await client.until("conversation_ended", within=20)
        assert ended["type"] == "conversation_ended"
    assert await asyncio.to_thread(workers.process.wait, 30) == 0
    assert not _alive(pids)


async def _dropped(client: Client) -> bool:
    try:
        await client.send({"type": "text_message", "text": "still there?"})
        await client.final_reply()
    except Exception:
        return True
    return False


@pytest.mark.models
async def test_workers_stop_when_their_supervisor_is_killed(workers: Workers) -> None:
    await workers.all_listening(within=240)
    pids = workers.worker_pids()
    workers.process.kill()  # no chance to stop them itself
    workers.process.wait()
    for _ in range(60):
        alive = _alive(pids)
        if not alive:
            break
        await asyncio.sleep(0.5)
    assert not alive  # they do not hold the port unsupervised


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_a_worker_that_cannot_start_stops_the_rest(
    redis_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    port = str(free_port())
    arguments = ["serve", "--workers", "2", "--bus", redis_url, "--port", port]
    assert cli.main([*arguments, "--data-dir", str(tmp_path)]) == 1  # no models there
    errors = capfd.readouterr().err
    assert "run `make run`" in errors  # the worker's own error
    assert "worker 0 did not start" in errors and "worker 1" not in errors
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the caller's handlers back
