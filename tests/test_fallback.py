"""FallbackEngine: a failing primary hands the conversation to the backup, history and all."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sonicgate.domain import ErrorCode, History, Message, Role
from sonicgate.engines.base import EngineConfig, EngineError
from sonicgate.engines.fallback import FallbackEngine
from sonicgate.events import (
    EngineEvent,
    Error,
    ResponseTextDelta,
    ResponseTextFinal,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
)
from tests.scripted_engine import ScriptedEngine, ScriptedSession


class BreakingEngine(ScriptedEngine):
    """Answers the first turn, then breaks in the middle of the second reply."""

    name = "breaking"
    fail_at_start: EngineError | None = None

    async def start(self, config: EngineConfig) -> ScriptedSession:
        if self.fail_at_start is not None:
            raise self.fail_at_start
        session = await super().start(config)
        turns = 0

        async def respond() -> None:
            nonlocal turns
            turns += 1
            if turns == 1:
                await ScriptedSession._respond(session)
                return
            session.emit(ResponseTextDelta("Half a "))
            session.emit(Error(ErrorCode.PROVIDER_ERROR, "connection reset", fatal=True))

        session._respond = respond  # type: ignore[method-assign]
        return session


async def take(events: object, count: int) -> list[EngineEvent]:
    taken: list[EngineEvent] = []
    async with asyncio.timeout(5):
        async for event in events:  # type: ignore[attr-defined]
            taken.append(event)
            if len(taken) == count:
                return taken
    return taken


async def until_turn_ended(stream: object) -> list[EngineEvent]:
    taken: list[EngineEvent] = []
    async with asyncio.timeout(5):
        while True:
            [event] = await take(stream, 1)
            taken.append(event)
            if isinstance(event, TurnEnded):
                return taken


async def test_a_break_mid_reply_moves_the_turn_and_history_to_the_backup() -> None:
    backup = ScriptedEngine()
    engine = FallbackEngine(BreakingEngine(), backup)
    prior = (Message(Role.USER, "earlier question"), Message(Role.ASSISTANT, "earlier answer"))
    history = History(prior)
    session = await engine.start(EngineConfig(history=history, voice="tone"))
    stream = session.events()

    await session.push_audio(bytes(3200))
    await session.end_turn(TriggerReason.EXPLICIT)
    first = await until_turn_ended(stream)
    assert any(isinstance(e, ResponseTextFinal) for e in first)

    await session.push_audio(bytes(3200))
    await session.end_turn(TriggerReason.EXPLICIT)
    second = await until_turn_ended(stream)
    await session.close()

    notices = [e for e in second if isinstance(e, Error)]
    assert [n.code for n in notices] == ["engine_fallback"]  # one notice, not the raw failure
    assert "connection reset" in notices[0].message
    # The cut turn is answered by the backup, without a second transcript of it.
    assert sum(isinstance(e, TranscriptFinal) for e in second) == 1
    assert isinstance(second[-2], ResponseTextFinal) and second[-2].text == backup.reply
    [config] = backup.configs
    assert config.voice is None  # the backup speaks with its own voice
    assert config.history is history  # the session's own history goes on
    assert [m.text for m in history] == [
        "earlier question",
        "earlier answer",
        "hello there gateway",
        "Hi! How can I help you today?",
        "hello there gateway",
        "Hi! How can I help you today?",
    ]  # each turn once: the cut one asked again, not kept twice
    assert backup.texts == ["hello there gateway"]


async def test_a_primary_that_cannot_start_hands_over_at_once() -> None:
    primary = BreakingEngine()
    primary.fail_at_start = EngineError(ErrorCode.UNAUTHORIZED, "the credentials were refused")
    backup = ScriptedEngine()
    session = await FallbackEngine(primary, backup).start(EngineConfig())
    [notice] = await take(session.events(), 1)
    assert isinstance(notice, Error) and notice.code == "engine_fallback"
    assert "credentials were refused" in notice.message
    await session.push_text("hello")
    assert backup.texts == ["hello"]
    await session.close()


async def test_no_fallback_to_an_engine_that_does_not_speak_the_language() -> None:
    primary = BreakingEngine()
    primary.fail_at_start = EngineError(ErrorCode.ENGINE_UNAVAILABLE, "no route to the service")
    with pytest.raises(EngineError, match="no route"):
        await FallbackEngine(primary, ScriptedEngine()).start(EngineConfig(language="fr-FR"))


async def test_input_to_a_failed_engine_goes_to_the_backup_at_once() -> None:
    primary = BreakingEngine()
    backup = ScriptedEngine()
    session = await FallbackEngine(primary, backup).start(EngineConfig())
    stream = session.events()
    failed = primary_session(session)

    async def dead(pcm: bytes) -> None:
        raise EngineError(ErrorCode.ENGINE_UNAVAILABLE, "the stream is closed")

    failed.push_audio = dead  # type: ignore[method-assign]
    await session.push_audio(bytes(3200))  # not lost: the backup hears it
    await session.end_turn(TriggerReason.EXPLICIT)
    turn = await until_turn_ended(stream)
    await session.close()
    assert [e.code for e in turn if isinstance(e, Error)] == ["engine_fallback"]
    assert isinstance(turn[-2], ResponseTextFinal) and turn[-2].text == backup.reply
    assert next(e for e in turn if isinstance(e, TranscriptFinal)).audio_seconds == 0.1


def primary_session(session: object) -> ScriptedSession:
    current = session.current  # type: ignore[attr-defined]
    assert isinstance(current, ScriptedSession)
    return current


class SlowStartEngine(ScriptedEngine):
    """A backup whose sessions take a while to open (a model loading, a network call)."""

    name = "slow"

    def __init__(self) -> None:
        super().__init__()
        self.starting = asyncio.Event()
        self.go_on = asyncio.Event()
        self.sessions: list[ScriptedSession] = []

    async def start(self, config: EngineConfig) -> ScriptedSession:
        self.starting.set()
        await self.go_on.wait()
        session = await super().start(config)
        self.sessions.append(session)
        return session


async def test_a_close_during_the_switch_ends_the_events_and_the_backup() -> None:
    backup = SlowStartEngine()
    session = await FallbackEngine(BreakingEngine(), backup).start(EngineConfig())
    seen: list[EngineEvent] = []

    async def read() -> None:
        async for event in session.events():
            seen.append(event)

    reader = asyncio.create_task(read())
    primary_session(session).emit(Error(ErrorCode.PROVIDER_ERROR, "connection reset", fatal=True))
    async with asyncio.timeout(5):
        await backup.starting.wait()  # the reader is moving the conversation over
    await session.close()  # the client hangs up meanwhile
    backup.go_on.set()
    try:
        async with asyncio.timeout(2):
            await reader  # after close the events end
    finally:
        reader.cancel()
    [opened] = backup.sessions
    assert opened.closed  # nothing is left running for a conversation that ended


async def test_a_turn_the_reader_has_not_seen_yet_is_not_lost_in_a_switch() -> None:
    primary = ScriptedEngine()
    backup = ScriptedEngine()
    history = History()
    session = await FallbackEngine(primary, backup).start(EngineConfig(history=history))
    seen: list[EngineEvent] = []
    turn_ended = asyncio.Event()

    async def read() -> None:
        async for event in session.events():
            seen.append(event)
            if isinstance(event, TurnEnded):
                turn_ended.set()

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)  # the reader waits on the primary's events
    failed = primary_session(session)

    async def dead(pcm: bytes) -> None:
        raise EngineError(ErrorCode.ENGINE_UNAVAILABLE, "the stream is closed")

    failed.push_audio = dead  # type: ignore[method-assign]
    # The typed turn reaches the primary; it breaks at the next input, before the
    # events reader has had its turn to read the primary's transcript of it.
    await session.push_text("what time is it")
    await session.push_audio(bytes(3200))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            await turn_ended.wait()
    await session.close()
    reader.cancel()
    # The typed question is answered (by the backup), once, and the history agrees.
    assert any(isinstance(e, TranscriptFinal) and e.text == "what time is it" for e in seen), seen
    assert backup.texts == ["what time is it"]
    # The audio that failed on the primary reaches the backup as it answers: a barge-in.
    question, answer = (m.text for m in history)
    assert question == "what time is it" and backup.reply.startswith(answer), list(history)
