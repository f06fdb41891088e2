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
import contextlib
import json
import logging
import time
from typing import Any

import openai
import pybase64
import websockets
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    RealtimeConversationItemAssistantMessageParam as AssistantItem,
)
from openai.types.realtime import (
    RealtimeConversationItemUserMessageParam as UserItem,
)

from sonicgate.audio.formats import StreamResampler
from sonicgate.domain import Capabilities, ErrorCode, Role
from sonicgate.engines.base import INPUT_SAMPLE_RATE, BaseEngineSession, EngineConfig, EngineError
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
                ErrorCode.UNAUTHORIZED,
                "no OpenAI API key: send openaiApiKey in initialize, or start the server "
                "with OPENAI_API_KEY set",
            )
        client = async_client(self.settings, key)
        manager = client.realtime.connect(model=self.settings.realtime_model)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                connection = await manager.__aenter__()
        except TimeoutError as exc:
            raise EngineError(
                ErrorCode.PROVIDER_UNREACHABLE, "OpenAI Realtime did not answer"
            ) from exc
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            code = ErrorCode.UNAUTHORIZED if status in (401, 403) else ErrorCode.PROVIDER_ERROR
            raise EngineError(
                code, f"OpenAI Realtime refused the connection: HTTP {status}"
            ) from exc
        except (OSError, websockets.WebSocketException, openai.OpenAIError) as exc:
            raise EngineError(*provider_error(exc)) from exc
        session = OpenAIRealtimeSession(connection, config, self.settings)
        try:
            await session.configure()
        except EngineError:
            await session.close()  # the socket dropped as it opened, say
            raise
        return session

    async def aclose(self) -> None:
        pass


class OpenAIRealtimeSession(BaseEngineSession):
    def __init__(
        self, connection: AsyncRealtimeConnection, config: EngineConfig, settings: OpenAISettings
    ) -> None:
        super().__init__(config)
        self._connection = connection
        self._settings = settings
        self._to_wire = StreamResampler(INPUT_SAMPLE_RATE, RATE)
        self._appended = False  # audio sent since the last turn ended
        self._partial = ""
        # The reply under way: its response and item, and what of it went to the client.
        # The item outlives the response while the client still plays it: the service
        # sends a reply faster than it plays.
        self._response: str | None = None
        self._reply_item: str | None = None
        self._reply_ms = 0.0
        self._reply_began: float | None = None  # monotonic, at its first audio
        self._reply_text = ""
        self._cut: set[str] = set()  # responses ended here: what the service still sends is late
        self._tokens = Usage(0, 0)
        self._reader = asyncio.create_task(self._read(), name="openai-realtime-reader")

    async def configure(self) -> None:
        config, settings = self.config, self._settings
        audio_format = {"type": "audio/pcm", "rate": RATE}
        update = self._connection.session.update(
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
        await self._send(update)
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
            await self._send(self._connection.conversation.item.create(item=item))

    # Input -----------------------------------------------------------------------

    async def push_audio(self, pcm: bytes) -> None:
        wire = self._to_wire.feed(pcm)
        if wire:
            await self._send(
                self._connection.input_audio_buffer.append(audio=pybase64.b64encode_as_string(wire))
            )
            self._appended = True

    async def push_text(self, text: str) -> None:
        await self._cut_reply()  # typed over a reply: the reply ends first, as on speech
        # A typed turn is its own transcript, as on every engine: history and UIs see it.
        self.emit(TranscriptFinal(text, 1.0, TriggerReason.TEXT))
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
        await self._cut_reply()

    async def _cut_reply(self) -> None:
        """End the reply under way now, by the contract: the service is asked to stop
        and to forget what the user never heard; what it still sends of it is dropped.
        A reply sent whole but still playing is stopped by an ``Interrupted`` alone."""
        response, self._response = self._response, None
        if response is None:
            if self._heard_ms() < self._reply_ms:
                await self._truncate()
                self.emit(Interrupted())
            return
        self._cut.add(response)
        # This response by name: audio sent in a burst may have started the next by now.
        await self._send(self._connection.response.cancel(response_id=response))
        await self._truncate()
        self.emit(Interrupted())
        self.emit(ResponseTextFinal(self._reply_text))
        self.emit(TurnEnded(interrupted=True))

    async def _send(self, sending: Any) -> None:
        try:
            await sending
        except (OSError, websockets.WebSocketException) as exc:
            raise EngineError(
                ErrorCode.PROVIDER_UNREACHABLE, f"the OpenAI Realtime connection broke: {exc}"
            ) from exc

    async def _truncate(self) -> None:
        """The service forgets the part of the reply the user never heard."""
        heard = self._heard_ms()
        item, self._reply_item = self._reply_item, None
        if item is not None:
            await self._send(
                self._connection.conversation.item.truncate(
                    item_id=item, content_index=0, audio_end_ms=int(heard)
                )
            )

    def _heard_ms(self) -> float:
        """How much of the reply's audio the client has played (at real time)."""
        if self._reply_item is None or self._reply_began is None:
            return self._reply_ms
        return min(self._reply_ms, (time.monotonic() - self._reply_began) * 1000)

    # Output ----------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                event = json.loads(await self._connection.recv_bytes())
                if _response_of(event) in self._cut:
                    self._late(event)
                    continue
                for mapped in await self._map(event):
                    self.emit(mapped)
        except asyncio.CancelledError:
            raise
        except (websockets.ConnectionClosed, OSError) as exc:
            log.warning("OpenAI Realtime connection lost: %s", exc)
            message = "the OpenAI Realtime connection was lost"
            self.emit(Error(ErrorCode.PROVIDER_UNREACHABLE, message, fatal=True))
            await super().close()

    def _late(self, event: dict[str, Any]) -> None:
        """An event of a reply already ended here: only its token count still counts."""
        if event.get("type") == "response.done":
            response = event.get("response", {})
            self._cut.discard(response.get("id"))
            self.emit(self._count(response))

    async def _map(self, event: dict[str, Any]) -> list[EngineEvent]:
        kind = event.get("type", "")
        match kind:
            case "input_audio_buffer.speech_started":
                self._partial = ""
                # Server VAD stops the reply itself; it is cut here all the same (a reply
                # made by response.create may not be), what the user never heard forgotten.
                self.emit(SpeechStarted())
                await self._cut_reply()
            case "conversation.item.input_audio_transcription.delta":
                self._partial += event.get("delta", "")
                return [TranscriptPartial(self._partial, 0.0)]
            case "conversation.item.input_audio_transcription.completed":
                self._appended = False
                return [
                    TranscriptFinal(event.get("transcript", "").strip(), 1.0, TriggerReason.SILENCE)
                ]
            case "response.created":
                self._response = event.get("response", {}).get("id")
                self._reply_text = ""
            case "response.output_item.added":
                self._reply_item, self._reply_ms = event["item"]["id"], 0.0
                self._reply_began = None
            case "response.output_audio_transcript.delta" | "response.output_text.delta":
                self._reply_text += event.get("delta", "")
                return [ResponseTextDelta(event.get("delta", ""))]
            case "response.output_audio.delta":
                pcm = pybase64.b64decode(event.get("delta", ""))
                if self._reply_began is None:
                    self._reply_began = time.monotonic()
                self._reply_ms += len(pcm) / 2 / RATE * 1000
                return [AudioOut(pcm, RATE)]
            case "response.output_audio_transcript.done":
                return [ResponseTextFinal(event.get("transcript", ""))]
            case "response.output_text.done":
                return [ResponseTextFinal(event.get("text", ""))]
            case "response.done":
                response = event.get("response", {})
                cancelled = response.get("status") == "cancelled"
                self._response = None  # its item stays while it plays: see _cut_reply
                return [self._count(response), TurnEnded(interrupted=cancelled)]
            case "error":
                error = event.get("error", {})
                if error.get("code") == "response_cancel_not_active":
                    return []  # our cancel came after the service's own: nothing to tell
                kind = error.get("code") or error.get("type") or "error"
                text = error.get("message", "OpenAI Realtime error")
                return [Error(ErrorCode.PROVIDER_ERROR, f"OpenAI Realtime: {kind}: {text}")]
        return []

    def _count(self, response: dict[str, Any]) -> Usage:
        usage = response.get("usage") or {}
        self._tokens = Usage(  # Usage carries running totals; OpenAI counts per reply
            self._tokens.input_tokens + usage.get("input_tokens", 0),
            self._tokens.output_tokens + usage.get("output_tokens", 0),
        )
        return self._tokens

    async def close(self) -> None:
        await super().close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        with contextlib.suppress(Exception):
            await self._connection.close()


def _response_of(event: dict[str, Any]) -> str | None:
    """The response an output event belongs to, if any."""
    response_id = event.get("response_id") or event.get("response", {}).get("id")
    return response_id if isinstance(response_id, str) else None
