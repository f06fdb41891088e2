"""A wire-level emulator of Bedrock's InvokeModelWithBidirectionalStream (Nova Sonic).

HTTP/2 over TLS (a trustme certificate), ``POST /model/{id}/invoke-with-bidirectional-stream``,
bodies framed as ``application/vnd.amazon.eventstream`` both ways, SigV4-signed
input frames unwrapped, and each chunk's ``{"bytes": base64(json)}`` decoded
into Nova's event grammar. The real SDK talks to it through its endpoint URL.

Like the service, it checks the grammar (order, prompt and content names,
history limits) and answers a violation with a ``validationException``. It
hears the end of a user turn from the audio energy (or an audio contentEnd,
or an interactive text turn), then answers from a script: USER transcript,
ASSISTANT speculative text, audio, final text, usage; with tool use, barge-in,
exceptions, a dropped connection and a stream time limit on demand. Typed text
during a reply interrupts it as speech does, and is answered next.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import ssl
import struct
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import numpy as np
import trustme
from smithy_aws_event_stream.events import Event, EventMessage

CHUNK_SECONDS = 0.1
OUTPUT_RATE = 24_000
SPEECH_RMS = 500.0  # pcm16 RMS: above is speech
MIN_SPEECH = 0.3  # seconds of speech that make a turn
END_SILENCE = 0.4  # seconds of silence that end it
WINDOW = 512  # samples per energy measurement
MAX_HISTORY = 40_000
MAX_TEXT_INPUT = 1_000


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    drop_after_chunks: int | None = None  # kill the connection after this many audio chunks
    exception: str | None = None  # answer with this exception type instead


@dataclass(frozen=True)
class Turn:
    user_text: str
    reply_text: str  # may contain {tool_result}
    tool: ToolCall | None = None
    fail: Failure | None = None


class GrammarError(Exception):
    pass


def tone(seconds: float, rate: int = OUTPUT_RATE, hz: float = 330.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * math.pi * hz * t) * 8000).astype("<i2").tobytes()


def frame(headers: dict[str, Any], payload: bytes) -> bytes:
    return EventMessage(headers=headers, payload=payload).encode()


def chunk_frame(event: dict[str, Any]) -> bytes:
    inner = base64.b64encode(json.dumps({"event": event}).encode()).decode()
    return frame(
        {
            ":message-type": "event",
            ":event-type": "chunk",
            ":content-type": "application/json",
        },
        json.dumps({"bytes": inner}).encode(),
    )


def exception_frame(kind: str, message: str) -> bytes:
    return frame(
        {
            ":message-type": "exception",
            ":exception-type": kind,
            ":content-type": "application/json",
        },
        json.dumps({"message": message}).encode(),
    )


def header_text(value: bytes | str) -> str:
    """A header's name or value: h2 decodes them (``header_encoding``), typed as bytes."""
    return value if isinstance(value, str) else value.decode()


class _Buffer:
    """Splits a byte stream into eventstream messages (4-byte total length first)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def messages(self, more: bytes) -> list[EventMessage]:
        self.data += more
        found: list[EventMessage] = []
        while len(self.data) >= 4:
            (total,) = struct.unpack(">I", self.data[:4])
            if len(self.data) < total:
                break
            raw, self.data = bytes(self.data[:total]), self.data[total:]
            event = Event.decode(io.BytesIO(raw))
            assert event is not None
            found.append(event.message)
        return found


class NovaStream:
    """One bidirectional stream: the grammar checker and the scripted model."""

    def __init__(self, emulator: NovaEmulator, send: Any, model_id: str) -> None:
        self.emulator = emulator
        self.send = send  # async (bytes | None, end: bool) -> None
        self.model_id = model_id
        self.received: list[dict[str, Any]] = []
        self.session_started = False
        self.prompt: str | None = None
        self.contents: dict[str, dict[str, Any]] = {}
        self.system_seen = False
        self.history_bytes = 0
        self.history_roles: list[str] = []
        self.audio_seen = False
        self.speech = 0.0
        self.silence = 0.0
        self.answering: asyncio.Task[None] | None = None
        self.barge_in = asyncio.Event()
        self.tool_results: asyncio.Queue[str] = asyncio.Queue()
        self.completion_started = False
        self.ended = False
        self.tokens = (0, 0)  # the stream's running totals (input, output), as usageEvent says
        self.opened = time.monotonic()

    # Input -----------------------------------------------------------------

    async def on_message(self, message: EventMessage) -> None:
        if ":chunk-signature" in message.headers:  # SigV4 event signing: unwrap
            if not message.payload:
                return  # the closing signed frame
            inner = Event.decode(io.BytesIO(message.payload))
            assert inner is not None
            message = inner.message
        body = json.loads(message.payload)
        event = json.loads(base64.b64decode(body["bytes"]))["event"]
        self.received.append(event)
        [(name, data)] = event.items()
        try:
            await self.on_event(name, data)
        except GrammarError as exc:
            await self.fail("validationException", str(exc))

    async def on_event(self, name: str, data: dict[str, Any]) -> None:
        if self.ended:
            raise GrammarError(f"{name} after sessionEnd")
        if name != "sessionStart" and not self.session_started:
            raise GrammarError(f"{name} before sessionStart")
        match name:
            case "sessionStart":
                if self.session_started:
                    raise GrammarError("a second sessionStart")
                self.session_started = True
                self.emulator.session_configs.append(data)
            case "promptStart":
                if not data.get("promptName"):
                    raise GrammarError("promptStart needs a promptName")
                self.prompt = data["promptName"]
            case "contentStart":
                self._check_prompt(data)
                self._content_start(data)
            case "textInput":
                content = self._open_content(data, "TEXT")
                text = str(data.get("content", ""))
                if len(text.encode()) > MAX_TEXT_INPUT and content["role"] != "SYSTEM":
                    raise GrammarError("a textInput is over 1 KB")
                content["text"] += text
            case "audioInput":
                self._open_content(data, "AUDIO")
                pcm = base64.b64decode(data.get("content", ""))
                if self.emulator.on_audio is not None:
                    self.emulator.on_audio(pcm)
                await self._hear(pcm)
            case "toolResult":
                content = self._open_content(data, "TOOL")
                content["text"] += str(data.get("content", ""))
            case "contentEnd":
                self._check_prompt(data)
                ended = self.contents.pop(str(data.get("contentName")), None)
                if ended is None:
                    raise GrammarError("contentEnd for a content that is not open")
                await self._content_end(ended)
            case "promptEnd":
                self._check_prompt(data)
            case "sessionEnd":
                self.ended = True
            case _:
                raise GrammarError(f"unknown event {name}")

    def _check_prompt(self, data: dict[str, Any]) -> None:
        if self.prompt is None or data.get("promptName") != self.prompt:
            raise GrammarError(f"unknown promptName {data.get('promptName')!r}")

    def _open_content(self, data: dict[str, Any], kind: str) -> dict[str, Any]:
        self._check_prompt(data)
        content = self.contents.get(str(data.get("contentName")))
        if content is None or content["type"] != kind:
            raise GrammarError(f"no open {kind} content {data.get('contentName')!r}")
        return content

    def _content_start(self, data: dict[str, Any]) -> None:
        kind, role = data.get("type"), data.get("role")
        if kind == "TEXT" and not data.get("interactive"):
            if role == "SYSTEM":
                self.system_seen = True
            elif self.audio_seen:
                raise GrammarError("history after the audio started")
            elif not self.system_seen:
                raise GrammarError("history before the system prompt")
            elif not self.history_roles and role != "USER":
                raise GrammarError("the first history message must be USER")
        if kind == "AUDIO":
            self.audio_seen = True
        name = str(data.get("contentName"))
        self.contents[name] = {**data, "text": ""}

    async def _content_end(self, content: dict[str, Any]) -> None:
        kind, role = content["type"], content.get("role")
        if kind == "TEXT" and not content.get("interactive") and role in ("USER", "ASSISTANT"):
            self.history_bytes += len(content["text"].encode())
            self.history_roles.append(str(role))
            if self.history_bytes > MAX_HISTORY:
                raise GrammarError("the history is over 40 KB")
        elif kind == "TEXT" and content.get("interactive"):
            self._answer(content["text"])
        elif kind == "AUDIO" and self.speech >= MIN_SPEECH:
            self._answer(None)
        elif kind == "TOOL":
            await self.tool_results.put(content["text"])

    async def _hear(self, pcm: bytes) -> None:
        """Energy per 32 ms window, however the audio was cut into events."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        for start in range(0, samples.size, WINDOW):
            window = samples[start : start + WINDOW]
            seconds = window.size / 16_000
            if float(np.sqrt(np.mean(np.square(window)))) > SPEECH_RMS:
                self.speech += seconds
                self.silence = 0.0
                if self.speech >= MIN_SPEECH / 3 and self._replying():
                    self.barge_in.set()
            elif self.speech >= MIN_SPEECH:
                self.silence += seconds
                if self.silence >= END_SILENCE:
                    self._answer(None)
            else:
                self.speech = 0.0

    def _replying(self) -> bool:
        return self.answering is not None and not self.answering.done()

    # Output ----------------------------------------------------------------

    def _answer(self, typed: str | None) -> None:
        self.speech = self.silence = 0.0
        previous = None
        if self._replying():
            if typed is None:
                return
            # A typed turn over the reply interrupts it, as speech does; then it is answered.
            self.barge_in.set()
            previous = self.answering
        turn = self.emulator.next_turn()
        self.answering = asyncio.create_task(self._reply(turn, typed, previous))

    async def emit(self, event: dict[str, Any]) -> None:
        await self.send(chunk_frame(event), False)

    async def fail(self, kind: str, message: str) -> None:
        self.ended = True
        await self.send(exception_frame(kind, message), True)

    async def _text(self, role: str, text: str, stage: str, reason: str) -> None:
        content_id = self.emulator.new_id()
        await self.emit(
            {
                "contentStart": {
                    "contentId": content_id,
                    "type": "TEXT",
                    "role": role,
                    "additionalModelFields": json.dumps({"generationStage": stage}),
                }
            }
        )
        await self.emit({"textOutput": {"contentId": content_id, "role": role, "content": text}})
        await self.emit({"contentEnd": {"contentId": content_id, "stopReason": reason}})

    async def _reply(self, turn: Turn, typed: str | None, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await after
        self.barge_in.clear()
        if not self.completion_started:
            self.completion_started = True
            await self.emit({"completionStart": {}})
        if turn.fail is not None and turn.fail.exception:
            await self.fail(turn.fail.exception, f"emulated {turn.fail.exception}")
            return
        await self._text("USER", typed or turn.user_text, "FINAL", "END_TURN")
        reply = turn.reply_text
        if turn.tool is not None:
            tool_id = self.emulator.new_id()
            content_id = self.emulator.new_id()
            await self.emit({"contentStart": {"contentId": content_id, "type": "TOOL"}})
            await self.emit(
                {
                    "toolUse": {
                        "toolName": turn.tool.name,
                        "toolUseId": tool_id,
                        "content": json.dumps(turn.tool.arguments),
                    }
                }
            )
            await self.emit({"contentEnd": {"contentId": content_id, "stopReason": "TOOL_USE"}})
            reply = reply.format(tool_result=await self.tool_results.get())
        await self._text("ASSISTANT", reply, "SPECULATIVE", "PARTIAL_TURN")
        audio_id = self.emulator.new_id()
        await self.emit({"contentStart": {"contentId": audio_id, "type": "AUDIO"}})
        pcm = tone(max(0.4, len(reply) / 10 * 0.04))
        step = int(CHUNK_SECONDS * OUTPUT_RATE) * 2
        for index, start in enumerate(range(0, len(pcm), step)):
            if turn.fail is not None and turn.fail.drop_after_chunks == index:
                self.emulator.drop_connections()
                return
            if self.barge_in.is_set():
                await self._text("ASSISTANT", '{ "interrupted" : true }', "SPECULATIVE", "END_TURN")
                await self.emit(
                    {"contentEnd": {"contentId": audio_id, "stopReason": "INTERRUPTED"}}
                )
                return
            content = base64.b64encode(pcm[start : start + step]).decode()
            await self.emit({"audioOutput": {"contentId": audio_id, "content": content}})
            if self.emulator.realtime_output:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.barge_in.wait(), CHUNK_SECONDS)
        await self.emit({"contentEnd": {"contentId": audio_id, "stopReason": "END_TURN"}})
        await self._text("ASSISTANT", reply, "FINAL", "END_TURN")
        used_in, used_out = 20 + len(turn.user_text) // 4, len(reply) // 4
        total_in, total_out = self.tokens[0] + used_in, self.tokens[1] + used_out
        self.tokens = (total_in, total_out)
        await self.emit(
            {
                "usageEvent": {
                    "totalInputTokens": total_in,  # the stream's running totals
                    "totalOutputTokens": total_out,
                    "totalTokens": total_in + total_out,
                    "details": {"delta": {"output": {"speechTokens": len(pcm) // 960}}},
                }
            }
        )


class _Connection:
    """One TLS connection carrying HTTP/2 streams."""

    def __init__(
        self, emulator: NovaEmulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.emulator = emulator
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.streams: dict[int, tuple[NovaStream, _Buffer]] = {}
        self.window = asyncio.Event()
        self.finishing: set[asyncio.Task[None]] = set()

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    async def send(self, stream_id: int, data: bytes | None, end: bool) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            view = memoryview(data or b"")
            while view:
                room = min(
                    self.h2.local_flow_control_window(stream_id),
                    self.h2.max_outbound_frame_size,
                )
                if room <= 0:
                    self.window.clear()
                    await self.window.wait()
                    continue
                self.h2.send_data(stream_id, bytes(view[:room]))
                view = view[room:]
            if end:
                self.h2.end_stream(stream_id)
            await self.flush()

    async def finish(self, stream_id: int, stream: NovaStream) -> None:
        if stream.answering is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(stream.answering), 10)
        await self.send(stream_id, None, True)

    async def run(self) -> None:
        self.h2.initiate_connection()
        # Windows as roomy as a cloud service's: h2's 64 KB default per stream
        # makes the client wait for a WINDOW_UPDATE every ~1.5 s of audio.
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self.h2.increment_flow_control_window(1 << 24)
        await self.flush()
        try:
            while data := await self.reader.read(65_536):
                for event in self.h2.receive_data(data):
                    await self.on_event(event)
                await self.flush()
        except (ConnectionError, h2.exceptions.ProtocolError, ssl.SSLError):
            pass
        finally:
            self.writer.close()

    async def on_event(self, event: h2.events.Event) -> None:
        match event:
            case h2.events.RequestReceived(stream_id=stream_id, headers=headers):
                await self.on_request(
                    stream_id, {header_text(k): header_text(v) for k, v in headers or []}
                )
            case h2.events.DataReceived(stream_id=stream_id, data=data):
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
                found = self.streams.get(stream_id)
                if found is not None:
                    for message in found[1].messages(data or b""):
                        await found[0].on_message(message)
            case h2.events.StreamEnded(stream_id=stream_id):
                # The client closed its side: finish the reply under way, then ours.
                found = self.streams.pop(stream_id, None)
                if found is not None:
                    task = asyncio.create_task(self.finish(stream_id, found[0]))
                    self.finishing.add(task)
                    task.add_done_callback(self.finishing.discard)
            case h2.events.WindowUpdated() | h2.events.RemoteSettingsChanged():
                self.window.set()
            case h2.events.StreamReset(stream_id=stream_id):
                self.streams.pop(stream_id, None)

    async def on_request(self, stream_id: int, headers: dict[str, str]) -> None:
        path = urllib.parse.unquote(headers.get(":path", "").partition("?")[0])
        parts = path.split("/")
        if (
            len(parts) < 4
            or parts[1] != "model"
            or not path.endswith("/invoke-with-bidirectional-stream")
        ):
            self.h2.send_headers(stream_id, [(":status", "404")], end_stream=True)
            return
        key = headers.get("authorization", "").partition("Credential=")[2].split("/")[0]
        if key not in self.emulator.allowed_keys:
            body = json.dumps({"message": "The security token included in the request is invalid."})
            self.h2.send_headers(
                stream_id,
                [
                    (":status", "403"),
                    ("content-type", "application/json"),
                    ("x-amzn-errortype", "UnrecognizedClientException"),
                ],
            )
            self.h2.send_data(stream_id, body.encode(), end_stream=True)
            return
        model_id = parts[2]
        self.emulator.model_ids.append(model_id)
        self.h2.send_headers(
            stream_id,
            [
                (":status", "200"),
                ("content-type", "application/vnd.amazon.eventstream"),
                ("x-amzn-requestid", self.emulator.new_id()),
            ],
        )

        async def send(data: bytes | None, end: bool) -> None:
            await self.send(stream_id, data, end)

        stream = NovaStream(self.emulator, send, model_id)
        self.streams[stream_id] = (stream, _Buffer())
        self.emulator.streams.append(stream)
        if self.emulator.max_stream_seconds is not None:
            asyncio.get_running_loop().call_later(
                self.emulator.max_stream_seconds,
                lambda: asyncio.ensure_future(
                    stream.fail("modelStreamErrorException", "the stream time limit was reached")
                ),
            )


class NovaEmulator:
    """``async with NovaEmulator(script) as emulator:`` then point the SDK at ``endpoint``."""

    def __init__(self, script: list[Turn] | None = None) -> None:
        self.script = list(script or [])
        self.default_turn = Turn("hello", "Hello! How can I help?")
        self.allowed_keys = {"AKIDEXAMPLE"}
        self.realtime_output = False
        self.max_stream_seconds: float | None = None
        self.on_audio: Callable[[bytes], None] | None = None  # sees each audioInput (benchmarks)
        self.streams: list[NovaStream] = []
        self.session_configs: list[dict[str, Any]] = []
        self.model_ids: list[str] = []
        self._connections: set[asyncio.StreamWriter] = set()
        self._ids = 0
        self._server: asyncio.Server | None = None
        self._directory = tempfile.TemporaryDirectory()
        self.ca_file = str(Path(self._directory.name) / "ca.pem")
        self.endpoint = ""

    def next_turn(self) -> Turn:
        return self.script.pop(0) if self.script else self.default_turn

    def new_id(self) -> str:
        self._ids += 1
        return f"id-{self._ids:06d}"

    def drop_connections(self) -> None:
        """The network breaks: every connection closes without a goodbye."""
        for writer in list(self._connections):
            writer.transport.abort()

    async def __aenter__(self) -> NovaEmulator:
        authority = trustme.CA()
        authority.cert_pem.write_to_path(self.ca_file)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        context.set_alpn_protocols(["h2"])

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._connections.add(writer)
            try:
                await _Connection(self, reader, writer).run()
            finally:
                self._connections.discard(writer)

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=context)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"https://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.drop_connections()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._directory.cleanup()
