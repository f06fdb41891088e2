"""One live conversation: client input in, engine events out, state kept.

A ``LiveSession`` sits between a connection's dialect and an engine session.
It orders and decodes audio, follows the StreamingContext state machine,
writes history and audio, publishes UI events, and hands each engine event to
the dialect for the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from sonicgate import logs, tracing
from sonicgate.audio.decoder import InputDecoder
from sonicgate.audio.formats import (
    AudioFormatError,
    AudioTooLong,
    DecodeLimit,
    decode_file,
    wav_bytes,
)
from sonicgate.bus.base import (
    RESPONSE_EVENT,
    SESSION_EVENT,
    TRANSCRIPTION_EVENT,
    Bus,
    BusEvent,
)
from sonicgate.engines.base import INPUT_SAMPLE_RATE, EngineError, EngineSession, Message, Role
from sonicgate.events import (
    AudioIn,
    AudioOut,
    Cancel,
    ClientEvent,
    EngineEvent,
    Error,
    Metrics,
    ResponseTextFinal,
    TextIn,
    TranscriptFinal,
    TranscriptPartial,
    TriggerReason,
    TurnEnded,
    Usage,
)
from sonicgate.metrics import GatewayMetrics
from sonicgate.protocol.base import Dialect, HeardReplies, JsonObject, ProtocolError, SessionView
from sonicgate.sessions.sequencer import Sequencer
from sonicgate.sessions.state import StateMachine
from sonicgate.store.audio import AudioStore
from sonicgate.store.base import (
    SessionStatus,
    Store,
    StreamingContext,
    VoiceSession,
    saved,
    utc_now,
)
from sonicgate.store.registry import Registry

log = logging.getLogger(__name__)

Send = Callable[[JsonObject], Awaitable[None]]
BYTES_PER_SECOND = INPUT_SAMPLE_RATE * 2
KEPT_SEQUENCE_NUMBERS = 64
LAST_REPLY_TIMEOUT = 20.0  # seconds an ending session waits for its last answer
# The audio store keeps each turn's last minute: a microphone left open between
# turns must not grow memory without bound.
RECORDING_LIMIT_SECONDS = 60
# Numbered chunks kept in the store for a resume elsewhere: a turn's first minute.
KEPT_TURN_AUDIO_BYTES = 60 * BYTES_PER_SECOND


@dataclass(frozen=True, slots=True)
class Services:
    store: Store
    registry: Registry  # which node holds which connection
    bus: Bus
    audio: AudioStore
    metrics: GatewayMetrics


class LiveSession:
    def __init__(
        self,
        *,
        record: VoiceSession,
        context: StreamingContext,
        engine: EngineSession,
        view: SessionView,
        dialect: Dialect,
        send: Send,
        services: Services,
        reorder_window: int,
        client: str,
        max_turn_seconds: float,
    ) -> None:
        self.record = record
        self.client = client  # who holds it, for the sessions-per-client limit
        self.context = context
        self.view = view
        self._engine = engine
        self._dialect = dialect
        self._send = send
        self._services = services
        self._state = StateMachine(context.processingState)
        self._decode_limit = DecodeLimit(max_turn_seconds)
        self._decoder = InputDecoder(context.audioFormat, self._decode_limit)
        last = max(context.chunks) + 1 if context.chunks else None
        self._sequencer: Sequencer[bytes] = Sequencer(reorder_window, last)
        self._user_audio = bytearray()  # the user's turn so far (its last minute)
        self._turn_bytes = 0  # all of it, to hold the turn limit at any value
        self._kept_bytes = 0  # of it in the store, for a resume elsewhere
        self._max_turn_bytes = int(max_turn_seconds * BYTES_PER_SECOND)  # 0: no limit
        self._turn_cut = False  # the turn went over the limit: its rest is dropped
        self._reply_audio = bytearray()
        self._turn = record.messageCount
        # finish(): set once the answer to the speech pending at the end went out.
        self._last_reply = asyncio.Event()
        self._answering_last = False
        self._usage: Usage | None = None  # the engine's last running token totals
        self._trace = tracing.TurnTrace(record.sessionId, view.engine)
        # A dialect that knows what was heard has replies recorded as heard, once the
        # conversation has moved on (the next user turn, or the end).
        self._heard = dialect if isinstance(dialect, HeardReplies) else None
        self._pump = asyncio.create_task(self._run_engine(), name=f"engine-{record.sessionId}")
        self.closed = False
        self.last_activity = time.time()  # wall clock: compared with stored timestamps

    @property
    def session_id(self) -> str:
        return self.record.sessionId

    @property
    def connection_id(self) -> str:
        return self.context.connectionId

    async def handle(self, event: ClientEvent) -> None:
        """Apply one client event; raises ``ProtocolError`` for the client."""
        if self.closed:
            raise ProtocolError("session_ended", f"session {self.session_id} has ended")
        self.last_activity = time.time()
        if isinstance(event, TextIn):
            self._trace.start(self._turn, "text")
            await self._engine.push_text(event.text)
        elif isinstance(event, AudioIn):
            await self._audio_in(event)
        elif isinstance(event, Cancel):
            await self._engine.interrupt()
        else:
            raise ProtocolError(
                "invalid_message", "a session is already started on this connection"
            )

    async def _audio_in(self, event: AudioIn) -> None:
        if event.complete_recording:
            pcm = await asyncio.to_thread(_decode_recording, event.data, self._decode_limit)
            await self._received(pcm)
            await self._engine.push_utterance(pcm, TriggerReason.VOICE_DATA)
            return
        if event.audio_format and event.audio_format != self.context.audioFormat:
            raise ProtocolError(
                "audio_format",
                f"this session streams '{self.context.audioFormat}', not '{event.audio_format}'",
            )
        ready, notices = self._sequencer.accept(event.sequence, event.data)
        if event.end_of_turn:
            held, late_notices = self._sequencer.drain()
            ready, notices = ready + held, notices + late_notices
        for notice in notices:
            await self._send(self._dialect.error(notice.code, notice.message, self.session_id))
        released = bytearray()
        for data in ready:
            try:
                released += await self._forward(data)
            except AudioFormatError as exc:
                raise _audio_error(exc) from exc
        if event.sequence is not None:
            await self._keep(event.sequence, bytes(released))
            self.context.chunks = [*self.context.chunks, event.sequence][-KEPT_SEQUENCE_NUMBERS:]
            self.view = _with_sequence(self.view, self._sequencer.last_released)
        if event.end_of_turn:
            self._turn_cut = False
            await self._end_of_turn()
            await self._engine.end_turn(TriggerReason.EXPLICIT)
        elif not self._turn_cut and 0 < self._max_turn_bytes < self._turn_bytes:
            # End the turn here: the engine answers what it heard, the rest is dropped.
            self._turn_cut = True
            await self._engine.end_turn(TriggerReason.EXPLICIT)
            raise _turn_too_long(
                self._max_turn_bytes, "the turn ends here, and the rest of it is dropped"
            )

    async def _keep(self, sequence: int, pcm: bytes) -> None:
        """Numbered audio goes to the store before it is acknowledged, so that another
        node can resume the turn; a turn's first ``KEPT_TURN_AUDIO_BYTES`` at most."""
        if pcm and self._kept_bytes + len(pcm) <= KEPT_TURN_AUDIO_BYTES:
            self._kept_bytes += len(pcm)
            await saved(
                self._services.store.save_turn_audio(self.session_id, sequence, pcm),
                "turn audio",
            )

    async def _end_of_turn(self) -> None:
        """The user's turn is over (said by the client, or heard): its counts start
        again, and the audio kept for a resume is no longer needed."""
        self._turn_bytes = self._kept_bytes = 0
        await saved(self._services.store.clear_turn_audio(self.session_id), "turn audio")

    async def _forward(self, data: bytes) -> bytes:
        """Decode one chunk of client audio, count it, and pass it to the engine;
        returns the audio passed on."""
        if self._decoder.blocking:  # off the loop: a webm chunk waits for its decoder thread
            pcm = await asyncio.to_thread(self._decoder.feed, data)
        else:
            pcm = self._decoder.feed(data)
        if self._turn_cut:
            return b""  # decoded all the same: a stream's decoder must see every chunk
        await self._pass_on(pcm)
        return pcm

    async def _pass_on(self, pcm: bytes) -> None:
        await self._received(pcm)
        await self._engine.push_audio(pcm)

    async def replay(self, turn_audio: list[tuple[int, bytes]]) -> None:
        """The turn under way when the session left another node (or connection):
        the engine hears it again from its start, and the client's sequence goes on."""
        for _, pcm in turn_audio:
            await self._pass_on(pcm)
        if turn_audio:
            self.view = _with_sequence(self.view, turn_audio[-1][0])

    async def _received(self, pcm: bytes) -> None:
        self._services.metrics.audio_in(self.view.engine, len(pcm) / BYTES_PER_SECOND)
        self._turn_bytes += len(pcm)
        _append_bounded(self._user_audio, pcm, RECORDING_LIMIT_SECONDS * BYTES_PER_SECOND)
        self.record.totalDuration = (self.record.totalDuration or 0.0) + len(pcm) / BYTES_PER_SECOND

    async def _run_engine(self) -> None:
        try:
            async for event in self._engine.events():
                await self._on_engine_event(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an engine failure must not take the connection down
            log.exception("engine failed in session %s", self.session_id)
            await self._on_engine_event(Error("engine_failed", f"the engine failed: {exc}"))

    async def _on_engine_event(self, event: EngineEvent) -> None:
        self._services.metrics.engine_event(self.view.engine, event)
        self._trace.follow(event)
        if self._state.follow(event):
            self.context.processingState = self._state.state
            await saved(self._services.store.put_context(self.context), "context")
            await self._publish(SESSION_EVENT, {"processingState": str(self._state.state)})
        match event:
            case TranscriptPartial(text=text, confidence=confidence):
                self.context.transcriptionBuffer = text
                await self._publish(
                    TRANSCRIPTION_EVENT, {"text": text, "isFinal": False, "confidence": confidence}
                )
            case TranscriptFinal(text=text, confidence=confidence, reason=reason):
                await self._remember_heard()
                await self._user_turn(text)
                # Words counted, never logged: what users say stays out of the logs.
                self._trace.start(self._turn, str(reason))
                words = len(text.split())
                log.info("heard %d words (%s, confidence %.2f)", words, reason, confidence)
                await self._publish(
                    TRANSCRIPTION_EVENT,
                    {
                        "text": text,
                        "isFinal": True,
                        "confidence": confidence,
                        "reason": str(reason),
                    },
                )
            case AudioOut(pcm=pcm, sample_rate=rate):
                _append_bounded(self._reply_audio, pcm, RECORDING_LIMIT_SECONDS * rate * 2)
            case ResponseTextFinal(text=text):
                if text and self._heard is None:
                    await self._remember(Message(Role.ASSISTANT, text))
                await self._publish(RESPONSE_EVENT, {"text": text})
            case TurnEnded():
                await self._assistant_audio()
            case Metrics(stages=stages):
                log.info("stages: %s", ", ".join(f"{k} {v:.3f} s" for k, v in stages.items()))
            case Usage():
                self._services.metrics.usage(self.view.engine, self._usage, event)
                self._usage = event
        for message in await self._dialect.render(event, self.view):
            await self._send(message)
        match event:
            case TranscriptFinal(reason=TriggerReason.SESSION_END):
                self._answering_last = True
            case TurnEnded() if self._answering_last:
                self._last_reply.set()

    async def _user_turn(self, text: str) -> None:
        self.context.transcriptionBuffer = text
        if text:
            await self._remember(Message(Role.USER, text))
        await self._end_of_turn()
        if self._user_audio:
            self._turn += 1
            logs.turn.set(self._turn)  # for this task's log lines from here on
            await self._save_audio("user", bytes(self._user_audio), INPUT_SAMPLE_RATE)
        self._user_audio.clear()
        self._turn_cut = False
        await self._persist()

    async def _assistant_audio(self) -> None:
        if self._reply_audio:
            await self._save_audio(
                "assistant", bytes(self._reply_audio), self.view.output_sample_rate
            )
        self._reply_audio.clear()
        await self._persist()

    async def _save_audio(self, role: str, pcm: bytes, rate: int) -> None:
        await self._services.audio.save(self.session_id, self._turn, role, wav_bytes(pcm, rate))

    async def _remember_heard(self, *, closing: bool = False) -> None:
        if self._heard is not None:
            for text in self._heard.heard_replies(closing=closing):
                await self._remember(Message(Role.ASSISTANT, text))

    async def _remember(self, message: Message) -> None:
        if await saved(self._services.store.append_message(self.session_id, message), "message"):
            self.record.messageCount += 1

    async def _persist(self) -> None:
        store = self._services.store
        await saved(store.update_session(self.record), "session record")
        await saved(store.put_context(self.context), "context")

    async def _publish(self, channel: str, data: JsonObject) -> None:
        await self._services.bus.publish(
            BusEvent(
                channel, self.session_id, self.record.userId, data, utc_now(), self.record.owner
            )
        )

    async def finish(self) -> None:
        """The client ends the session: speech it has not heard answered yet still is."""
        await self._release_held()
        if await self._engine.end_turn(TriggerReason.SESSION_END):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._last_reply.wait(), LAST_REPLY_TIMEOUT)

    async def _release_held(self) -> None:
        """Chunks still waiting for a gap to fill go to the engine as they are."""
        held, _ = self._sequencer.drain()
        with contextlib.suppress(AudioFormatError, EngineError):
            for data in held:
                await self._forward(data)

    async def tell_ended(self) -> None:
        """Tell the client the session is over (the server is stopping)."""
        await self._send(self._dialect.ended(self.view))

    async def tell_moved(self) -> None:
        """Tell the client its session went on from another connection (resumed there)."""
        message = "this session was resumed on another connection; this one no longer has it"
        await self._send(self._dialect.error("session_moved", message, self.session_id))

    async def close(self, status: SessionStatus | None) -> None:
        """Stop the engine; ``status`` ends the session, ``None`` leaves it resumable."""
        if self.closed:
            return
        self.closed = True
        await self._release_held()
        self._trace.close()
        self._decoder.close()
        await self._engine.close()
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        if status is not None:  # ended: no other node will resume its turn
            self.record.status = status
            await saved(self._services.store.clear_turn_audio(self.session_id), "turn audio")
        await self._remember_heard(closing=True)
        await self._assistant_audio()  # saves a reply cut short by the close, then persists
        event = "ended" if status is not None else "detached"
        await self._publish(SESSION_EVENT, {"event": event, "status": str(self.record.status)})


def _append_bounded(recording: bytearray, pcm: bytes, limit: int) -> None:
    """Append, keeping only the last ``limit`` bytes."""
    recording += pcm
    if len(recording) > limit:
        del recording[: len(recording) - limit]


def _decode_recording(data: bytes, limit: DecodeLimit) -> bytes:
    try:
        return decode_file(data, limit)
    except AudioFormatError as exc:
        raise _audio_error(exc) from exc


def _audio_error(exc: AudioFormatError) -> ProtocolError:
    code = "turn_too_long" if isinstance(exc, AudioTooLong) else "audio_format"
    return ProtocolError(code, str(exc))


def _turn_too_long(limit_bytes: int, outcome: str) -> ProtocolError:
    seconds = limit_bytes / BYTES_PER_SECOND
    return ProtocolError("turn_too_long", f"a turn may hold {seconds:g} s of audio: {outcome}")


def _with_sequence(view: SessionView, last: int | None) -> SessionView:
    return replace(view, last_sequence=last)
