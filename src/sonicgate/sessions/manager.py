"""Opens, resumes, ends and cleans up sessions; knows which ones are live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sonicgate import logs
from sonicgate.audio.decoder import InputDecoder
from sonicgate.audio.formats import AudioFormatError
from sonicgate.bus.base import SESSION_EVENT, BusEvent
from sonicgate.domain import (
    ErrorCode,
    History,
    Principal,
    ProcessingState,
    SessionError,
    SessionStatus,
    StreamingContext,
    VoiceSession,
    utc_now,
)
from sonicgate.engines.base import Engine, EngineConfig, supports_language
from sonicgate.events import Start
from sonicgate.protocol.base import Dialect, SessionView
from sonicgate.sessions.input import KEPT_SEQUENCE_NUMBERS
from sonicgate.sessions.session import LiveSession, Services
from sonicgate.sessions.sinks import Send
from sonicgate.sessions.slots import LocalSlots, SessionSlots
from sonicgate.store.base import SessionExists, StoreUnavailable, saved
from sonicgate.store.registry import new_connection_id, node_of

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")  # whole: fullmatch


@dataclass(frozen=True, slots=True)
class Limits:
    reorder_window: int = 8
    stale_after_seconds: float = 30 * 60
    audio_retention_days: float = 7.0
    max_sessions_per_client: int = 10  # 0: no limit
    max_turn_audio_seconds: float = 0.0  # 0: no limit
    heartbeat_seconds: float = 10.0  # how often this node tells the store it lives
    node_silence_seconds: float = 30.0  # a node not heard from for this long is gone


NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_node_id(node_id: str) -> str:
    if not NODE_ID.fullmatch(node_id):
        raise ValueError(f"node id {node_id!r}: use up to 64 letters, digits, '.', '-' and '_'")
    return node_id


async def _replay(live: LiveSession, turn_audio: list[tuple[int, bytes]]) -> None:
    """The turn kept for a resume, heard again; an engine that fails on it leaves
    nothing half-open."""
    try:
        await live.replay(turn_audio)
    except BaseException:
        await live.close(None)
        raise


class KeyedLock:
    """An asyncio lock for each key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class SessionManager:
    def __init__(
        self,
        engines: Mapping[str, Engine],
        default_engine: str,
        services: Services,
        limits: Limits,
        node_id: str,
        slots: SessionSlots | None = None,
    ) -> None:
        """``slots``: where each client's sessions are counted (else on this node)."""
        if default_engine not in engines:
            raise ValueError(f"default engine '{default_engine}' is not loaded")
        self.engines = engines
        self.default_engine = default_engine
        self.services = services
        self.limits = limits
        self.node_id = check_node_id(node_id)
        self.live: dict[str, LiveSession] = {}
        self._opening = KeyedLock()
        self.stopping = False  # a clean stop is under way: no new sessions
        self.slots = slots or LocalSlots(limits.max_sessions_per_client)

    async def open(
        self, start: Start, connection_id: str, dialect: Dialect, send: Send, principal: Principal
    ) -> LiveSession:
        """Start or resume a session for ``principal`` (from the access policy)."""
        if self.stopping:
            raise SessionError(
                ErrorCode.SERVER_STOPPING, "the server is stopping; reconnect shortly"
            )
        # A new session is named now: a client's sessions are counted by name.
        session_id = str(uuid.uuid4()) if start.session_id is None else start.session_id
        if not SESSION_ID.fullmatch(session_id):
            raise SessionError(
                ErrorCode.INVALID_FIELD,
                "'sessionId' must be 1-128 letters, digits, '_', '-', '.', ':'",
            )
        client = principal.id
        # Counted from here, so that simultaneous starts cannot slip past the limit.
        if (held := await self.slots.claim(client, session_id)) is not None:
            limit = self.limits.max_sessions_per_client
            raise SessionError(
                ErrorCode.TOO_MANY_SESSIONS,
                f"this client already has {held} sessions; the limit is {limit}",
            )
        try:
            # One opening of a session at a time: two tabs resuming it at once would
            # otherwise both miss the other's, and both run it.
            async with self._opening.hold(session_id):
                return await self._open(start, session_id, connection_id, dialect, send, principal)
        except BaseException:
            await self.slots.release(client, session_id)
            raise

    async def _open(
        self,
        start: Start,
        session_id: str,
        connection_id: str,
        dialect: Dialect,
        send: Send,
        principal: Principal,
    ) -> LiveSession:
        name, engine = self._engine_for(start)
        record, history, resumed = await self._find_record(
            session_id, start, connection_id, principal
        )
        logs.session_id.set(record.sessionId)  # the session's tasks inherit it
        config = EngineConfig(
            language=start.language,
            voice=start.voice,
            history=history,
            text_only=start.text_only,
            credentials=start.credentials,
            **({"system_prompt": start.system_prompt} if start.system_prompt else {}),
        )
        engine_session = await engine.start(config)  # an EngineError goes to the client
        store = self.services.store
        try:
            context = await self._record_start(record, start, name, connection_id, resumed)
            turn_audio = await store.turn_audio(record.sessionId) if resumed else []
        except BaseException:
            await engine_session.close()  # the store refused: no half-open session
            raise
        if turn_audio:  # the client's sequence goes on from what was kept
            kept = {sequence for sequence, _ in turn_audio}
            context.chunks = sorted(set(context.chunks) | kept)[-KEPT_SEQUENCE_NUMBERS:]
        capabilities = engine.capabilities()
        view = SessionView(
            session=record,
            language=start.language,
            engine=name,
            capabilities=capabilities,
            output_sample_rate=capabilities.output_sample_rate,
            resumed=resumed,
        )
        live = LiveSession(
            record=record,
            context=context,
            engine=engine_session,
            view=view,
            dialect=dialect,
            send=send,
            services=self.services,
            reorder_window=self.limits.reorder_window,
            client=principal.id,
            max_turn_seconds=self.limits.max_turn_audio_seconds,
        )
        await _replay(live, turn_audio)
        self.live[record.sessionId] = live
        self.services.metrics.sessions.set(len(self.live))
        await self._announce(record, resumed)
        return live

    def _engine_for(self, start: Start) -> tuple[str, Engine]:
        """The engine a start asks for, once the request is known to be one it can serve."""
        name = start.engine or self.default_engine
        engine = self.engines.get(name)
        if engine is None:
            raise SessionError(
                ErrorCode.UNKNOWN_ENGINE,
                f"no engine '{name}'; available: {', '.join(self.engines)}",
            )
        capabilities = engine.capabilities()
        if not supports_language(capabilities, start.language):
            raise SessionError(
                ErrorCode.UNSUPPORTED_LANGUAGE,
                f"engine '{name}' handles {', '.join(capabilities.languages)}, "
                f"not '{start.language}'",
            )
        try:
            InputDecoder(start.audio_format).close()
        except AudioFormatError as exc:
            raise SessionError(ErrorCode.AUDIO_FORMAT, str(exc)) from exc
        return name, engine

    async def _find_record(
        self, session_id: str, start: Start, connection_id: str, principal: Principal
    ) -> tuple[VoiceSession, History, bool]:
        """The session to resume, if its owner asks, or a new one: with its history,
        and whether it was resumed."""
        store = self.services.store
        record = await store.get_session(session_id)
        if record is None:
            new = VoiceSession(
                sessionId=session_id,
                novaSonicSessionId=f"ns-{uuid.uuid4()}",
                connectionId=connection_id,
                userId=start.user_id,
                audioFormat=start.audio_format,
                owner=principal.id,
            )
            return new, History(), False
        if not _may_resume(principal, start, record):
            raise SessionError(ErrorCode.FORBIDDEN, "this session belongs to another user")
        if (previous := self.live.get(record.sessionId)) is not None:
            # The client moved to a new connection (or reconfigured this one). The old
            # session saves its last turn as it closes: read the record after that.
            await self.close(previous, None)
            if previous.connection_id != connection_id:
                await previous.tell_moved()
            record = await store.get_session(record.sessionId) or record
        return record, History(await store.history(record.sessionId)), True

    async def _announce(self, record: VoiceSession, resumed: bool) -> None:
        await self.services.bus.publish(
            BusEvent(
                SESSION_EVENT,
                record.sessionId,
                record.userId,
                {"event": "resumed" if resumed else "started", "status": str(record.status)},
                utc_now(),
                record.owner,
            )
        )

    async def _record_start(
        self, record: VoiceSession, start: Start, engine: str, connection_id: str, resumed: bool
    ) -> StreamingContext:
        """Write the session (new or resumed) and its context as it goes live."""
        store = self.services.store
        context = await store.get_context(record.sessionId) if resumed else None
        if context is None:
            context = StreamingContext(
                sessionId=record.sessionId,
                connectionId=connection_id,
                userId=record.userId,
                audioFormat=start.audio_format,
                language=start.language,
                model=engine,
            )
        context.connectionId = connection_id
        context.audioFormat = record.audioFormat = start.audio_format
        context.language, context.model = start.language, engine
        context.processingState = ProcessingState.IDLE  # a fresh engine has no turn under way
        record.connectionId, record.status = connection_id, SessionStatus.ACTIVE
        if resumed:
            await store.update_session(record)
        else:
            try:
                await store.create_session(record)
            except SessionExists as exc:  # another client started it a moment ago
                raise SessionError(
                    ErrorCode.SESSION_EXISTS,
                    f"session '{record.sessionId}' was just started elsewhere: resume it",
                ) from exc
        await store.put_context(context)
        return context

    async def close(self, live: LiveSession, status: SessionStatus | None) -> None:
        if self.live.get(live.session_id) is live:
            del self.live[live.session_id]
            self.services.metrics.sessions.set(len(self.live))
            await self.slots.release(live.client, live.session_id)
        await live.close(status)

    async def close_all(self) -> None:
        for live in list(self.live.values()):
            await self.close(live, None)

    async def shutdown(self) -> None:
        """A clean stop: every live session ends COMPLETED, and its client is told."""
        self.stopping = True
        for live in list(self.live.values()):
            await self.close(live, SessionStatus.COMPLETED)
            await live.tell_ended()

    async def _connected_sessions(self) -> set[str] | None:
        """Sessions with a connection on some node; None while the registry is down."""
        try:
            connections = await self.services.registry.connections()
        except StoreUnavailable as exc:
            log.warning("cleanup leaves other nodes' sessions alone: %s", exc)
            return None
        return {c.sessionId for c in connections if c.sessionId is not None}

    def new_connection_id(self) -> str:
        return new_connection_id(self.node_id)

    async def recover(self) -> None:
        """At start: this node's sessions still ACTIVE were cut off by its crash (a
        clean stop ends them), and its connections are gone. Other nodes' sessions,
        in a shared store, are theirs."""
        await self._mark_lost(self.node_id)

    async def keep_alive(self) -> None:
        """Runs for the node's life: tells the store it lives, and does the crash
        recovery of nodes that fell silent."""
        while True:
            # Whatever fails, the loop goes on: a node that stops beating is taken
            # for dead by the others, its connections with it.
            await _logged(self.services.registry.renew(), "connection registry not renewed")
            await _logged(self.slots.renew(), "sessions per client not renewed")
            await _logged(self._heartbeat(), "heartbeat not saved")
            await asyncio.sleep(self.limits.heartbeat_seconds)

    async def _heartbeat(self) -> None:
        store = self.services.store
        await store.heartbeat(self.node_id)
        since = time.time() - self.limits.node_silence_seconds
        # Forgotten once its sessions are marked: if the store fails midway, the next
        # beat (of this node or another) marks them. Two nodes at once mark them twice.
        for node in await store.silent_nodes(since):
            if node != self.node_id:
                log.warning("node %s fell silent: its sessions are lost", node)
                await self._mark_lost(node)
                await store.forget_silent_node(node, since)

    async def _mark_lost(self, node_id: str) -> None:
        """A node is gone: its ACTIVE sessions end in ERROR (clients can still resume
        them), and its connections leave the registry."""
        store = self.services.store
        for record in await store.list_sessions(SessionStatus.ACTIVE):
            if node_of(record.connectionId) == node_id and record.sessionId not in self.live:
                record.status = SessionStatus.ERROR
                await store.update_session(record)
        await saved(self.services.registry.forget_node(node_id), "connection registry")

    async def cleanup(self, principal: Principal) -> dict[str, int]:
        """End sessions nobody has touched for a while, and drop their kept turn audio;
        drop recordings past retention. An ordinary user of an access-controlled
        gateway cleans up its own sessions only; recordings are an operator's."""
        everyone = principal.operator or not principal.authenticated
        cutoff = time.time() - self.limits.stale_after_seconds
        ended = 0
        for live in list(self.live.values()):
            if live.last_activity < cutoff and (everyone or principal.owns(live.record.owner)):
                await self.close(live, SessionStatus.COMPLETED)
                ended += 1
        store = self.services.store
        # A session connected on another node is that node's to judge: its record is
        # written at turn ends only, and a user may stream for long within one turn.
        connected = await self._connected_sessions()
        for record in await store.list_sessions(SessionStatus.ACTIVE):
            if record.sessionId in self.live or _epoch(record.updatedAt) >= cutoff:
                continue
            if connected is None or record.sessionId in connected:
                continue
            if everyone or principal.owns(record.owner):
                record.status = SessionStatus.COMPLETED
                await store.update_session(record)
                await store.clear_turn_audio(record.sessionId)
                ended += 1
        deleted = 0
        if everyone:
            retention = self.limits.audio_retention_days * 86400
            deleted = await self.services.audio.delete_older_than(time.time() - retention)
        return {"endedSessions": ended, "deletedAudioFiles": deleted}


async def _logged(step: Awaitable[None], what: str) -> None:
    try:
        await step
    except StoreUnavailable as exc:
        log.warning("%s: %s", what, exc)
    except Exception:
        log.exception(what)


def _may_resume(principal: Principal, start: Start, record: VoiceSession) -> bool:
    """With access control on, only the owner resumes a session; off, the label
    ``userId`` decides, as the seeds have it: the one given at the start, repeated
    (a session started without one is "anonymous", and resumed without one)."""
    if principal.authenticated:
        return principal.owns(record.owner)
    return start.user_id == record.userId


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(UTC).timestamp()
