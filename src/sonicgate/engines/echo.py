"""The echo engine: every chunk of the caller's audio comes straight back, and
typed text is answered with itself.

A diagnostic, never a default: it checks a client's audio path end to end
(what you hear is what the gateway received) and lets load tests measure the
gateway alone, with no model in the way.
"""

from __future__ import annotations

from sonicgate.domain import Capabilities
from sonicgate.engines.base import INPUT_SAMPLE_RATE, BaseEngineSession, EngineConfig
from sonicgate.events import (
    AudioOut,
    ResponseTextFinal,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
)


class EchoSession(BaseEngineSession):
    async def push_audio(self, pcm: bytes) -> None:
        if not self.config.text_only:
            self.emit(AudioOut(pcm, INPUT_SAMPLE_RATE))

    async def push_text(self, text: str) -> None:
        self.emit(TranscriptFinal(text, 1.0, TriggerReason.TEXT))  # the user's turn
        self.emit(ResponseTextFinal(text))
        self.emit(TurnEnded())

    async def end_turn(self, reason: TriggerReason) -> bool:
        # Every chunk was answered as it came: the turn ends with nothing heard in words.
        self.emit(TranscriptFinal("", 1.0, reason))
        self.emit(TurnEnded())
        return True

    async def push_utterance(self, pcm: bytes, reason: TriggerReason) -> None:
        await self.push_audio(pcm)
        await self.end_turn(reason)

    async def interrupt(self) -> None:
        pass  # nothing is ever pending


class EchoEngine:
    name = "echo"

    def capabilities(self) -> Capabilities:
        return Capabilities(("*",), ("echo",), ("caller",), INPUT_SAMPLE_RATE)

    async def start(self, config: EngineConfig) -> EchoSession:
        return EchoSession(config)

    async def aclose(self) -> None:
        pass
