"""Regression tests of the session core's faults: each once silenced a session, dropped
a connection, stopped a node's heartbeat or lost audio."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from pathlib import Path
from typing import Any

import pytest

from sonicgate.audio.formats import resample
from sonicgate.bus.memory import MemoryBus
from sonicgate.domain import ErrorCode, SessionStatus, StreamingContext, VoiceSession
from sonicgate.engines.base import BaseEngineSession, EngineConfig
from sonicgate.events import AudioIn, AudioOut, TriggerReason
from sonicgate.metrics import GatewayMetrics
from sonicgate.sessions.input import AudioInput
from sonicgate.sessions.manager import Limits, SessionManager
from sonicgate.sessions.session import Services
from sonicgate.store.audio import FileAudioStore
from sonicgate.store.base import SessionExists, StoreUnavailable
from sonicgate.store.registry import StoreRegistry
from sonicgate.store.sqlite import SqliteStore
from tests.conftest import Connect, ServerFactory, eventually
from tests.scripted_engine import RATE, ScriptedEngine, ScriptedSession, tone


def local_services(store: SqliteStore, tmp_path: Path) -> Services:
    """One node's services on ``store``: its registry, an in-memory bus, files for audio."""
    return Services(
        store=store,
        registry=StoreRegistry(store),
        bus=MemoryBus(),
        audio=FileAudioStore(tmp_path / "audio"),
        metrics=GatewayMetrics(),
    )


async def test_a_store_that_fails_unexpectedly_silences_nothing(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One sink failing on one event: the other sinks, and the events after it, go on."""
    calls = 0
    original = SqliteStore.append_message

    async def broken_once(self: SqliteStore, session_id: str, message: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in a store")
        await original(self, session_id, message)

    monkeypatch.setattr(SqliteStore, "append_message", broken_once)
    client = await connect((await make_server({"scripted": scripted})).ws())
    await client.initialize()
    for text in ("first", "second"):
        await client.send({"type": "text_message", "text": text})
        reply, _ = await client.final_reply()
        assert reply["text"] == scripted.reply


async def test_a_racing_start_of_one_session_id_gets_an_error_not_a_dropped_connection(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two clients start the same new id at once: the store takes one; the other is told."""

    async def taken(self: SqliteStore, session: Any) -> None:
        raise SessionExists(session.sessionId)

    monkeypatch.setattr(SqliteStore, "create_session", taken)
    client = await connect((await make_server({"scripted": scripted})).ws())
    await client.send({"type": "initialize", "sessionId": "shared-id"})
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == ErrorCode.SESSION_EXISTS, error
    monkeypatch.undo()
    await client.initialize(sessionId="shared-id")  # the connection is still there


async def test_the_keep_alive_goes_on_after_any_error(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A node that stops beating is taken for dead by the others."""
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.open()
    services = local_services(store, tmp_path)
    renewals = 0
    third = asyncio.Event()

    async def renew() -> None:
        nonlocal renewals
        renewals += 1
        if renewals == 1:
            raise RuntimeError("a bug in the registry")
        if renewals == 3:
            third.set()

    services.registry.renew = renew  # type: ignore[method-assign]
    manager = SessionManager(
        {"scripted": ScriptedEngine()},
        "scripted",
        services,
        Limits(heartbeat_seconds=0.01),
        "node-a",
    )
    with caplog.at_level(logging.ERROR):
        keep_alive = asyncio.create_task(manager.keep_alive())
        await asyncio.wait_for(third.wait(), 5)  # beating on after the error
        keep_alive.cancel()
    assert "connection registry not renewed" in caplog.text
    await store.close()


class Listening(BaseEngineSession):
    """An engine session that keeps the audio it is given."""

    def __init__(self) -> None:
        super().__init__(EngineConfig())
        self.audio = bytearray()

    async def push_audio(self, pcm: bytes) -> None:
        self.audio += pcm

    async def end_turn(self, reason: TriggerReason) -> bool:
        return True


async def test_the_decoders_tail_reaches_the_engine_at_the_end_of_a_turn(
    tmp_path: Path,
) -> None:
    """Resampled (or webm) audio held back by the decoder is flushed when the turn ends."""
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.open()
    engine = Listening()
    context = StreamingContext("s", "c", "u", "pcm16-24k", "en-US", "scripted")
    chain = AudioInput(
        engine=engine,  # type: ignore[arg-type]
        context=context,
        store=store,
        reorder_window=8,
        max_turn_seconds=0,
        heard=lambda pcm: None,
        tell=lambda notice: asyncio.sleep(0),
    )
    speech = tone(1.0, 24_000)
    for offset in range(0, len(speech), 9_600):
        await chain.push(AudioIn(speech[offset : offset + 9_600]))
    await chain.push(AudioIn(b"", end_of_turn=True))
    await store.close()
    assert len(engine.audio) == len(resample(speech, 24_000, 16_000))


async def test_a_dropped_connection_on_a_dead_engine_still_closes_its_session(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    """The socket closes with a chunk held for a gap and an engine that died: the
    session still stops its engine (its pump task does not outlive the connection)."""
    server = await make_server({"scripted": scripted})
    client = await connect(server.ws())
    session_id = (await client.initialize())["sessionId"]
    audio = base64.b64encode(bytes(3200)).decode()
    await client.send({"type": "audio_chunk", "audio": audio, "sequenceNumber": 3})
    await client.send({"type": "text_message", "text": "hi"})  # the chunk above is in
    await client.final_reply()
    scripted.fail_on_audio = True
    await client.close()

    def pump_running() -> bool:
        return any(t.get_name() == f"engine-{session_id}" for t in asyncio.all_tasks())

    await eventually(lambda: not pump_running(), "the engine's pump ended")


async def test_a_resume_whose_engine_fails_on_the_kept_turn_leaves_nothing_live(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    """The turn kept for a resume is replayed into a fresh engine; an engine that fails
    on it is an error for the client, and no half-open session stays live."""
    server = await make_server({"scripted": scripted})
    manager = server.app.state.manager
    first = await connect(server.ws())
    session_id = (await first.initialize())["sessionId"]
    audio = base64.b64encode(bytes(3200)).decode()
    await first.send({"type": "audio_chunk", "audio": audio, "sequenceNumber": 0})
    await first.send({"type": "dance"})  # its error: the chunk above is in, and kept
    assert (await first.until("error"))[0]["code"] == "unknown_type"
    await first.close()
    await eventually(lambda: not manager.live, "the first connection's session detached")
    scripted.fail_on_audio = True
    second = await connect(server.ws())
    await second.send({"type": "initialize", "sessionId": session_id})
    error, _ = await second.until("error")
    assert error["code"] == "engine_failed", error
    assert session_id not in manager.live


async def test_a_chunk_is_kept_before_a_partial_acknowledges_it(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README: numbered chunks are kept in the store before partials acknowledge them,
    so that a node dying after the acknowledgement loses nothing the client will not
    send again."""
    original = SqliteStore.save_turn_audio

    async def slow_write(self: SqliteStore, session_id: str, sequence: int, pcm: bytes) -> None:
        await asyncio.sleep(0.5)  # a shared database's round trip, under load
        await original(self, session_id, sequence, pcm)

    monkeypatch.setattr(SqliteStore, "save_turn_audio", slow_write)
    server = await make_server({"scripted": scripted})
    store = server.app.state.manager.services.store
    client = await connect(server.ws())
    await client.send({"action": "voice_session_start", "data": {"audioFormat": "pcm16"}})
    session_id = (await client.recv())["sessionId"]
    second = base64.b64encode(bytes(32_000)).decode()  # a partial's worth
    for sequence in (0, 1):
        data = {"audioData": second, "sequenceNumber": sequence}
        await client.send({"action": "voice_chunk", "sessionId": session_id, "data": data})
    acknowledged = None
    while acknowledged is None:  # the first partial may come before any chunk is kept
        partial, _ = await client.until("voice_transcription_partial")
        acknowledged = partial["data"]["sequenceNumber"]
    kept = [sequence for sequence, _ in await store.turn_audio(session_id)]
    assert acknowledged in kept, f"chunk {acknowledged} acknowledged before it was kept"


async def test_two_simultaneous_resumes_of_one_session_leave_one_live_and_no_slot_held(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    """A client's two tabs resume one session at once: one of them has it (the other is
    told), and once both are gone the client holds no session."""
    server = await make_server({"scripted": scripted}, max_sessions_per_client=1)
    manager = server.app.state.manager
    first = await connect(server.ws())
    session_id = (await first.initialize())["sessionId"]
    await first.close()
    await eventually(lambda: not manager.live, "the session detached")
    tabs = [await connect(server.ws()), await connect(server.ws())]
    await asyncio.gather(
        *(tab.send({"type": "initialize", "sessionId": session_id}) for tab in tabs)
    )
    answers = [await tab.recv() for tab in tabs]
    assert [a["type"] for a in answers] == ["initialized", "initialized"], answers
    for tab in tabs:
        await tab.close()
    await eventually(lambda: not manager.live, "both tabs' sessions detached")
    again = await connect(server.ws())
    await again.send({"type": "initialize"})  # a new session: the client holds none now
    answer = await again.recv()
    assert answer["type"] == "initialized", answer


class Speaking(ScriptedSession):
    """A reply whose audio has begun and that goes on until the session closes."""

    async def _respond(self) -> None:
        self.emit(AudioOut(tone(0.2), RATE))
        await asyncio.Event().wait()


class SpeakingEngine(ScriptedEngine):
    async def start(self, config: EngineConfig) -> ScriptedSession:
        self.configs.append(config)
        return Speaking(self, config)


@pytest.fixture
def unreachable_audio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recording fails, as with an S3 service that went away."""

    async def refused(
        self: FileAudioStore, session_id: str, turn: int, role: str, wav: bytes
    ) -> str:
        raise OSError("the audio store is unreachable")

    monkeypatch.setattr(FileAudioStore, "save", refused)


async def test_a_session_ended_mid_reply_while_recordings_fail_still_ends(
    make_server: ServerFactory, connect: Connect, unreachable_audio: None
) -> None:
    """Recordings are a sink like the others: their store failing as a session ends
    must not leave the session ACTIVE, nor its client without its answer."""
    server = await make_server({"scripted": SpeakingEngine()})
    store = server.app.state.manager.services.store
    client = await connect(server.ws())
    session_id = (await client.initialize())["sessionId"]
    await client.send({"type": "text_message", "text": "hi"})
    await client.until("audio_response")  # the reply has begun
    await client.send({"type": "end_conversation"})
    ended, _ = await client.until("conversation_ended", within=10)
    assert ended["sessionId"] == session_id
    record = await store.get_session(session_id)
    assert record is not None and record.status is SessionStatus.COMPLETED


async def test_a_connection_dropped_mid_reply_while_recordings_fail_leaves_the_registry(
    make_server: ServerFactory, connect: Connect, unreachable_audio: None
) -> None:
    """A closed connection leaves the registry (status counts it no more), whatever the
    audio store does."""
    server = await make_server({"scripted": SpeakingEngine()})
    manager = server.app.state.manager
    client = await connect(server.ws())
    await client.initialize()
    await client.send({"type": "text_message", "text": "hi"})
    await client.until("audio_response")
    await client.close()
    await eventually(lambda: not manager.live, "the session detached")
    await asyncio.sleep(0.2)  # for the connection's last steps
    assert await manager.services.registry.connections() == []


async def test_a_silent_nodes_sessions_are_marked_lost_even_if_the_store_blinks_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: the sessions of a node not heard from for 30 s are marked lost by one of
    the others. The store hands the silent node out once: a store that fails right
    after (a PostgreSQL restarting) must not leave its sessions ACTIVE for good."""
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.open()
    ghost = VoiceSession(
        sessionId="s-ghost", novaSonicSessionId="ns", connectionId="conn-ghost:1", userId="u"
    )
    await store.create_session(ghost)
    await store.heartbeat("ghost")  # its last heartbeat: it dies now
    await asyncio.sleep(0.1)
    listings = 0
    original = SqliteStore.list_sessions

    async def blinking(self: SqliteStore, status: SessionStatus | None = None) -> Any:
        nonlocal listings
        listings += 1
        if listings == 1:
            raise StoreUnavailable("PostgreSQL is unreachable")
        return await original(self, status)

    beats = 0
    beat = SqliteStore.heartbeat

    async def counted(self: SqliteStore, node_id: str) -> None:
        nonlocal beats
        beats += 1
        await beat(self, node_id)

    monkeypatch.setattr(SqliteStore, "list_sessions", blinking)
    monkeypatch.setattr(SqliteStore, "heartbeat", counted)
    services = local_services(store, tmp_path)
    manager = SessionManager(
        {"scripted": ScriptedEngine()},
        "scripted",
        services,
        Limits(heartbeat_seconds=0.01, node_silence_seconds=0.05),
        "node-a",
    )
    keep_alive = asyncio.create_task(manager.keep_alive())
    try:
        await eventually(lambda: beats >= 10, "several heartbeats after the blink")
        record = await store.get_session("s-ghost")
    finally:
        keep_alive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keep_alive
        await store.close()
    assert record is not None and record.status is SessionStatus.ERROR
