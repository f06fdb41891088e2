"""One live conversation: it routes, and does little else.

Client input goes through the input chain (``input.AudioInput``: order, decode,
limits) to the engine; the engine's events go to small sinks (``sinks``): state,
store, bus, recorder, metrics, trace and the wire. An event a sink fails on is
logged, and every other sink, and every later event, still gets its turn: a
session never goes mute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from sonicgate import tracing
from sonicgate.audio.formats import BYTES_PER_SECOND
from sonicgate.bus.base import SESSION_EVENT, Bus
from sonicgate.domain import (
    ErrorCode,
    GatewayError,
    SessionError,
    SessionStatus,
    StreamingContext,
    VoiceSession,
)
from sonicgate.engines.base import EngineError, EngineSession
from sonicgate.events import (
    AudioIn,
    Cancel,
    ClientEvent,
    EngineEvent,
    Error,
    TextIn,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
)
from sonicgate.metrics import GatewayMetrics
from sonicgate.protocol.base import Dialect, HeardReplies, SessionView
from sonicgate.sessions.input import AudioInput
from sonicgate.sessions.sequencer import Notice
from sonicgate.sessions.sinks import (
    BusSink,
    MetricsSink,
    Publisher,
    RecorderSink,
    Send,
    Sink,
    StateSink,
    StoreSink,
    TraceSink,
    TurnCounter,
    WireSink,
)
from sonicgate.store.audio import AudioStore
from sonicgate.store.base import Store
from sonicgate.store.registry import Registry

log = logging.getLogger(__name__)

LAST_REPLY_TIMEOUT = 20.0  # seconds an ending session waits for its last answer
DRAIN_TIMEOUT = 5.0  # seconds a closing session routes the events its engine had sent


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
        self._view = view
        self._engine = engine
        self._dialect = dialect
        self._send = send
        self._services = services
        self._publisher = Publisher(services.bus, record)
        heard = dialect if isinstance(dialect, HeardReplies) else None
        self._store = StoreSink(record, context, services.store, heard)
        self._turns = TurnCounter(record.messageCount)
        self._recorder = RecorderSink(services.audio, record.sessionId, self._turns)
        self._trace = tracing.TurnTrace(record.sessionId, view.engine)
        self._input = AudioInput(
            engine=engine,
            context=context,
            store=services.store,
            reorder_window=reorder_window,
            max_turn_seconds=max_turn_seconds,
            heard=self._heard,
            tell=self._tell,
        )
        self._sinks: tuple[Sink, ...] = (  # the cheap ones, which others' numbers need, first
            self._turns,
            MetricsSink(services.metrics, view.engine),
            TraceSink(self._trace, self._turns),
            StateSink(context, services.store, self._publisher),
            self._input,
            self._store,
            BusSink(self._publisher),
            self._recorder,
            WireSink(dialect, send, lambda: self.view),
        )
        # finish(): set once the answer to the speech pending at the end went out.
        self._last_reply = asyncio.Event()
        self._answering_last = False
        self._pump = asyncio.create_task(self._run_engine(), name=f"engine-{record.sessionId}")
        self.closed = False
        self.last_activity = time.time()  # wall clock: compared with stored timestamps

    @property
    def session_id(self) -> str:
        return self.record.sessionId

    @property
    def connection_id(self) -> str:
        return self.context.connectionId

    @property
    def view(self) -> SessionView:
        """What the dialect may say of the session, the acknowledged chunks included
        (made anew only when they change: the wire asks for it at every event)."""
        if self._view.last_sequence != (last := self._input.last_sequence):
            self._view = replace(self._view, last_sequence=last)
        return self._view

    async def handle(self, event: ClientEvent) -> None:
        """Apply one client event; raises ``GatewayError`` for the client."""
        if self.closed:
            raise SessionError(ErrorCode.SESSION_ENDED, f"session {self.session_id} has ended")
        self.last_activity = time.time()
        match event:
            case TextIn(text=text):
                await self._engine.push_text(text)
            case AudioIn():
                await self._input.push(event)
            case Cancel():
                await self._engine.interrupt()
            case _:
                raise SessionError(
                    ErrorCode.INVALID_MESSAGE, "a session is already started on this connection"
                )

    async def replay(self, turn_audio: list[tuple[int, bytes]]) -> None:
        """The turn under way when the session left another node or connection; raises
        ``EngineError`` if the engine fails on it."""
        try:
            await self._input.replay(turn_audio)
        except GatewayError:
            raise
        except Exception as exc:
            log.exception("engine failed on session %s's kept turn", self.session_id)
            message = f"the engine failed on the turn kept for this resume: {exc}"
            raise EngineError(ErrorCode.ENGINE_FAILED, message) from exc

    def _heard(self, pcm: bytes) -> None:
        seconds = len(pcm) / BYTES_PER_SECOND
        self._services.metrics.audio_in(self._view.engine, seconds)
        self._turns.heard(pcm)
        self._recorder.heard(pcm)
        self.record.totalDuration = (self.record.totalDuration or 0.0) + seconds

    async def _tell(self, notice: Notice) -> None:
        await self._send(self._dialect.error(notice.code, notice.message, self.session_id))

    async def _run_engine(self) -> None:
        async with self._engine_failure_told():
            async for event in self._engine.events():
                await self._route(event)

    @contextlib.asynccontextmanager
    async def _engine_failure_told(self) -> AsyncIterator[None]:
        """The engine itself broke: the client is told, and the connection stays (and a
        session that is ending still ends)."""
        try:
            yield
        except Exception as exc:
            log.exception("engine failed in session %s", self.session_id)
            await self._route(Error(ErrorCode.ENGINE_FAILED, f"the engine failed: {exc}"))

    async def _route(self, event: EngineEvent) -> None:
        for sink in self._sinks:
            try:
                await sink.handle(event)
            except Exception:
                log.exception("%s failed on %s", type(sink).__name__, event.type)
        match event:
            case TranscriptFinal(reason=TriggerReason.SESSION_END):
                self._answering_last = True
            case TurnEnded() if self._answering_last:
                self._last_reply.set()

    async def finish(self, answer_pending: bool = True) -> None:
        """The client ends the session: speech it has not heard answered yet still is
        (``answer_pending``), or is cut with the engine's close."""
        async with self._engine_failure_told():
            await self._input.release()
            if not answer_pending:
                return
            if await self._engine.end_turn(TriggerReason.SESSION_END):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._last_reply.wait(), LAST_REPLY_TIMEOUT)

    async def tell_ended(self) -> None:
        """Tell the client the session is over (the server is stopping)."""
        await self._send(self._dialect.ended(self.view))

    async def tell_moved(self) -> None:
        """Tell the client its session went on from another connection (resumed there)."""
        message = "this session was resumed on another connection; this one no longer has it"
        await self._send(self._dialect.error(ErrorCode.SESSION_MOVED, message, self.session_id))

    async def close(self, status: SessionStatus | None) -> None:
        """Stop the engine; ``status`` ends the session, ``None`` leaves it resumable."""
        if self.closed:
            return
        self.closed = True
        async with self._engine_failure_told():
            await self._input.release()
        self._input.close()
        async with self._engine_failure_told():
            await self._engine.close()  # its events end after those already out
        try:  # which are all routed: nothing the engine said is lost
            await asyncio.wait_for(self._pump, DRAIN_TIMEOUT)
        except TimeoutError:
            log.warning("session %s: the engine's last events were not all routed", self.session_id)
        self._trace.close()
        if status is not None:  # ended: no other node will resume its turn
            self.record.status = status
            await self._input.new_turn()
        try:  # a reply cut short by the close; as in _route, a recording lost is logged
            await self._recorder.save_reply()
        except Exception:
            log.exception("session %s: the last reply's recording was not saved", self.session_id)
        await self._store.remember_heard(closing=True)
        await self._store.persist()
        event = "ended" if status is not None else "detached"
        data = {"event": event, "status": str(self.record.status)}
        await self._publisher.publish(SESSION_EVENT, data)
