"""Where a session's engine events go: one small sink per concern.

``LiveSession`` hands every event to each sink in turn (state, store, bus,
recorder, metrics, trace, wire); a sink that fails is logged and the others,
and the events after it, go on: nothing one sink does can silence a session.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from sonicgate import logs, tracing
from sonicgate.audio.formats import BYTES_PER_SECOND, RATE, wav_bytes
from sonicgate.bus.base import (
    RESPONSE_EVENT,
    SESSION_EVENT,
    TRANSCRIPTION_EVENT,
    Bus,
    BusEvent,
)
from sonicgate.domain import Message, Role, StreamingContext, VoiceSession, utc_now
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Metrics,
    ResponseTextFinal,
    TranscriptFinal,
    TranscriptPartial,
    TurnEnded,
    Usage,
    message_of,
)
from sonicgate.metrics import GatewayMetrics
from sonicgate.protocol.base import Dialect, HeardReplies, JsonObject, SessionView
from sonicgate.sessions.state import StateMachine
from sonicgate.store.audio import AudioStore
from sonicgate.store.base import Store, saved

log = logging.getLogger(__name__)

Send = Callable[[JsonObject], Awaitable[None]]
# Each turn's recording keeps its last minute: a microphone left open between turns
# must not grow memory without bound.
RECORDING_LIMIT_SECONDS = 60


class Sink(Protocol):
    async def handle(self, event: EngineEvent) -> None: ...


class Publisher:
    """The session's events for UIs (the first seed's AppSync Events)."""

    def __init__(self, bus: Bus, record: VoiceSession) -> None:
        self._bus = bus
        self._record = record

    async def publish(self, channel: str, data: JsonObject) -> None:
        record = self._record
        await self._bus.publish(
            BusEvent(channel, record.sessionId, record.userId, data, utc_now(), record.owner)
        )


class StateSink:
    """The StreamingContext's processingState follows the turn; each change is kept
    and announced."""

    def __init__(self, context: StreamingContext, store: Store, publisher: Publisher) -> None:
        self._context = context
        self._store = store
        self._publisher = publisher
        self._machine = StateMachine(context.processingState)

    async def handle(self, event: EngineEvent) -> None:
        if not self._machine.follow(event):
            return
        self._context.processingState = self._machine.state
        await saved(self._store.put_context(self._context), "context")
        await self._publisher.publish(SESSION_EVENT, {"processingState": str(self._machine.state)})


class StoreSink:
    """History, transcript buffer and the session record, as the turn goes.

    With a dialect that learns what its listener heard (``HeardReplies``: a phone
    call), a reply is kept as heard, once the conversation has moved on."""

    def __init__(
        self,
        record: VoiceSession,
        context: StreamingContext,
        store: Store,
        heard: HeardReplies | None = None,
    ) -> None:
        self._record = record
        self._context = context
        self._store = store
        self._heard = heard

    async def handle(self, event: EngineEvent) -> None:
        match event:
            case TranscriptPartial(text=text):
                self._context.transcriptionBuffer = text
            case TranscriptFinal(text=text):
                self._context.transcriptionBuffer = text
                await self.remember_heard()
                await self._remember(event)
                # The turn is heard: audio kept for a resume elsewhere is not needed.
                await saved(self._store.clear_turn_audio(self._record.sessionId), "turn audio")
                await self.persist()
            case ResponseTextFinal() if self._heard is None:
                await self._remember(event)
            case TurnEnded():
                await self.persist()

    async def remember_heard(self, *, closing: bool = False) -> None:
        """Replies the listener is done with, as heard (``closing``: all of them)."""
        if self._heard is not None:
            for text in self._heard.heard_replies(closing=closing):
                await self._add(Message(Role.ASSISTANT, text))

    async def _remember(self, event: EngineEvent) -> None:
        if (message := message_of(event)) is not None:
            await self._add(message)

    async def _add(self, message: Message) -> None:
        if await saved(self._store.append_message(self._record.sessionId, message), "message"):
            self._record.messageCount += 1

    async def persist(self) -> None:
        await saved(self._store.update_session(self._record), "session record")
        await saved(self._store.put_context(self._context), "context")


class BusSink:
    """Transcripts and replies for UIs."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def handle(self, event: EngineEvent) -> None:
        match event:
            case TranscriptPartial(text=text, confidence=confidence):
                data = {"text": text, "isFinal": False, "confidence": confidence}
                await self._publisher.publish(TRANSCRIPTION_EVENT, data)
            case TranscriptFinal(text=text, confidence=confidence, reason=reason):
                data = {"text": text, "isFinal": True, "confidence": confidence}
                await self._publisher.publish(TRANSCRIPTION_EVENT, data | {"reason": str(reason)})
            case ResponseTextFinal(text=text):
                await self._publisher.publish(RESPONSE_EVENT, {"text": text})


class TurnCounter:
    """Numbers the user's spoken turns: the recordings' names, and the turn id on
    every log line and trace from there on. First of the sinks."""

    def __init__(self, first: int) -> None:
        self.turn = first
        self._spoken = False  # audio since the last turn

    def heard(self, pcm: bytes) -> None:
        self._spoken = self._spoken or bool(pcm)

    async def handle(self, event: EngineEvent) -> None:
        if isinstance(event, TranscriptFinal) and self._spoken:
            self._spoken = False
            self.turn += 1
            logs.turn.set(self.turn)  # this task's log lines from here on


class RecorderSink:
    """Each turn's audio, the user's and the reply's, into the audio store as
    ``<session>/<turn>-<role>.wav``."""

    def __init__(self, audio: AudioStore, session_id: str, turns: TurnCounter) -> None:
        self._audio = audio
        self._session_id = session_id
        self._turns = turns
        self._user = Tail(RECORDING_LIMIT_SECONDS * BYTES_PER_SECOND)
        self._reply = Tail(RECORDING_LIMIT_SECONDS * RATE * 2)
        self._reply_rate = RATE

    def heard(self, pcm: bytes) -> None:
        """User audio, as the session passes it to the engine."""
        self._user.add(pcm)

    async def handle(self, event: EngineEvent) -> None:
        match event:
            case AudioOut(pcm=pcm, sample_rate=rate):
                if rate != self._reply_rate:
                    self._reply_rate = rate
                    self._reply = Tail(RECORDING_LIMIT_SECONDS * rate * 2)
                self._reply.add(pcm)
            case TranscriptFinal():
                await self._save("user", self._user, RATE)
            case TurnEnded():
                await self.save_reply()

    async def save_reply(self) -> None:
        """The reply so far (all of it, or what a close cut short)."""
        await self._save("assistant", self._reply, self._reply_rate)

    async def _save(self, role: str, tail: Tail, rate: int) -> None:
        if pcm := tail.take():
            recording = wav_bytes(pcm, rate)
            await self._audio.save(self._session_id, self._turns.turn, role, recording)


class MetricsSink:
    """Prometheus counters and histograms, and the log lines that measure a turn
    (word counts only: what users say never reaches the logs)."""

    def __init__(self, metrics: GatewayMetrics, engine: str) -> None:
        self._metrics = metrics
        self._engine = engine
        self._usage: Usage | None = None  # the engine's last running token totals

    async def handle(self, event: EngineEvent) -> None:
        self._metrics.engine_event(self._engine, event)
        match event:
            case TranscriptFinal(text=text, confidence=confidence, reason=reason):
                words = len(text.split())
                log.info("heard %d words (%s, confidence %.2f)", words, reason, confidence)
            case Metrics(stages=stages):
                log.info("stages: %s", ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))
            case Usage():
                self._metrics.usage(self._engine, self._usage, event)
                self._usage = event


class TraceSink:
    """A span per turn, from its final transcript to the end of its reply."""

    def __init__(self, trace: tracing.TurnTrace, turns: TurnCounter) -> None:
        self._trace = trace
        self._turns = turns

    async def handle(self, event: EngineEvent) -> None:
        if isinstance(event, TranscriptFinal):
            self._trace.start(self._turns.turn, str(event.reason))
        self._trace.follow(event)


class WireSink:
    """The event in the client's dialect, onto its connection."""

    def __init__(self, dialect: Dialect, send: Send, view: Callable[[], SessionView]) -> None:
        self._dialect = dialect
        self._send = send
        self._view = view

    async def handle(self, event: EngineEvent) -> None:
        for message in await self._dialect.render(event, self._view()):
            await self._send(message)


class Tail:
    """The last ``limit`` bytes of a stream of chunks, at a constant cost a chunk (a
    bytearray trimmed from the front would move all of it, for every chunk)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())

    def take(self) -> bytes:
        """What is kept (its last ``limit`` bytes), emptying it."""
        data = b"".join(self._chunks)[-self._limit :]
        self._chunks.clear()
        self._size = 0
        return data
