"""One engine backed by another: when the first fails, the conversation goes on.

``FallbackEngine`` serves each session from its primary engine. When that
session reports a fatal error (the service is unreachable, refuses the
credentials, throttles, or the stream breaks mid-reply), the same
conversation moves to a session of the backup engine, on the session's own
history; a turn cut by the failure is answered again there. The client
gets one ``engine_fallback`` notice instead of a dead session.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from sonicgate.domain import Capabilities, ErrorCode
from sonicgate.engines.base import (
    Engine,
    EngineConfig,
    EngineError,
    EngineSession,
    supports_language,
)
from sonicgate.events import (
    EngineEvent,
    Error,
    TranscriptFinal,
    TriggerReason,
)

log = logging.getLogger(__name__)


class FallbackEngine:
    def __init__(self, primary: Engine, backup: Engine) -> None:
        self.primary = primary
        self.backup = backup
        self.name = primary.name

    def capabilities(self) -> Capabilities:
        return self.primary.capabilities()

    async def start(self, config: EngineConfig) -> FallbackSession:
        session = FallbackSession(self, config)
        try:
            session.current = await self.primary.start(config)
        except EngineError as exc:
            if exc.code == ErrorCode.UNKNOWN_VOICE or not session.can_switch():
                raise  # the client asked for something the backup cannot do either
            await session.switch(exc.message)
        return session

    async def aclose(self) -> None:
        await self.primary.aclose()


class FallbackSession:
    def __init__(self, engine: FallbackEngine, config: EngineConfig) -> None:
        self._engine = engine
        self._config = config
        self._notices: list[EngineEvent] = []  # to tell the client, first thing
        self._asked_again: str | None = None  # the backup's echo of it is dropped
        self.current: EngineSession | None = None
        self.on_backup = False
        self._closed = False

    def _session(self) -> EngineSession:
        if self.current is None:
            raise EngineError(ErrorCode.ENGINE_UNAVAILABLE, f"{self._engine.name} is not available")
        return self.current

    async def _call[T](self, action: Callable[[EngineSession], Awaitable[T]]) -> T:
        """Input to the current engine; one that has failed hands over at once, so
        input arriving before its failure event is read is not lost."""
        try:
            return await action(self._session())
        except EngineError as exc:
            if not self.can_switch():
                raise
            await self.switch(exc.message)
            return await action(self._session())

    async def push_audio(self, pcm: bytes) -> None:
        await self._call(lambda session: session.push_audio(pcm))

    async def push_text(self, text: str) -> None:
        await self._call(lambda session: session.push_text(text))

    async def end_turn(self, reason: TriggerReason) -> bool:
        return await self._call(lambda session: session.end_turn(reason))

    async def push_utterance(self, pcm: bytes, reason: TriggerReason) -> None:
        await self._call(lambda session: session.push_utterance(pcm, reason))

    async def interrupt(self) -> None:
        await self._call(lambda session: session.interrupt())

    async def close(self) -> None:
        self._closed = True  # a switch under way closes the backup it is starting
        await self._session().close()

    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            session = self._session()
            for notice in self._notices:
                yield notice
            self._notices.clear()
            async for event in session.events():
                if session is not self.current:
                    # The input side moved to the backup: what this one said before
                    # then still goes out (a turn it heard is asked again), but not
                    # its failure, which the notice tells.
                    if not (isinstance(event, Error) and event.fatal):
                        yield event
                    continue
                if isinstance(event, Error) and event.fatal and self.can_switch():
                    await self.switch(event.message)
                    break
                if isinstance(event, TranscriptFinal) and event.text == self._asked_again:
                    self._asked_again = None  # the client saw this turn already
                    continue
                yield event
            if session is self.current:
                return  # the session was closed

    def can_switch(self) -> bool:
        # Never answer in another language than asked: then the failure stands.
        backup = self._engine.backup.capabilities()
        return not self.on_backup and supports_language(backup, self._config.language)

    async def switch(self, reason: str) -> None:
        """Move the conversation to the backup engine, the cut turn with it."""
        if self.on_backup:
            return
        engine = self._engine
        log.warning("%s failed (%s): continuing on %s", engine.name, reason, engine.backup.name)
        if self.current is not None:
            await self.current.close()
        # The cut turn is asked again: out of the history until the backup hears it.
        # The history, not the events read so far: the reader may be behind.
        unanswered = self._config.history.unanswered()
        self._config.history.drop_unanswered()
        # The history goes on in the same list; the backup's own voice, not the primary's.
        config = replace(self._config, voice=None)
        self.current = await engine.backup.start(config)
        self.on_backup = True
        if self._closed:  # closed while the backup started
            await self.current.close()
            return
        self._notices.append(
            Error(
                ErrorCode.ENGINE_FALLBACK,
                f"{engine.name} failed ({reason}); the conversation continues on "
                f"{engine.backup.name}",
            )
        )
        if unanswered:
            self._asked_again = unanswered
            await self.current.push_text(unanswered)
