"""Regression tests of the session core's faults: each once silenced a session, dropped
a connection, stopped a node's heartbeat or lost audio."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from sonicgate.audio.formats import resample
from sonicgate.bus.memory import MemoryBus
from sonicgate.domain import ErrorCode, StreamingContext
from sonicgate.engines.base import BaseEngineSession, EngineConfig
from sonicgate.events import AudioIn, TriggerReason
from sonicgate.metrics import GatewayMetrics
from sonicgate.sessions.input import AudioInput
from sonicgate.sessions.manager import Limits, SessionManager
from sonicgate.sessions.session import Services
from sonicgate.store.audio import FileAudioStore
from sonicgate.store.base import SessionExists
from sonicgate.store.registry import StoreRegistry
from sonicgate.store.sqlite import SqliteStore
from tests.conftest import Connect, ServerFactory
from tests.scripted_engine import ScriptedEngine, tone


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
    services = Services(
        store=store,
        registry=StoreRegistry(store),
        bus=MemoryBus(),
        audio=FileAudioStore(tmp_path / "audio"),
        metrics=GatewayMetrics(),
    )
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
