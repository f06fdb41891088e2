"""Shared fixtures: a real uvicorn server on a free port, and WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import socket
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import uvicorn
import websockets
from uvicorn.config import LOGGING_CONFIG

from sonicgate import models
from sonicgate.config import Settings, default_data_dir
from sonicgate.engines.base import Engine
from sonicgate.engines.local import LocalEngine, LocalModels
from sonicgate.models import Kind, WheelFile, install
from sonicgate.server.app import create_app
from sonicgate.server.graceful import GracefulServer, server_config
from tests.scripted_engine import ScriptedEngine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    settings: Settings
    url: str
    server: uvicorn.Server

    def ws(self, path: str = "/api/nova-sonic/stream") -> str:
        return self.url.replace("http", "ws") + path


async def start_server(settings: Settings, engines: dict[str, Engine]) -> RunningServer:
    app = create_app(settings, engines)
    config = server_config(app, settings, log_level="warning", log_config=LOGGING_CONFIG)
    server = GracefulServer(config, app.state.manager)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    server_task[id(server)] = task
    return RunningServer(settings, f"http://127.0.0.1:{settings.port}", server)


server_task: dict[int, asyncio.Task[None]] = {}


async def stop_server(running: RunningServer) -> None:
    running.server.should_exit = True
    await server_task.pop(id(running.server))


POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"  # the machine's own PostgreSQL


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A store URL on the machine's PostgreSQL, in a schema of its own (dropped after);
    skipped, with the reason, where no PostgreSQL answers."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {exc}")
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        # Named after the schema, so that what a test left connected can be told apart.
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}&application_name={schema}"
        # Servers still running (their fixtures end later) would hold locks on it.
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (schema,),
        )
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="session")
def local_models() -> LocalModels:
    """The default local models, loaded once for every test that needs them."""
    data_dir = default_data_dir()
    install(data_dir, progress=False)
    return LocalEngine.load(data_dir).models


def make_wheel(directory: Path, files: dict[str, bytes]) -> Path:
    """A wheel pip takes (it checks the .dist-info) holding ``files``."""
    wheel = directory / "fake_turn-1.0-py3-none-any.whl"
    info = "fake_turn-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: fake-turn\nVersion: 1.0\n"
        )
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
    return wheel


@pytest.fixture
def small_turn_model(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> WheelFile:
    """The turn detector swapped for a file of a small wheel made here: pip takes a wheel's
    path for a requirement, so installing it needs no network."""
    member, content = "fake_turn/data/model.onnx", b"not a model\n" * 100
    wheel = make_wheel(tmp_path_factory.mktemp("wheel"), {member: content})
    digest = hashlib.sha256(content).hexdigest()
    small = WheelFile(
        "small-turn", Kind.TURN, str(wheel), member, "model.onnx", len(content), digest
    )
    monkeypatch.setattr(models, "SMART_TURN", small)
    return small


@pytest.fixture
def scripted() -> ScriptedEngine:
    return ScriptedEngine()


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    running: list[RunningServer] = []

    async def factory(engines: dict[str, Engine], **overrides: Any) -> RunningServer:
        defaults: dict[str, Any] = {
            "port": free_port(),
            "engine": next(iter(engines)),
            "data_dir": tmp_path / "data",
        }
        settings = Settings(**(defaults | overrides))
        server = await start_server(settings, engines)
        running.append(server)
        return server

    yield factory
    for server in running:
        if not server.server.should_exit:
            await stop_server(server)


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis; its tests are skipped where none runs."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def bus_prefix() -> str:
    """Channels of this test's own on the shared Redis."""
    return f"sonicgate-test-{secrets.token_hex(6)}"


@pytest.fixture
async def server(make_server: ServerFactory, scripted: ScriptedEngine) -> RunningServer:
    result: RunningServer = await make_server({"scripted": scripted})
    return result


class Client:
    """A WebSocket client speaking JSON, with a timeout on every receive."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.connection.send(
            message if isinstance(message, str | bytes) else json.dumps(message)
        )

    async def recv(self, within: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv(), within)
        result: dict[str, Any] = json.loads(raw)
        return result

    async def initialize(self, **fields: object) -> dict[str, Any]:
        """Start a session in the second seed's dialect; returns its ``initialized``."""
        await self.send({"type": "initialize", **fields})
        ready = await self.recv()
        assert ready["type"] == "initialized", ready
        return ready

    async def stream_audio(self, pcm: bytes, chunk_bytes: int = 8192) -> None:
        """pcm16 as the second seed's ``audio_chunk`` messages (4096 samples each)."""
        for offset in range(0, len(pcm), chunk_bytes):
            audio = base64.b64encode(pcm[offset : offset + chunk_bytes]).decode()
            await self.send({"type": "audio_chunk", "audio": audio})

    async def complete_turn(self, pcm: bytes) -> None:
        """Speak ``pcm`` and mark the turn complete (the second seed's ``isComplete``)."""
        await self.stream_audio(pcm)
        await self.send({"type": "audio_chunk", "audio": "", "isComplete": True})

    async def final_reply(
        self, within: float = 30.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Receive until the reply's final text; returns it and everything before it."""
        seen: list[dict[str, Any]] = []
        while True:
            reply, before = await self.until("text_response", within)
            seen += before
            if reply["isFinal"]:
                return reply, seen
            seen.append(reply)

    async def until(
        self, kind: str, within: float = 30.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Receive until a message of ``kind``; returns it and everything before it."""
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(within):
            while True:
                message = await self.recv(within)
                if message.get("type") == kind:
                    return message, seen
                seen.append(message)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[str], Any]]:
    opened: list[websockets.ClientConnection] = []

    async def factory(url: str) -> Client:
        connection = await websockets.connect(url, max_size=64 * 1024 * 1024)
        opened.append(connection)
        return Client(connection)

    yield factory
    for connection in opened:
        await connection.close()
