"""The echo engine: every chunk of the caller's audio comes straight back, and
typed text is answered with itself.

A diagnostic, never a default: it checks a client's audio path end to end
(what you hear is what the gateway received) and lets load tests measure the
gateway alone, with no model in the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sonicgate.engines.base import INPUT_SAMPLE_RATE, Capabilities, EngineConfig
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    ResponseTextFinal,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
)


class EchoSession:
    def __init__(self, config: EngineConfig) -> None:
        self._text_only = config.text_only
        self._out: asyncio.Queue[EngineEvent | None] = asyncio.Queue()

    async def push_audio(self, pcm: bytes) -> None:
        if not self._text_only:
            await self._out.put(AudioOut(pcm, INPUT_SAMPLE_RATE))

    async def push_text(self, text: str) -> None:
        await self._out.put(TranscriptFinal(text, 1.0, TriggerReason.TEXT))  # the user's turn
        await self._out.put(ResponseTextFinal(text))
        await self._out.put(TurnEnded())

    async def end_turn(self, reason: TriggerReason) -> bool:
        # Every chunk was answered as it came: the turn ends with nothing heard in words.
        await self._out.put(TranscriptFinal("", 1.0, reason))
        await self._out.put(TurnEnded())
        return True

    async def push_utterance(self, pcm: bytes, reason: TriggerReason) -> None:
        await self.push_audio(pcm)
        await self.end_turn(reason)

    async def interrupt(self) -> None:
        pass  # nothing is ever pending

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (event := await self._out.get()) is not None:
            yield event

    async def close(self) -> None:
        await self._out.put(None)


class EchoEngine:
    name = "echo"

    def capabilities(self) -> Capabilities:
        return Capabilities(("*",), ("echo",), ("caller",), INPUT_SAMPLE_RATE)

    async def start(self, config: EngineConfig) -> EchoSession:
        return EchoSession(config)

    async def aclose(self) -> None:
        pass
