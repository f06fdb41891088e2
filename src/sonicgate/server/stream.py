"""``/api/nova-sonic/stream``: one client connection, in whichever seed dialect it speaks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from sonicgate import logs
from sonicgate.domain import Connection, ErrorCode, GatewayError, SessionError, SessionStatus
from sonicgate.engines.base import EngineError
from sonicgate.events import End, Start
from sonicgate.protocol import Dialect, ProtocolError, detect
from sonicgate.protocol.base import JsonObject, parse_json, to_json
from sonicgate.server.access import principal_of
from sonicgate.server.ratelimit import RateLimiter
from sonicgate.sessions.manager import SessionManager
from sonicgate.sessions.session import LiveSession
from sonicgate.store.base import StoreUnavailable, saved

log = logging.getLogger(__name__)

SLOW_CLIENT_CODE = 1008  # policy violation: it did not read what it asked for
IDLE_CODE = 1001  # going away
FLUSH_SECONDS = 0.1  # for the writer to send a last message before a close


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_message_bytes: int
    max_session_seconds: float = 0.0  # 0: no limit
    idle_timeout: float = 0.0  # seconds without a message either way; 0: none
    outbox_messages: int = 2048  # see Settings
    outbox_bytes: int = 8 * 1024 * 1024


class ClientConnection:
    def __init__(
        self,
        websocket: WebSocket,
        manager: SessionManager,
        limits: ConnectionLimits,
        messages: RateLimiter,
        dialect: Dialect | None = None,
        opening: Start | None = None,
    ) -> None:
        """``messages``: the message rate limiter, shared by all of a client's
        connections (see ``_budget``). ``dialect``: fixed by the route (else the first
        message tells); ``opening``: a session to start as soon as the socket opens (the
        Realtime API's way)."""
        self.id = manager.new_connection_id()
        self._ws = websocket
        self._manager = manager
        self._limits = limits
        self._principal = principal_of(websocket.scope)
        self._messages = messages
        self._dialect = dialect
        self._opening = opening
        self._session: LiveSession | None = None
        self._expiry: asyncio.Task[None] | None = None  # ends a session at its time limit
        # One message at a time: the session-length timer ends sessions between messages.
        self._turnstile = asyncio.Lock()
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._outbox_bytes = 0
        self._cut_off = False
        self._active = time.monotonic()  # when a message last went either way
        self._closer: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        logs.connection_id.set(self.id)  # this task and those it starts log under it
        # A route may have accepted the socket to read a first message (Twilio's start).
        if self._ws.client_state is WebSocketState.CONNECTING:
            await self._ws.accept()
        writer = self._writer = asyncio.create_task(self._write(), name=f"writer-{self.id}")
        watchdog = asyncio.create_task(self._watch_idle(), name=f"idle-{self.id}")
        connections = self._manager.services.metrics.connections
        connections.inc()
        try:
            if self._dialect is not None and self._opening is not None:
                await self._guarded(self._start(self._dialect, self._opening))
            while True:
                frame = await self._ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                self._active = time.monotonic()
                await self._on_frame(frame.get("text"), frame.get("bytes"))
        except WebSocketDisconnect:
            pass
        finally:
            connections.dec()
            watchdog.cancel()
            async with self._turnstile:
                await self._detach()
            writer.cancel()  # the socket is gone: nothing left to flush
            with contextlib.suppress(BaseException):
                await writer

    async def send(self, message: JsonObject) -> None:
        """Queue a message; never waits, so a client that stops reading cannot stall
        its engine. Past the outbox's limits the client is cut off."""
        if self._cut_off:
            return
        text = to_json(message)
        limits = self._limits
        if (
            self._outbox.qsize() >= limits.outbox_messages
            or self._outbox_bytes + len(text) > limits.outbox_bytes
        ):
            self._cut_off = True
            log.warning(
                "%s: %d messages (%d bytes) unread, closing the connection",
                self.id,
                self._outbox.qsize(),
                self._outbox_bytes,
            )
            self._manager.services.metrics.errors.labels("client_too_slow").inc()
            self._closer = asyncio.create_task(self._close(SLOW_CLIENT_CODE, "client too slow"))
            return
        self._outbox_bytes += len(text)
        self._outbox.put_nowait(text)

    async def _close(self, code: int, reason: str) -> None:
        # The writer may be stuck on a full socket: stop it, so the close frame goes first.
        if self._writer is not None:
            self._writer.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close(code, reason)

    async def _write(self) -> None:
        while True:
            text = await self._outbox.get()
            self._outbox_bytes -= len(text)
            try:
                await self._ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError):
                return  # the client is gone; the reader loop notices too
            self._active = time.monotonic()

    async def _watch_idle(self) -> None:
        """Closes the connection once no message went either way for the idle timeout;
        its session stays resumable."""
        timeout = self._limits.idle_timeout
        if timeout <= 0:
            return
        while True:  # the reader and the writer move ``_active`` on as they go
            left = self._active + timeout - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(left)
        log.info("%s: idle for %g s, closing", self.id, timeout)
        async with self._turnstile:
            await self._error(ErrorCode.IDLE_TIMEOUT, f"no message for {timeout:g} s: closing")
        await asyncio.sleep(FLUSH_SECONDS)  # for the writer to send it
        await self._close(IDLE_CODE, "idle")

    async def _on_frame(self, text: str | None, data: bytes | None) -> None:
        await self._guarded(self._handle(text, data))

    async def _guarded(self, step: Awaitable[None]) -> None:
        """One step at a time; a protocol error goes to the client, in its dialect."""
        async with self._turnstile:
            try:
                await step
            except GatewayError as exc:
                await self._error(exc.code, exc.message)
            except StoreUnavailable as exc:  # a session cannot start or resume now
                log.warning("%s: %s", self.id, exc)
                await self._error(ErrorCode.STORE_UNAVAILABLE, f"sessions are unavailable: {exc}")

    @property
    def _budget(self) -> str:
        """Whose message budget this connection's messages count against: its client's."""
        return self._principal.id

    async def _handle(self, text: str | None, data: bytes | None) -> None:
        if await self._messages.take(self._budget) is not None:
            raise SessionError(
                ErrorCode.RATE_LIMITED,
                f"more than {self._messages.rate:g} messages a second: this one was dropped",
            )
        message = self._decode(text, data)
        if self._dialect is None:
            self._dialect = detect(message)
            # Best effort, as later writes: a registry that is down (Redis, say) must
            # not keep a client from talking; a Redis registry is written again later.
            await saved(
                self._manager.services.registry.add(
                    Connection(self.id, None, "anonymous", self._dialect.name)
                ),
                "connection",
            )
        await self._dispatch(self._dialect, message)

    def _decode(self, text: str | None, data: bytes | None) -> JsonObject:
        if text is None:
            size = len(data or b"")
            raise ProtocolError(
                ErrorCode.BINARY_FRAME,
                f"binary frames are not accepted ({size} bytes): send JSON text messages "
                "with audio as base64",
            )
        # The limit is in bytes, as sent (UTF-8); isascii() costs nothing on a str.
        size = len(text) if text.isascii() else len(text.encode())
        if size > self._limits.max_message_bytes:
            limit = self._limits.max_message_bytes
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"message of {size} bytes exceeds the limit of {limit} bytes",
            )
        return parse_json(text)

    async def _dispatch(self, dialect: Dialect, message: JsonObject) -> None:
        event = dialect.parse(message)
        if event is None:
            return  # understood, and nothing to do
        if isinstance(event, Start):
            await self._start(dialect, event)
            return
        session = self._session
        if session is None or session.closed:  # closed: resumed elsewhere, or cleaned up
            self._session = None
            raise SessionError(ErrorCode.NO_SESSION, "no session: start one first")
        claimed = message.get("sessionId")
        if isinstance(claimed, str) and claimed != session.session_id:
            raise SessionError(ErrorCode.UNKNOWN_SESSION, f"session '{claimed}' is not open here")
        if isinstance(event, End):
            await self._end(session, event.answer_pending)
            return
        try:
            await session.handle(event)
        except GatewayError:
            raise
        except Exception as exc:  # the engine broke: tell the client, keep the connection
            log.exception("session %s failed on input", session.session_id)
            raise EngineError(ErrorCode.ENGINE_FAILED, f"the engine failed: {exc}") from exc

    async def _start(self, dialect: Dialect, event: Start) -> None:
        if self._session is not None and self._session.closed:
            self._session = None  # resumed on another connection meanwhile
        if self._session is not None:
            if not event.reconfigure:
                raise SessionError(
                    ErrorCode.SESSION_ACTIVE,
                    f"session {self._session.session_id} is already running",
                )
            # The same session again, with the new settings and its history.
            event = replace(event, session_id=self._session.session_id)
            self._stop_clock()
        self._session = await self._manager.open(
            event, self.id, dialect, self.send, self._principal
        )
        if self._limits.max_session_seconds > 0:
            self._expiry = asyncio.create_task(
                self._expire(self._session), name=f"expiry-{self.id}"
            )
        await saved(
            self._manager.services.registry.add(
                Connection(self.id, self._session.session_id, event.user_id, dialect.name)
            ),
            "connection",
        )
        log.info("session %s started on %s", self._session.session_id, self.id)
        await self.send(dialect.ready(self._session.view))

    async def _end(self, session: LiveSession, answer_pending: bool = True) -> None:
        """End the session as ``end_conversation`` does: pending speech is answered first."""
        self._stop_clock()
        await session.finish(answer_pending)
        self._session = None
        await self._manager.close(session, SessionStatus.COMPLETED)
        log.info("session %s ended", session.session_id)
        logs.session_id.set(None)
        await session.tell_ended()

    async def _expire(self, session: LiveSession) -> None:
        await asyncio.sleep(self._limits.max_session_seconds)
        async with self._turnstile:
            if self._session is not session or session.closed:
                return  # ended meanwhile (by the client, a cleanup or a stop)
            self._expiry = None  # this very task: _end must not cancel it
            await self._error(
                ErrorCode.SESSION_TOO_LONG,
                f"a session may last {self._limits.max_session_seconds:g} s; this one ends now",
            )
            await self._end(session)

    def _stop_clock(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _error(self, code: ErrorCode, message: str) -> None:
        dialect = self._dialect or detect({})
        session_id = self._session.session_id if self._session else None
        log.info("client error on %s: %s", self.id, code)
        self._manager.services.metrics.errors.labels(code).inc()
        await self.send(dialect.error(code, message, session_id))

    async def _detach(self) -> None:
        """The socket closed: keep the session resumable, forget the connection."""
        self._stop_clock()
        if self._session is not None:
            await self._manager.close(self._session, None)
            self._session = None
        await saved(self._manager.services.registry.remove(self.id), "connection")
