"""PostgreSQL going away and coming back, on an instance of the test's own (the
machine's shared one is never stopped): live conversations go on, new sessions
get a clear error, nothing crashes, and all is well again once it returns."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Client, Connect, ServerFactory, free_port
from tests.scripted_engine import ScriptedEngine

BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
pytestmark = pytest.mark.skipif(
    not BINARIES or os.geteuid() != 0, reason="needs PostgreSQL's binaries and root (runuser)"
)


class Postgres:
    """A throwaway PostgreSQL cluster, run as the postgres user on a free port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sonicgate-pg-"))
        self.root.chmod(0o755)
        shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        binary = str(BINARIES[-1] / tool)
        subprocess.run(
            ["runuser", "-u", "postgres", "--", binary, *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    instance = Postgres()
    instance.start()
    try:
        yield instance
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(BINARIES[-1] / "pg_ctl"),
                "-D",
                str(instance.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(instance.root, ignore_errors=True)


async def reply_to(client: Client, text: str) -> dict[str, object]:
    await client.send({"type": "text_message", "text": text})
    return (await client.final_reply())[0]


async def test_conversations_outlive_a_postgres_outage(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, postgres: Postgres
) -> None:
    server = await make_server({"scripted": scripted}, store=postgres.url)
    talking = await connect(server.ws())
    await talking.initialize()
    await reply_to(talking, "before")

    await asyncio.to_thread(postgres.stop)
    assert (await reply_to(talking, "during"))["text"] == scripted.reply  # goes on
    newcomer = await connect(server.ws())
    await newcomer.send({"type": "initialize"})
    refused = await newcomer.recv()
    assert refused["type"] == "error" and refused["code"] == "store_unavailable", refused
    async with server.http() as http:
        status = (await http.get("/api/nova-sonic/status")).json()
    assert (status["status"], status["store"]) == ("degraded", "unavailable")

    await asyncio.to_thread(postgres.start)
    for _ in range(20):  # the store retries a second after its last failure
        await newcomer.send({"type": "initialize"})
        answer = await newcomer.recv()
        if answer["type"] == "initialized":
            break
        await asyncio.sleep(0.5)
    assert answer["type"] == "initialized", answer
    assert (await reply_to(newcomer, "after"))["text"] == scripted.reply
    await reply_to(talking, "still here")
