"""An emulator of the OpenAI API for the real ``openai`` SDK: the HTTP endpoints
the cascade uses, and the Realtime WebSocket.

``/v1/audio/transcriptions`` (multipart WAV in, ``verbose_json`` out),
``/v1/chat/completions`` (server-sent events, word by word) and
``/v1/audio/speech`` (24 kHz pcm16 out) check what the service checks
(bearer key, model, audio format) and answer with scripted words. Failures
are scripted per path: an HTTP status with OpenAI's error body, or a
dropped connection in the middle of a streamed reply.

``/v1/realtime`` speaks the GA Realtime protocol: session.created/updated,
server VAD by loudness on the 24 kHz input (speech_started, then 500 ms of
quiet ends the turn), the scripted transcript, a reply streamed as transcript
and audio deltas, barge-in (speech during a reply cancels it), cancel (of the
reply under way, or only of the one named) and truncate, and a scripted drop
of the socket mid-reply.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import math
import struct
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.conftest import free_port
from tests.emulators.http import Served

SPEECH_RATE = 24_000
SPEECH_RMS = 0.01  # quieter input is silence: an empty transcript


def tone(seconds: float) -> bytes:
    n = int(seconds * SPEECH_RATE)
    return struct.pack(f"<{n}h", *(int(6000 * math.sin(i / 8)) for i in range(n)))


class DroppedConnection(Exception):
    """Raised inside a streamed body: uvicorn cuts the connection mid-response."""


@dataclass
class OpenAIEmulator(Served):
    api_key: str = "test-key"
    transcript: str = "What is the capital of France?"
    reply: str = "The capital of France is Paris. It is a lovely city on the Seine."
    word_delay: float = 0.02
    # Path suffix ("transcriptions", "completions", "speech") -> HTTP status to answer.
    fail: dict[str, int] = field(default_factory=dict)
    drop_reply_after_words: int | None = None
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    realtime_events: list[dict[str, Any]] = field(default_factory=list)
    drop_realtime_after_deltas: int | None = None
    keys_seen: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
                Route("/v1/audio/speech", self.speech, methods=["POST"]),
                WebSocketRoute("/v1/realtime", self.realtime),
            ]
        )

    def _refusal(self, request: Request, path: str) -> Response | None:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.keys_seen.append(key)
        status = self.fail.get(path) or (401 if key != self.api_key else None)
        if status is None:
            return None
        kinds = {401: "invalid_request_error", 429: "rate_limit_exceeded"}
        kind = kinds.get(status, "server_error")
        body = {"error": {"message": f"scripted {status}", "type": kind, "code": None}}
        return JSONResponse(body, status_code=status)

    async def transcriptions(self, request: Request) -> Response:
        if (refused := self._refusal(request, "transcriptions")) is not None:
            return refused
        form = await request.form()
        upload: Any = form["file"]
        with wave.open(io.BytesIO(await upload.read())) as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16_000, 1, 2)
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        self.requests.append(("transcriptions", fields))
        loud = float(np.sqrt(np.mean(np.square(samples / 32768)))) > SPEECH_RMS
        text = self.transcript if loud else ""
        seconds = samples.size / 16_000
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": seconds,
            "text": text,
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": -0.15,
            "compression_ratio": 1.1,
            "no_speech_prob": 0.01,
        }
        return JSONResponse(
            {
                "task": "transcribe",
                "language": fields.get("language", "en"),
                "duration": seconds,
                "text": text,
                "segments": [segment] if text else [],
            }
        )

    async def completions(self, request: Request) -> Response:
        if (refused := self._refusal(request, "completions")) is not None:
            return refused
        body = await request.json()
        self.requests.append(("completions", body))
        assert body["stream"] is True and body["messages"][0]["role"] == "system"

        async def events() -> AsyncIterator[bytes]:
            for index, word in enumerate(self.reply.split(" ")):
                if self.drop_reply_after_words == index:
                    raise DroppedConnection
                delta = {"content": ("" if index == 0 else " ") + word}
                yield _chunk(body["model"], delta, None)
                await asyncio.sleep(self.word_delay)
            yield _chunk(body["model"], {}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def speech(self, request: Request) -> Response:
        if (refused := self._refusal(request, "speech")) is not None:
            return refused
        body = await request.json()
        self.requests.append(("speech", body))
        assert body["response_format"] == "pcm"
        return Response(tone(0.05 * len(body["input"])), media_type="audio/pcm")

    async def realtime(self, websocket: WebSocket) -> None:
        key = websocket.headers.get("authorization", "").removeprefix("Bearer ")
        self.keys_seen.append(key)
        if key != self.api_key:
            await websocket.close(code=1008)  # before the handshake completes: HTTP 403
            return
        await websocket.accept()
        await _RealtimeSession(self, websocket).run()


class _RealtimeSession:
    def __init__(self, emulator: OpenAIEmulator, websocket: WebSocket) -> None:
        self.emulator = emulator
        self.ws = websocket
        self.text_only = False
        self.speaking = False
        self.quiet_ms = 0.0
        self.heard = False  # speech in the input buffer since the last turn
        self.reply: asyncio.Task[None] | None = None
        self.reply_id = ""
        self.ids = itertools.count(1)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    async def emit(self, kind: str, **fields: Any) -> None:
        await self.ws.send_text(
            json.dumps({"type": kind, "event_id": self.new_id("evt"), **fields})
        )

    async def run(self) -> None:
        await self.emit("session.created", session={"type": "realtime", "id": self.new_id("sess")})
        try:
            while True:
                event = json.loads(await self.ws.receive_text())
                self.emulator.realtime_events.append(event)
                await self.on_event(event)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self.reply is not None:
                self.reply.cancel()

    async def on_event(self, event: dict[str, Any]) -> None:
        match event["type"]:
            case "session.update":
                modalities = event["session"].get("output_modalities", ["audio"])
                self.text_only = "audio" not in modalities
                await self.emit("session.updated", session=event["session"])
            case "input_audio_buffer.append":
                await self.on_audio(base64.b64decode(event["audio"]))
            case "input_audio_buffer.commit":
                await self.end_of_speech()
            case "conversation.item.create":
                await self.emit("conversation.item.added", item=event["item"])
            case "response.create":
                self.start_reply()
            case "response.cancel":
                named = event.get("response_id", self.reply_id)
                if self.reply is None or self.reply.done() or named != self.reply_id:
                    error = {"type": "invalid_request_error", "code": "response_cancel_not_active"}
                    await self.emit("error", error={**error, "message": "no active response"})
                else:
                    await self.cancel_reply()
            case "conversation.item.truncate":
                await self.emit("conversation.item.truncated", item_id=event["item_id"])

    async def on_audio(self, pcm: bytes) -> None:
        samples = np.frombuffer(pcm, dtype="<i2") / 32768
        loud = samples.size > 0 and float(np.sqrt(np.mean(np.square(samples)))) > SPEECH_RMS
        if loud:
            self.quiet_ms = 0.0
            self.heard = True
            if not self.speaking:
                self.speaking = True
                await self.emit("input_audio_buffer.speech_started", item_id=self.new_id("item"))
                await self.cancel_reply()  # the user talks over the reply: it stops
        elif self.speaking:
            self.quiet_ms += samples.size / 24
            if self.quiet_ms >= 500:
                self.speaking = False
                await self.end_of_speech()
                self.start_reply()

    async def end_of_speech(self) -> None:
        if not self.heard:
            return
        self.heard = False
        item = self.new_id("item")
        await self.emit("input_audio_buffer.speech_stopped", item_id=item)
        await self.emit("input_audio_buffer.committed", item_id=item)
        await self.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item,
            content_index=0,
            transcript=self.emulator.transcript,
        )

    def start_reply(self) -> None:
        if self.reply is None or self.reply.done():
            self.reply = asyncio.create_task(self.respond())

    async def cancel_reply(self) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.cancel()
            response = self.reply_id
            self.reply = None
            await self.emit("response.done", response={"id": response, "status": "cancelled"})

    async def respond(self) -> None:
        self.reply_id = response = self.new_id("resp")
        item = self.new_id("item")
        await self.emit("response.created", response={"id": response, "status": "in_progress"})
        await self.emit(
            "response.output_item.added",
            response_id=response,
            output_index=0,
            item={"id": item, "type": "message", "role": "assistant"},
        )
        part = {"response_id": response, "item_id": item, "output_index": 0, "content_index": 0}
        text_kind = "response.output_text" if self.text_only else "response.output_audio_transcript"
        for index, word in enumerate(self.emulator.reply.split(" ")):
            if self.emulator.drop_realtime_after_deltas == index:
                await self.ws.close(code=1011)
                return
            await self.emit(f"{text_kind}.delta", delta=("" if index == 0 else " ") + word, **part)
            if not self.text_only:
                audio = base64.b64encode(tone(0.1)).decode()
                await self.emit("response.output_audio.delta", delta=audio, **part)
            await asyncio.sleep(self.emulator.word_delay)
        if self.text_only:
            await self.emit(f"{text_kind}.done", text=self.emulator.reply, **part)
        else:
            await self.emit(f"{text_kind}.done", transcript=self.emulator.reply, **part)
            await self.emit("response.output_audio.done", **part)
        usage = {"input_tokens": 40, "output_tokens": 12, "total_tokens": 52}
        await self.emit(
            "response.done", response={"id": response, "status": "completed", "usage": usage}
        )


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> bytes:
    chunk = {
        "id": "chatcmpl-emulated",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()
