"""A scripted engine for protocol tests: real event flow, canned words.

It follows the engine interface exactly: partial transcripts while audio
arrives, a final transcript when the turn ends, streamed reply text and a
24 kHz tone as reply audio, and a barge-in when audio arrives mid-reply.
"""

from __future__ import annotations

import asyncio
import math
import struct

from sonicgate.domain import Capabilities, ErrorCode
from sonicgate.engines.base import BaseEngineSession, EngineConfig, EngineError
from sonicgate.events import (
    AudioOut,
    Interrupted,
    ResponseTextDelta,
    ResponseTextFinal,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TriggerReason,
    TurnEnded,
)

RATE = 24_000
PARTIAL_EVERY = 16_000 * 2  # bytes of 16 kHz pcm16: one second


def tone(seconds: float, rate: int = RATE) -> bytes:
    n = int(seconds * rate)
    return struct.pack(
        f"<{n}h", *(int(8000 * math.sin(i * 440 * 2 * math.pi / rate)) for i in range(n))
    )


class ScriptedSession(BaseEngineSession):
    def __init__(self, engine: ScriptedEngine, config: EngineConfig) -> None:
        super().__init__(config)
        self.engine = engine
        self.heard = 0
        self.reply: asyncio.Task[None] | None = None

    async def push_audio(self, pcm: bytes) -> None:
        if self.engine.fail_on_audio:
            raise RuntimeError("scripted engine failure")
        self._barge_in()
        if self.heard == 0:
            self.emit(SpeechStarted())
        before = self.heard
        self.heard += len(pcm)
        if self.heard // PARTIAL_EVERY > before // PARTIAL_EVERY:
            self.emit(TranscriptPartial(self.engine.transcript.split()[0], 0.5))

    def _barge_in(self) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
            self.emit(Interrupted())
            self.emit(ResponseTextFinal(self.engine.reply.split()[0]))
            self.emit(TurnEnded(interrupted=True))

    async def push_utterance(self, pcm: bytes, reason: TriggerReason) -> None:
        self.heard += len(pcm)
        await self.end_turn(reason)

    async def end_turn(self, reason: TriggerReason) -> bool:
        if reason is TriggerReason.SESSION_END and not self.heard:
            return False
        seconds = self.heard / 32_000
        self.heard = 0
        self.emit(TranscriptFinal(self.engine.transcript, 0.9, reason, seconds))
        self.reply = asyncio.create_task(self._respond())
        return True

    async def push_text(self, text: str) -> None:
        self.engine.texts.append(text)
        self._barge_in()
        self.emit(TranscriptFinal(text, 1.0, TriggerReason.TEXT))
        self.reply = asyncio.create_task(self._respond())

    async def _respond(self) -> None:
        words = self.engine.reply.split()
        for word in words:
            self.emit(ResponseTextDelta(word + " "))
            await asyncio.sleep(self.engine.word_delay)
        if not self.config.text_only:
            self.emit(AudioOut(tone(0.2), RATE))
            self.emit(AudioOut(tone(0.2), RATE))
        self.emit(ResponseTextFinal(self.engine.reply))
        self.emit(TurnEnded())

    async def interrupt(self) -> None:
        self._barge_in()

    async def close(self) -> None:
        if self.reply is not None:
            self.reply.cancel()
        await super().close()


class ScriptedEngine:
    name = "scripted"

    def __init__(self) -> None:
        self.transcript = "hello there gateway"
        self.reply = "Hi! How can I help you today?"
        self.word_delay = 0.0
        self.fail_on_audio = False
        self.configs: list[EngineConfig] = []
        self.texts: list[str] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(("en-US", "en-GB"), ("scripted-1",), ("tone",), RATE)

    async def start(self, config: EngineConfig) -> ScriptedSession:
        if config.voice == "missing":
            raise EngineError(ErrorCode.UNKNOWN_VOICE, "voice 'missing' is not installed")
        self.configs.append(config)
        return ScriptedSession(self, config)

    async def aclose(self) -> None:
        pass
