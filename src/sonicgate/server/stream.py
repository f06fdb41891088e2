"""``/api/nova-sonic/stream``: one client connection, in whichever seed dialect it speaks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from sonicgate import logs
from sonicgate.events import End, Start
from sonicgate.protocol import Dialect, ProtocolError, detect
from sonicgate.protocol.base import JsonObject
from sonicgate.server.access import RateLimiter, client_of
from sonicgate.sessions.manager import SessionManager
from sonicgate.sessions.session import LiveSession
from sonicgate.store.base import Connection, SessionStatus, StoreUnavailable, saved

log = logging.getLogger(__name__)

# Replies queued for a client that reads slowly; beyond this the client is cut off.
OUTBOX_LIMIT = 2048
SLOW_CLIENT_CODE = 1008  # policy violation: it did not read what it asked for


class ClientConnection:
    def __init__(
        self,
        websocket: WebSocket,
        manager: SessionManager,
        max_bytes: int,
        messages: RateLimiter,
        max_session_seconds: float,
        dialect: Dialect | None = None,
        opening: Start | None = None,
    ) -> None:
        """``dialect``: fixed by the route (else the first message tells); ``opening``:
        a session to start as soon as the socket opens (the Realtime API's way)."""
        self.id = manager.new_connection_id()
        self._ws = websocket
        self._manager = manager
        self._max_bytes = max_bytes
        self._client = client_of(websocket.scope)
        self._messages = messages  # shared by all of a client's connections
        self._max_session_seconds = max_session_seconds  # 0: no limit
        self._dialect = dialect
        self._opening = opening
        self._session: LiveSession | None = None
        self._expiry: asyncio.Task[None] | None = None  # ends a session at its time limit
        # One message at a time: the session-length timer ends sessions between messages.
        self._turnstile = asyncio.Lock()
        self._outbox: asyncio.Queue[JsonObject] = asyncio.Queue(OUTBOX_LIMIT)
        self._cut_off = False
        self._closer: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        logs.connection_id.set(self.id)  # this task and those it starts log under it
        await self._ws.accept()
        writer = self._writer = asyncio.create_task(self._write(), name=f"writer-{self.id}")
        connections = self._manager.services.metrics.connections
        connections.inc()
        try:
            if self._dialect is not None and self._opening is not None:
                await self._guarded(self._start(self._dialect, self._opening))
            while True:
                frame = await self._ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                await self._on_frame(frame.get("text"), frame.get("bytes"))
        except WebSocketDisconnect:
            pass
        finally:
            connections.dec()
            async with self._turnstile:
                await self._detach()
            writer.cancel()  # the socket is gone: nothing left to flush
            with contextlib.suppress(BaseException):
                await writer

    async def send(self, message: JsonObject) -> None:
        """Queue a message; never waits, so a client that stops reading cannot stall
        its engine. Past OUTBOX_LIMIT unread messages the client is cut off."""
        if self._cut_off:
            return
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self._cut_off = True
            log.warning("%s: %d messages unread, closing the connection", self.id, OUTBOX_LIMIT)
            self._manager.services.metrics.errors.labels("client_too_slow").inc()
            self._closer = asyncio.create_task(self._cut_off_now())

    async def _cut_off_now(self) -> None:
        # The writer is stuck on the full socket: stop it, so the close frame goes first.
        if self._writer is not None:
            self._writer.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close(SLOW_CLIENT_CODE, "client too slow")

    async def _write(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self._ws.send_text(json.dumps(message, separators=(",", ":")))
            except (WebSocketDisconnect, RuntimeError):
                return  # the client is gone; the reader loop notices too

    async def _on_frame(self, text: str | None, data: bytes | None) -> None:
        await self._guarded(self._handle(text, data))

    async def _guarded(self, step: Awaitable[None]) -> None:
        """One step at a time; a protocol error goes to the client, in its dialect."""
        async with self._turnstile:
            try:
                await step
            except ProtocolError as exc:
                await self._error(exc.code, exc.message)
            except StoreUnavailable as exc:  # a session cannot start or resume now
                log.warning("%s: %s", self.id, exc)
                await self._error("store_unavailable", f"sessions are unavailable: {exc}")

    async def _handle(self, text: str | None, data: bytes | None) -> None:
        if self._messages.take(self._client) > 0:
            raise ProtocolError(
                "rate_limited",
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
                "binary_frame",
                f"binary frames are not accepted ({size} bytes): send JSON text messages "
                "with audio as base64",
            )
        if len(text) > self._max_bytes:
            raise ProtocolError(
                "frame_too_large",
                f"message of {len(text)} bytes exceeds the limit of {self._max_bytes} bytes",
            )
        try:
            message: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError("malformed_json", f"message is not valid JSON: {exc.msg}") from exc
        if not isinstance(message, dict):
            raise ProtocolError("invalid_message", "a message must be a JSON object")
        return message

    async def _dispatch(self, dialect: Dialect, message: JsonObject) -> None:
        event = dialect.parse(message)
        if event is None:
            return  # understood, and nothing to do
        if isinstance(event, Start):
            await self._start(dialect, event)
            return
        session = self._session
        if session is None:
            raise ProtocolError("no_session", "no session: start one first")
        claimed = message.get("sessionId")
        if isinstance(claimed, str) and claimed != session.session_id:
            raise ProtocolError("unknown_session", f"session '{claimed}' is not open here")
        if isinstance(event, End):
            await self._end(session)
            return
        try:
            await session.handle(event)
        except ProtocolError:
            raise
        except Exception as exc:  # the engine broke: tell the client, keep the connection
            log.exception("session %s failed on input", session.session_id)
            raise ProtocolError("engine_error", f"the engine failed: {exc}") from exc

    async def _start(self, dialect: Dialect, event: Start) -> None:
        if self._session is not None:
            if not event.reconfigure:
                raise ProtocolError(
                    "session_active", f"session {self._session.session_id} is already running"
                )
            # The same session again, with the new settings and its history.
            event = replace(event, session_id=self._session.session_id)
            self._stop_clock()
        self._session = await self._manager.open(event, self.id, dialect, self.send, self._client)
        if self._max_session_seconds > 0:
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

    async def _end(self, session: LiveSession) -> None:
        """End the session as ``end_conversation`` does: pending speech is answered first."""
        self._stop_clock()
        await session.finish()
        self._session = None
        await self._manager.close(session, SessionStatus.COMPLETED)
        log.info("session %s ended", session.session_id)
        logs.session_id.set(None)
        await session.tell_ended()

    async def _expire(self, session: LiveSession) -> None:
        await asyncio.sleep(self._max_session_seconds)
        async with self._turnstile:
            if self._session is not session or session.closed:
                return  # ended meanwhile (by the client, a cleanup or a stop)
            self._expiry = None  # this very task: _end must not cancel it
            await self._error(
                "session_too_long",
                f"a session may last {self._max_session_seconds:g} s; this one ends now",
            )
            await self._end(session)

    def _stop_clock(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _error(self, code: str, message: str) -> None:
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
