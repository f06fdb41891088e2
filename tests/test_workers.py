"""``serve --workers``: several gateway processes on one port, each a node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import pytest

from bench.harness import UNLIMITED, wait_ready
from sonicgate import cli
from sonicgate.config import default_data_dir
from sonicgate.server.workers import Supervisor
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


def test_a_node_id_too_long_for_its_workers_names_is_refused_before_they_start(
    redis_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """--node-id accepts 64 characters, but each worker is NODE-wK: three more, which
    SessionManager refuses with a ValueError in every worker, after its models load."""
    node_id = "n" * 64
    arguments = ["serve", "--workers", "2", "--bus", redis_url, "--port", str(free_port())]
    code: int | str | None
    try:
        code = cli.main([*arguments, "--node-id", node_id, "--data-dir", str(tmp_path)])
    except SystemExit as exit_:  # refused as the arguments are parsed: as good
        code = exit_.code
    assert code not in (0, None)
    errors = capfd.readouterr().err
    assert "node id" in errors, errors
    assert "did not start" not in errors  # refused by serve, not by a worker's crash


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


def _dies_once(marker: Path, index: int, sock: socket.socket, ready: Event) -> int:
    """A worker that listens, then dies the first time; started again, it serves
    until SIGTERM (the default action: it ends at once), and says so in ``marker``."""
    ready.set()
    sock.close()
    if not marker.exists():
        marker.write_text(f"{os.getpid()}\n")
        return 3
    with marker.open("a") as restarted:
        restarted.write(f"{os.getpid()}\n")
    while True:
        time.sleep(1)


def test_a_worker_that_died_is_started_again(tmp_path: Path) -> None:
    marker = tmp_path / "workers"
    supervisor = Supervisor(partial(_dies_once, marker), 1, "127.0.0.1", free_port())

    def stop_once_restarted() -> None:
        deadline = time.monotonic() + 30
        while len(marker.read_text().split() if marker.exists() else []) < 2:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_restarted)
    stopper.start()
    try:
        assert supervisor.run() == 0
    finally:
        stopper.join()
    started = marker.read_text().split()
    assert len(started) == 2, f"the dead worker was never started again: {started}"


def test_a_stop_while_a_worker_is_restarted_stops_the_new_worker_too(tmp_path: Path) -> None:
    """SIGTERM while the supervisor waits to start a dead worker again: a worker it
    starts then must stop too, or it serves unsupervised and the stop never ends."""
    marker = tmp_path / "workers"
    supervisor = Supervisor(partial(_dies_once, marker), 1, "127.0.0.1", free_port())
    leftovers: list[int] = []

    def stop_during_the_restart_pause() -> None:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text().endswith("\n"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first = int(marker.read_text().split()[0])
        while Path(f"/proc/{first}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the supervisor waits RESTART_SECONDS before starting it again
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # a worker started meanwhile had time to start and to stop
        for pid in [int(pid) for pid in marker.read_text().split()[1:]]:
            if Path(f"/proc/{pid}").exists():
                leftovers.append(pid)
                os.kill(pid, signal.SIGKILL)  # else the supervisor waits for it for ever

    stopper = threading.Thread(target=stop_during_the_restart_pause)
    stopper.start()
    try:
        code = supervisor.run()
    finally:
        stopper.join()
    assert leftovers == [], "a worker started after SIGTERM kept running"
    assert code == 0
