"""Nova Sonic as a sonicgate engine: one bidirectional stream per conversation.

The session sends the event grammar in order (session, prompt, system prompt,
history within Nova's limits, then live audio in one interactive content) and
maps what comes back through ``OutputMapper``. Nova ends a stream after about
8 minutes, so between turns, once ``rotate_after`` has passed, the session
opens a new stream seeded with the history and moves the audio to it: audio
pushed meanwhile waits for the new stream, nothing is lost or said twice.
A stream that fails shows up as a fatal ``Error`` (``FallbackEngine`` takes
the conversation over from there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from sonicgate.domain import Capabilities, ErrorCode, Role
from sonicgate.engines.aws import session_credentials, session_region
from sonicgate.engines.base import BaseEngineSession, EngineConfig, EngineError
from sonicgate.engines.nova_sonic import grammar
from sonicgate.engines.nova_sonic.client import (
    NovaStreamError,
    await_response,
    close_stream,
    crt_transport,
    open_client,
    open_stream,
    receive_events,
    send_event,
)
from sonicgate.engines.nova_sonic.crt_writer import quiet_writer_ends
from sonicgate.engines.nova_sonic.grammar import NovaEvent, OutputMapper, ToolUse
from sonicgate.engines.nova_sonic.nodelay import disable_nagle
from sonicgate.engines.nova_sonic.settings import (
    LANGUAGES,
    NOVA_SONIC,
    VOICES,
    NovaSettings,
)
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Error,
    Interrupted,
    ResponseTextDelta,
    ResponseTextFinal,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
    Usage,
)
from sonicgate.tools import Tool

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 15.0  # seconds to resolve credentials, connect and have a stream accepted
RESPONSE_TIMEOUT = 10.0  # seconds for the service to accept a new stream
MAX_EVENT_BYTES = 32_000  # one audioInput carries at most 1 s of audio
MAX_PENDING_BYTES = 30 * 32_000  # 30 s of audio waiting for a stalled stream
SEND_TIMEOUT = 5.0  # seconds one input event may take before the stream counts as broken
CLOSE_TIMEOUT = 5.0  # seconds for a stream to end politely before it is dropped
QUIET_BEFORE_ROTATION = 0.5  # seconds of user quiet before a stream may rotate
ROTATION_GRACE = 45.0  # seconds past rotate_after before rotating mid-speech anyway
LOUD = 1000  # pcm16 peak (about -30 dBFS): above this the user is probably speaking
# What is left of a reply ended here: dropped, as the user has moved on.
REPLY_EVENTS = ("audio_out", "response_text_delta", "interrupted", "response_text_final",
                "turn_ended")  # fmt: skip


class NovaSonicEngine:
    name = "nova-sonic"

    def __init__(self, settings: NovaSettings, tools: Sequence[Tool] = ()) -> None:
        self.settings = settings
        self.tools = {tool.name: tool for tool in tools}
        quiet_writer_ends()

    def capabilities(self) -> Capabilities:
        model = self.settings.model_id
        return Capabilities(
            LANGUAGES.get(model, ("en-US",)),
            (model,),
            VOICES.get(model, (self.settings.voice,)),
            grammar.OUTPUT_SAMPLE_RATE,
        )

    async def start(self, config: EngineConfig) -> NovaSession:
        voices = self.capabilities().voices
        if config.voice is not None and config.voice not in voices:
            raise EngineError(
                ErrorCode.UNKNOWN_VOICE,
                f"voice '{config.voice}' is not a {self.settings.model_id} voice; "
                f"available: {', '.join(voices)}",
            )
        session = NovaSession(self, config)
        await session.open()
        return session

    async def aclose(self) -> None:
        pass  # each session closes its own connection


def _loud(pcm: bytes) -> bool:
    # Every 4th sample (0.25 ms apart) tells speech from quiet as well, at a quarter
    # of the cost: this runs on every chunk.
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)[::4]
    return bool(samples.size) and (int(samples.max()) > LOUD or int(samples.min()) < -LOUD)


class _Stream:
    """One bidirectional stream and the prompt it carries."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.prompt = str(uuid.uuid4())
        self.audio = str(uuid.uuid4())  # the open audio content
        self.opened = time.monotonic()
        self.mapper = OutputMapper()
        self.reader: asyncio.Task[None] | None = None
        self.usage = Usage(0, 0)  # its running totals: each stream counts from zero


class NovaSession(BaseEngineSession):
    def __init__(self, engine: NovaSonicEngine, config: EngineConfig) -> None:
        super().__init__(config)
        self._engine = engine
        self._settings = engine.settings
        self._send_lock = asyncio.Lock()  # one writer: events stay in grammar order
        self._stream: _Stream | None = None
        self._client: Any = None
        # A connection per conversation: one shared HTTP/2 connection queued every
        # session's audio behind the others' (p50 2.4 ms -> 23 ms at 10 sessions).
        self._transport = crt_transport(engine.settings.ca_file)
        self._tasks: set[asyncio.Task[None]] = set()  # tools, old streams ending
        self._quiet_bytes = 0  # audio since the user was last loud
        self._pending = bytearray()  # audio not yet sent
        self._audio_waiting = asyncio.Event()
        self._heard = False  # speech since the last transcript: an answer is due
        # A stream moves only between turns: none heard (speech sent, no transcript
        # yet) nor answered (a transcript out, its TurnEnded not).
        self._loud_pending = False  # loud audio among the pending
        self._speech_sent = False
        self._turn_open = False
        self._usage_before = Usage(0, 0)  # the streams rotated out counted these
        # The reply was ended here (stop, or typed over): the rest of it is dropped.
        self._muted = False
        self._received: list[str] = []  # the reply's text as the client got it
        self._typed: list[str] = []  # typed turns whose transcript Nova has yet to send

    # Setup -------------------------------------------------------------------

    async def open(self) -> None:
        settings = self._settings
        region = session_region(self.config, settings.region)
        try:
            # Bounded: the credential chain may wait on an instance-metadata service.
            async with asyncio.timeout(OPEN_TIMEOUT):
                self._client = await open_client(
                    region=region,
                    endpoint_uri=settings.endpoint_uri,
                    credentials=session_credentials(self.config),
                    transport=self._transport,
                )
                self._stream = await self._new_stream()
        except (NovaStreamError, TimeoutError) as exc:
            await self._transport.close()
            if isinstance(exc, NovaStreamError):
                raise EngineError(exc.code, f"Nova Sonic: {exc.message}") from exc
            raise EngineError(
                ErrorCode.PROVIDER_UNREACHABLE,
                f"Nova Sonic did not answer within {OPEN_TIMEOUT:.0f} s",
            ) from exc
        self._spawn(self._write_audio())

    async def _new_stream(self) -> _Stream:
        """A stream seeded with the system prompt and the conversation so far."""
        settings = self._settings
        stream = _Stream(await open_stream(self._client, settings.model_id))
        nova_2 = settings.model_id != NOVA_SONIC
        setup: list[NovaEvent] = [
            grammar.session_start(
                max_tokens=settings.max_tokens,
                top_p=settings.top_p,
                temperature=settings.temperature,
                endpointing=settings.endpointing if nova_2 else None,
            ),
            grammar.prompt_start(
                stream.prompt,
                self.config.voice or settings.voice,
                list(self._engine.tools.values()),
            ),
            *grammar.text_content(
                stream.prompt, str(uuid.uuid4()), "SYSTEM", self.config.system_prompt
            ),
        ]
        for message in grammar.fit_history(tuple(self.history)):
            role = "USER" if message.role is Role.USER else "ASSISTANT"
            setup += grammar.text_content(stream.prompt, str(uuid.uuid4()), role, message.text)
        setup.append(grammar.audio_start(stream.prompt, stream.audio))
        for event in setup:
            await send_event(stream.raw, event)
        try:
            await await_response(stream.raw, RESPONSE_TIMEOUT)
        except NovaStreamError:
            with contextlib.suppress(NovaStreamError):
                await close_stream(stream.raw)
            raise
        # The connection exists once the service has answered: the stream's first
        # audio then goes out at once (see nodelay).
        endpoint = urlsplit(settings.endpoint_uri) if settings.endpoint_uri else None
        disable_nagle(endpoint.port if endpoint and endpoint.port else 443)
        stream.reader = asyncio.create_task(self._read(stream), name="nova-reader")
        return stream

    # Input -------------------------------------------------------------------

    async def push_audio(self, pcm: bytes) -> None:
        """Queue audio for the stream's writer: one event per chunk while it keeps up,
        the chunks that piled up meanwhile together in one event when it does not."""
        self._writable()
        if _loud(pcm):
            self._quiet_bytes = 0
            self._heard = self._loud_pending = True
        else:
            self._quiet_bytes += len(pcm)
        self._pending += pcm
        if len(self._pending) > MAX_PENDING_BYTES:  # the stream has stalled: keep the newest
            del self._pending[: len(self._pending) - MAX_PENDING_BYTES]
            log.warning("Nova Sonic stream is not keeping up: audio dropped")
        self._audio_waiting.set()

    async def push_text(self, text: str) -> None:
        """A typed turn: an interactive text content (Nova 2 Sonic)."""
        self._cut_reply()
        async with self._send_lock:
            stream = await self._flush_audio()
            self._typed.append(text.strip())
            for event in grammar.text_content(
                stream.prompt, str(uuid.uuid4()), "USER", text, interactive=True
            ):
                await self._send(stream, event)

    async def end_turn(self, reason: TriggerReason) -> bool:
        """Close the audio content (Nova answers what it heard) and open the next one."""
        async with self._send_lock:
            stream = await self._flush_audio()
            await self._send(stream, grammar.content_end(stream.prompt, stream.audio))
            stream.audio = str(uuid.uuid4())
            await self._send(stream, grammar.audio_start(stream.prompt, stream.audio))
        return self._heard

    async def push_utterance(self, pcm: bytes, reason: TriggerReason) -> None:
        await self.push_audio(pcm)
        await self.end_turn(reason)

    async def interrupt(self) -> None:
        self._cut_reply()

    def _cut_reply(self) -> None:
        """End the reply under way, by the contract. Nova has no "stop" event: the rest
        of the reply, as Nova goes on with it, is not passed on."""
        stream = self._stream
        under_way = stream is not None and (self._turn_open or stream.mapper.replying)
        if under_way and not self._muted:
            self._muted = True
            self.emit(Interrupted())
            self.emit(ResponseTextFinal(" ".join(self._received)))
            self.emit(TurnEnded(interrupted=True))

    async def close(self) -> None:
        if self.closed:
            return
        async with self._send_lock:
            with contextlib.suppress(EngineError):
                await self._flush_audio()  # what the client sent last still goes out
        await super().close()
        for task in self._tasks:
            task.cancel()
        stream, self._stream = self._stream, None
        if stream is not None:
            await self._end(stream)
        await self._transport.close()

    # Streams -----------------------------------------------------------------

    def _writable(self) -> _Stream:
        if self._stream is None:
            raise EngineError(ErrorCode.ENGINE_UNAVAILABLE, "the Nova Sonic stream is closed")
        return self._stream

    async def _write_audio(self) -> None:
        while True:
            await self._audio_waiting.wait()
            self._audio_waiting.clear()
            async with self._send_lock:
                with contextlib.suppress(EngineError):  # told to the client by _failed
                    await self._flush_audio()

    async def _flush_audio(self) -> _Stream:
        """Send the queued audio (the caller holds the send lock); the stream it went to."""
        stream = self._writable()
        if self._pending and self._due_for_rotation(stream):
            stream = await self._rotate(stream)
        while self._pending:
            pcm = bytes(self._pending[:MAX_EVENT_BYTES])
            del self._pending[:MAX_EVENT_BYTES]
            await self._send(stream, grammar.audio_input(stream.prompt, stream.audio, pcm))
        if self._loud_pending:
            self._speech_sent, self._loud_pending = True, False
        return stream

    async def _send(self, stream: _Stream, event: NovaEvent) -> None:
        async with self._stream_failures("the stream stopped taking input"):
            # Bounded: on a broken stream the SDK buffers a few events, then waits forever.
            async with asyncio.timeout(SEND_TIMEOUT):
                await send_event(stream.raw, event)

    @contextlib.asynccontextmanager
    async def _stream_failures(self, on_timeout: str) -> AsyncIterator[None]:
        """A stream that fails is told (a fatal ``Error``: a fallback takes over) and
        raised as ``EngineError`` to the input that met it."""
        try:
            yield
        except (NovaStreamError, OSError, RuntimeError) as exc:  # TimeoutError is an OSError
            code, message = _failure(exc, on_timeout)
            await self._failed(code, message)
            raise EngineError(code, f"Nova Sonic: {message}") from exc

    def _due_for_rotation(self, stream: _Stream) -> bool:
        """Old enough, and between turns: no reply under way, the user quiet.

        A reply finishes on the stream it began on, and speech is not split
        over two streams; past the grace period the stream moves regardless.
        """
        age = time.monotonic() - stream.opened
        if age < self._settings.rotate_after:
            return False
        quiet = self._quiet_bytes >= QUIET_BEFORE_ROTATION * 32_000
        between_turns = not (self._speech_sent or self._turn_open or stream.mapper.replying)
        return (quiet and between_turns) or age >= self._settings.rotate_after + ROTATION_GRACE

    async def _rotate(self, old: _Stream) -> _Stream:
        log.info("rotating the Nova Sonic stream after %.0f s", time.monotonic() - old.opened)
        async with self._stream_failures("the new stream did not answer"):
            new = await self._new_stream()  # refused, say: the session's keys expired
        self._cut_reply()  # past the grace period: a turn under way ends here
        self._speech_sent = False  # speech the old stream heard goes with it
        self._usage_before = _added(self._usage_before, old.usage)
        self._stream = new
        # The old stream ends in the background: audio goes on to the new one now.
        self._spawn(self._end(old))
        return new

    async def _end(self, stream: _Stream) -> None:
        """End a stream by the grammar, then let its reader drain what is left."""
        with contextlib.suppress(NovaStreamError, OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):  # a dead connection may not take it
                for event in (
                    grammar.content_end(stream.prompt, stream.audio),
                    grammar.prompt_end(stream.prompt),
                    grammar.session_end(),
                ):
                    await send_event(stream.raw, event)
                await close_stream(stream.raw)
        if stream.reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(stream.reader), CLOSE_TIMEOUT)
            except TimeoutError:
                stream.reader.cancel()

    async def _read(self, stream: _Stream) -> None:
        try:
            async for event in receive_events(stream.raw):
                for mapped in stream.mapper.map(event):
                    if stream is not self._stream:
                        continue  # a rotated-out stream: its last words are not news
                    if isinstance(mapped, Usage):  # the conversation's, not the stream's
                        stream.usage = mapped
                        mapped = _added(self._usage_before, mapped)
                    if isinstance(mapped, ToolUse):
                        # Off the reader, so audio keeps flowing while the tool works.
                        self._spawn(self._answer_tool(stream, mapped))
                    else:
                        await self._deliver(mapped)
            # The SDK ends the output quietly when the connection drops.
            if stream is self._stream:
                await self._failed(ErrorCode.PROVIDER_ERROR, "the stream ended unexpectedly")
        except NovaStreamError as exc:
            if stream is self._stream:
                await self._failed(exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection broke: same as a service error
            if stream is self._stream:
                await self._failed(ErrorCode.PROVIDER_ERROR, str(exc))

    async def _deliver(self, event: EngineEvent) -> None:
        match event:
            case TranscriptFinal(text=text):
                self._muted = self._heard = self._speech_sent = False
                self._received.clear()
                if self._typed and text == self._typed[0]:
                    del self._typed[0]
                    event = replace(event, reason=TriggerReason.TEXT)
            case ResponseTextDelta(text=text) if not self._muted and text.strip():
                self._received.append(text.strip())
        if self._muted and event.type in REPLY_EVENTS:
            return
        if self.config.text_only and isinstance(event, AudioOut):
            return  # Nova always speaks; a text-only client gets the words alone
        self.emit(event)

    def emit(self, event: EngineEvent) -> None:
        match event:
            case TranscriptFinal():
                self._turn_open = True
            case TurnEnded():
                self._turn_open = False
        super().emit(event)

    async def _failed(self, code: ErrorCode, message: str) -> None:
        stream = self._stream
        if self.closed or stream is None:
            return
        log.warning("Nova Sonic stream failed: %s: %s", code, message)
        self._stream = None
        self.emit(Error(code, f"Nova Sonic: {message}", fatal=True))
        # Our side ends too, so that the SDK's writer for it finishes (see crt_writer)
        # rather than wait for input until the process ends.
        with contextlib.suppress(NovaStreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await close_stream(stream.raw)

    # Tools -------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_tool(self, stream: _Stream, use: ToolUse) -> None:
        tool = self._engine.tools.get(use.name)
        if tool is None:
            result = f'{{"error": "no tool named {use.name}"}}'
        else:
            result = await tool.run(use.arguments)
        log.info("tool %s ran for Nova Sonic", use.name)
        async with self._send_lock:
            if stream is not self._stream:
                return  # the stream rotated or failed meanwhile
            for event in grammar.tool_result(
                stream.prompt, str(uuid.uuid4()), use.tool_use_id, result
            ):
                await self._send(stream, event)


def _failure(exc: Exception, on_timeout: str) -> tuple[ErrorCode, str]:
    if isinstance(exc, TimeoutError):
        return ErrorCode.PROVIDER_ERROR, on_timeout
    if isinstance(exc, NovaStreamError):
        return exc.code, exc.message
    return ErrorCode.PROVIDER_ERROR, str(exc)  # the transport went away under us


def _added(one: Usage, other: Usage) -> Usage:
    return Usage(one.input_tokens + other.input_tokens, one.output_tokens + other.output_tokens)
