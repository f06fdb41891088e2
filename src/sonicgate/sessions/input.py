"""A session's input chain: client audio into the engine, in order, decoded and
within the turn's limit; numbered audio is kept for a resume on another node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial

from sonicgate.audio.decoder import InputDecoder
from sonicgate.audio.formats import (
    BYTES_PER_SECOND,
    AudioFormatError,
    AudioTooLong,
    DecodeLimit,
    decode_file,
)
from sonicgate.domain import ErrorCode, SessionError, StreamingContext
from sonicgate.engines.base import EngineSession
from sonicgate.events import AudioIn, EngineEvent, TranscriptFinal, TriggerReason
from sonicgate.sessions.sequencer import Notice, Sequencer
from sonicgate.store.base import Store, saved

RAW_FORMATS = ("pcm16", "pcm16-24k")  # no container to tell what they hold
KEPT_SEQUENCE_NUMBERS = 64
# Numbered chunks kept in the store for a resume elsewhere: a turn's first minute.
KEPT_TURN_AUDIO_BYTES = 60 * BYTES_PER_SECOND

Heard = Callable[[bytes], None]  # audio on its way to the engine, for the counts
Tell = Callable[[Notice], Awaitable[None]]  # a notice for the client


class AudioInput:
    def __init__(
        self,
        *,
        engine: EngineSession,
        context: StreamingContext,
        store: Store,
        reorder_window: int,
        max_turn_seconds: float,
        heard: Heard,
        tell: Tell,
    ) -> None:
        self._engine = engine
        self._context = context
        self._store = store
        self._heard = heard
        self._tell = tell
        self._limit = DecodeLimit(max_turn_seconds)
        self._decoder = InputDecoder(context.audioFormat, self._limit)
        last = max(context.chunks) + 1 if context.chunks else None
        self._sequencer: Sequencer[bytes] = Sequencer(reorder_window, last)
        # Acknowledged once kept: a node that dies after the acknowledgement loses nothing
        # the client will not send again. The sequencer's count runs ahead of it.
        self._kept_through = self._sequencer.last_released
        self._turn_bytes = 0  # all of this turn's audio: the limit holds at any value
        self._kept_bytes = 0  # of it in the store, for a resume elsewhere
        self._max_turn_bytes = int(max_turn_seconds * BYTES_PER_SECOND)  # 0: no limit
        self._turn_cut = False  # the turn went over the limit: its rest is dropped

    @property
    def last_sequence(self) -> int | None:
        """The last numbered chunk passed on and kept: what partial transcripts acknowledge."""
        return self._kept_through

    async def push(self, event: AudioIn) -> None:
        """Raises ``SessionError`` for the client (bad audio, a turn past its limit)."""
        if event.complete_recording:
            decode = partial(_decode_whole, event.data, event.audio_format, self._limit)
            pcm = await asyncio.to_thread(decode)
            self._count(pcm)
            await self._engine.push_utterance(pcm, TriggerReason.VOICE_DATA)
            return
        if event.audio_format and event.audio_format != self._context.audioFormat:
            raise SessionError(
                ErrorCode.AUDIO_FORMAT,
                f"this session streams '{self._context.audioFormat}', not '{event.audio_format}'",
            )
        ready, notices = self._sequencer.accept(event.sequence, event.data)
        if event.end_of_turn:
            held, late = self._sequencer.drain()
            ready, notices = ready + held, notices + late
        for notice in notices:
            await self._tell(notice)
        released = bytearray()
        for data in ready:
            released += await self._forward(data)
        if event.end_of_turn:
            released += await self._flush()
        if event.sequence is not None:
            through = self._sequencer.last_released
            await self._keep(event.sequence, bytes(released))
            self._kept_through = through
            chunks = [*self._context.chunks, event.sequence]
            self._context.chunks = chunks[-KEPT_SEQUENCE_NUMBERS:]
        if event.end_of_turn:
            await self.new_turn()
            await self._engine.end_turn(TriggerReason.EXPLICIT)
        elif not self._turn_cut and 0 < self._max_turn_bytes < self._turn_bytes:
            # End the turn here: the engine answers what it heard, the rest is dropped.
            self._turn_cut = True
            await self._engine.end_turn(TriggerReason.EXPLICIT)
            seconds = self._max_turn_bytes / BYTES_PER_SECOND
            raise SessionError(
                ErrorCode.TURN_TOO_LONG,
                f"a turn may hold {seconds:g} s of audio: the turn ends here, and the rest "
                "of it is dropped",
            )

    async def replay(self, turn_audio: list[tuple[int, bytes]]) -> None:
        """The turn under way when the session left another node (or connection):
        the engine hears it again from its start, and the client's sequence goes on."""
        for _, pcm in turn_audio:
            await self._pass_on(pcm)

    async def handle(self, event: EngineEvent) -> None:
        """As a sink: a turn the engine heard ends this turn's counts."""
        if isinstance(event, TranscriptFinal):
            await self.new_turn()

    async def new_turn(self) -> None:
        """The user's turn is over: its counts start again, and the audio kept for a
        resume is no longer needed."""
        self._turn_bytes = self._kept_bytes = 0
        self._turn_cut = False
        await saved(self._store.clear_turn_audio(self._context.sessionId), "turn audio")

    async def release(self) -> None:
        """The session ends: chunks still waiting for a gap, and what the decoder holds
        back, go to the engine as they are. Audio that does not decode is dropped; an
        engine that fails on it raises."""
        held, _ = self._sequencer.drain()
        with contextlib.suppress(SessionError):
            for data in held:
                await self._forward(data)
            await self._flush()

    def close(self) -> None:
        self._decoder.close()

    async def _forward(self, data: bytes) -> bytes:
        """Decode one chunk and pass it on; returns the audio passed on."""
        pcm = await self._decode(self._decoder.feed, data)
        if self._turn_cut:
            return b""  # decoded all the same: a stream's decoder must see every chunk
        await self._pass_on(pcm)
        return pcm

    async def _flush(self) -> bytes:
        """The end of a turn: the decoder's tail (resampler, webm demuxer) goes on too,
        and the next turn starts a decoder of its own (a browser's next recording
        starts a new webm stream)."""
        tail = await self._decode(lambda _: self._decoder.flush(), b"")
        self._decoder.close()
        self._decoder = InputDecoder(self._context.audioFormat, self._limit)
        if tail and not self._turn_cut:
            await self._pass_on(tail)
        return tail

    async def _decode(self, step: Callable[[bytes], bytes], data: bytes) -> bytes:
        try:
            if self._decoder.blocking:  # a webm chunk waits for its decoder thread
                return await asyncio.to_thread(step, data)
            return step(data)
        except AudioFormatError as exc:
            raise _audio_error(exc) from exc

    async def _pass_on(self, pcm: bytes) -> None:
        self._count(pcm)
        await self._engine.push_audio(pcm)

    def _count(self, pcm: bytes) -> None:
        self._turn_bytes += len(pcm)
        self._heard(pcm)

    async def _keep(self, sequence: int, pcm: bytes) -> None:
        """Numbered audio goes to the store before it is acknowledged, so that another
        node can resume the turn; a turn's first ``KEPT_TURN_AUDIO_BYTES`` at most."""
        if pcm and self._kept_bytes + len(pcm) <= KEPT_TURN_AUDIO_BYTES:
            self._kept_bytes += len(pcm)
            write = self._store.save_turn_audio(self._context.sessionId, sequence, pcm)
            await saved(write, "turn audio")


def _decode_whole(data: bytes, audio_format: str | None, limit: DecodeLimit) -> bytes:
    """A whole recording: a file (its container says what it holds), or raw pcm16 when
    the message says so."""
    try:
        if audio_format not in RAW_FORMATS:
            return decode_file(data, limit)
        decoder = InputDecoder(audio_format, limit)
        try:
            return decoder.feed(data) + decoder.flush()
        finally:
            decoder.close()
    except AudioFormatError as exc:
        raise _audio_error(exc) from exc


def _audio_error(exc: AudioFormatError) -> SessionError:
    code = ErrorCode.TURN_TOO_LONG if isinstance(exc, AudioTooLong) else ErrorCode.AUDIO_FORMAT
    return SessionError(code, str(exc))
