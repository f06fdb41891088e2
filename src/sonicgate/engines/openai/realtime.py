"""The OpenAI Realtime engine: one ``client.realtime.connect`` WebSocket per
conversation. The service does the turn-taking (server VAD), transcription,
reply and voice; this adapter maps its events to sonicgate's and resamples at
the edges (16 kHz in here, 24 kHz on the wire).

Barge-in: when the service hears the user start speaking during a reply
(``input_audio_buffer.speech_started``) it stops the reply; the client is told
at once, and the reply's item is truncated to the audio actually sent, so
the service's memory of the conversation matches what the user heard.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import openai
import websockets
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    RealtimeConversationItemAssistantMessageParam as AssistantItem,
)
from openai.types.realtime import (
    RealtimeConversationItemUserMessageParam as UserItem,
)

from sonicgate.audio.formats import StreamResampler
from sonicgate.engines.base import INPUT_SAMPLE_RATE, Capabilities, EngineConfig, EngineError, Role
from sonicgate.engines.openai.cascade import LANGUAGES
from sonicgate.engines.openai.client import (
    OpenAISettings,
    async_client,
    provider_error,
    server_key,
)
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Error,
    Interrupted,
    ResponseTextDelta,
    ResponseTextFinal,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TriggerReason,
    TurnEnded,
    Usage,
)

log = logging.getLogger(__name__)

RATE = 24_000
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
CONNECT_TIMEOUT = 15.0


class OpenAIRealtimeEngine:
    name = "openai-realtime"

    def __init__(self, settings: OpenAISettings) -> None:
        self.settings = settings

    def capabilities(self) -> Capabilities:
        models = (self.settings.realtime_model,)
        return Capabilities(LANGUAGES, models, VOICES, RATE)

    async def start(self, config: EngineConfig) -> OpenAIRealtimeSession:
        key = config.credentials.get("openai_api_key") or server_key(self.settings)
        if key is None:
            raise EngineError(
                "unauthorized",
                "no OpenAI API key: send openaiApiKey in initialize, or start the server "
                "with OPENAI_API_KEY set",
            )
        client = async_client(self.settings, key)
        manager = client.realtime.connect(model=self.settings.realtime_model)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                connection = await manager.__aenter__()
        except TimeoutError as exc:
            raise EngineError("provider_unreachable", "OpenAI Realtime did not answer") from exc
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            code = "unauthorized" if status in (401, 403) else "provider_error"
            raise EngineError(
                code, f"OpenAI Realtime refused the connection: HTTP {status}"
            ) from exc
        except (OSError, websockets.WebSocketException, openai.OpenAIError) as exc:
            raise EngineError(*provider_error(exc)) from exc
        session = OpenAIRealtimeSession(connection, config, self.settings)
        await session.configure()
        return session

    async def aclose(self) -> None:
        pass


class OpenAIRealtimeSession:
    def __init__(
        self, connection: AsyncRealtimeConnection, config: EngineConfig, settings: OpenAISettings
    ) -> None:
        self._connection = connection
        self._config = config
        self._settings = settings
        self._out: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        self._to_wire = StreamResampler(INPUT_SAMPLE_RATE, RATE)
        self._appended = False  # audio sent since the last turn ended
        self._partial = ""
        # The reply under way: its item, and how much of its audio went to the client.
        self._reply_item: str | None = None
        self._reply_ms = 0.0
        self._tokens = Usage(0, 0)
        self._reader = asyncio.create_task(self._read(), name="openai-realtime-reader")

    async def configure(self) -> None:
        config, settings = self._config, self._settings
        audio_format = {"type": "audio/pcm", "rate": RATE}
        await self._connection.session.update(
            session={
                "type": "realtime",
                "instructions": config.system_prompt,
                "output_modalities": ["text"] if config.text_only else ["audio"],
                "audio": {
                    "input": {
                        "format": audio_format,  # type: ignore[typeddict-item]
                        "turn_detection": {"type": "server_vad"},
                        "transcription": {"model": settings.transcription_model},
                    },
                    "output": {
                        "format": audio_format,  # type: ignore[typeddict-item]
                        "voice": config.voice or settings.voice,
                    },
                },
            }
        )
        for message in config.history:  # the conversation so far, as items
            item: UserItem | AssistantItem
            if message.role is Role.USER:
                item = {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": message.text}],
                }
            else:
                item = {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": message.text}],
                }
            await self._connection.conversation.item.create(item=item)

    # Input -----------------------------------------------------------------------

    async def push_audio(self, pcm: bytes) -> None:
        wire = self._to_wire.feed(pcm)
        if wire:
            await self._send(
                self._connection.input_audio_buffer.append(
                    audio=base64.b64encode(wire).decode("ascii")
                )
            )
            self._appended = True

    async def push_text(self, text: str) -> None:
        # A typed turn is its own transcript, as on every engine: history and UIs see it.
        await self._out.put(TranscriptFinal(text, 1.0, TriggerReason.TEXT))
        await self._send(
            self._connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                }
            )
        )
        await self._send(self._connection.response.create())

    async def end_turn(self, reason: TriggerReason) -> bool:
        if not self._appended:
            return False
        self._appended = False
        await self._send(self._connection.input_audio_buffer.commit())
        await self._send(self._connection.response.create())
        return True

    async def push_utterance(self, pcm: bytes, reason: TriggerReason) -> None:
        await self.push_audio(pcm)
        await self.end_turn(reason)

    async def interrupt(self) -> None:
        if self._reply_item is not None:
            await self._send(self._connection.response.cancel())
            await self._truncate()

    async def _send(self, sending: Any) -> None:
        try:
            await sending
        except (OSError, websockets.WebSocketException) as exc:
            raise EngineError(
                "provider_unreachable", f"the OpenAI Realtime connection broke: {exc}"
            ) from exc

    async def _truncate(self) -> None:
        """The service forgets the part of the reply the user never heard."""
        item, self._reply_item = self._reply_item, None
        if item is not None:
            await self._send(
                self._connection.conversation.item.truncate(
                    item_id=item, content_index=0, audio_end_ms=int(self._reply_ms)
                )
            )

    # Output ----------------------------------------------------------------------

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (event := await self._out.get()) is not None:
            yield event

    async def _read(self) -> None:
        try:
            while True:
                event = json.loads(await self._connection.recv_bytes())
                for mapped in await self._map(event):
                    await self._out.put(mapped)
        except asyncio.CancelledError:
            raise
        except (websockets.ConnectionClosed, OSError) as exc:
            log.warning("OpenAI Realtime connection lost: %s", exc)
            message = "the OpenAI Realtime connection was lost"
            await self._out.put(Error("provider_unreachable", message, fatal=True))
            await self._out.put(TurnEnded())
            await self._out.put(None)

    async def _map(self, event: dict[str, Any]) -> list[EngineEvent]:
        kind = event.get("type", "")
        match kind:
            case "input_audio_buffer.speech_started":
                self._partial = ""
                if self._reply_item is None:
                    return [SpeechStarted()]
                # Server VAD stops the reply itself; cancel anyway (a reply created by
                # response.create may not be), then forget what the user never heard.
                await self._send(self._connection.response.cancel())
                await self._truncate()
                return [SpeechStarted(), Interrupted()]
            case "conversation.item.input_audio_transcription.delta":
                self._partial += event.get("delta", "")
                return [TranscriptPartial(self._partial, 0.0)]
            case "conversation.item.input_audio_transcription.completed":
                self._appended = False
                return [
                    TranscriptFinal(event.get("transcript", "").strip(), 1.0, TriggerReason.SILENCE)
                ]
            case "response.output_item.added":
                self._reply_item, self._reply_ms = event["item"]["id"], 0.0
            case "response.output_audio_transcript.delta" | "response.output_text.delta":
                return [ResponseTextDelta(event.get("delta", ""))]
            case "response.output_audio.delta":
                pcm = base64.b64decode(event.get("delta", ""))
                self._reply_ms += len(pcm) / 2 / RATE * 1000
                return [AudioOut(pcm, RATE)]
            case "response.output_audio_transcript.done":
                return [ResponseTextFinal(event.get("transcript", ""))]
            case "response.output_text.done":
                return [ResponseTextFinal(event.get("text", ""))]
            case "response.done":
                response = event.get("response", {})
                cancelled = response.get("status") == "cancelled"
                self._reply_item = None
                usage = response.get("usage") or {}
                self._tokens = Usage(  # Usage carries running totals; OpenAI counts per reply
                    self._tokens.input_tokens + usage.get("input_tokens", 0),
                    self._tokens.output_tokens + usage.get("output_tokens", 0),
                )
                return [self._tokens, TurnEnded(interrupted=cancelled)]
            case "error":
                error = event.get("error", {})
                code = error.get("code") or error.get("type") or "provider_error"
                if code == "response_cancel_not_active":
                    return []  # our cancel came after the service's own: nothing to tell
                return [Error(str(code), str(error.get("message", "OpenAI Realtime error")))]
        return []

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        with contextlib.suppress(Exception):
            await self._connection.close()
        await self._out.put(None)
