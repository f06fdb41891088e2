"""Incremental decoding of a connection's audio stream to 16 kHz mono pcm16.

``webm`` (Opus from MediaRecorder) arrives split across messages and only the
first carries the header, so a background thread runs FFmpeg's demuxer over a
blocking pipe: chunks go in as they arrive, decoded audio comes out while the
stream is still open.
"""

from __future__ import annotations

import threading

import av

from sonicgate.audio.formats import (
    RATE,
    AudioFormatError,
    DecodeLimit,
    StreamResampler,
    check_codec,
    check_pcm16,
    decode_wav,
    to_pcm16,
)

# pcm16 is 16 kHz; pcm16-24k is the OpenAI Realtime API's 24 kHz input.
FORMATS = ("pcm16", "wav", "webm", "pcm16-24k")
REALTIME_RATE = 24_000
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # every WebM/Matroska stream starts with it
FEED_WAIT = 0.25  # seconds ``feed`` waits for the chunk it was given to be decoded
JOIN_WAIT = 5.0  # seconds ``flush``/``close`` wait for the decoder thread to end


class _Pipe:
    """A file-like object whose ``read`` waits for bytes written from another thread."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._closed = False
        self._reader_waiting = False
        self._cond = threading.Condition()

    def write(self, data: bytes) -> None:
        with self._cond:
            if not self._closed:
                self._data += data
                self._cond.notify_all()

    def close(self) -> None:
        """End of stream: ``read`` returns what is left, then ``b""``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._data and not self._closed:
                self._reader_waiting = True
                self._cond.notify_all()
                self._cond.wait()
            self._reader_waiting = False
            size = len(self._data) if size < 0 else min(size, len(self._data))
            out = bytes(self._data[:size])
            del self._data[:size]
            return out

    def wait_drained(self, timeout: float) -> None:
        """Wait until the reader has used up every byte and asks for more (or it is closed)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or (self._reader_waiting and not self._data), timeout
            )


class _WebmStream:
    """Decodes one WebM/Opus stream on a thread started by the first chunk.

    What it decodes stays within ``limit``: the whole stream within the expansion
    ratio of the bytes fed so far, and what waits to be taken within the length."""

    def __init__(self, limit: DecodeLimit) -> None:
        self._limit = limit
        self._fed = 0  # bytes in, so far
        self._decoded = 0  # bytes out, so far
        self._pipe = _Pipe()
        self._out = bytearray()
        self._lock = threading.Lock()
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            with av.open(self._pipe, mode="r", format="webm") as container:
                if not container.streams.audio:
                    raise AudioFormatError("it has no audio track")
                check_codec(container.streams.audio[0])
                resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
                for frame in container.decode(audio=0):
                    self._emit(to_pcm16(resampler, frame))
                self._emit(to_pcm16(resampler, None))
        except Exception as exc:  # the thread's end: every failure goes to the client
            detail = exc.strerror if isinstance(exc, av.error.FFmpegError) else exc
            self._error = f"could not decode the webm stream: {detail}"
        finally:
            self._pipe.close()  # wakes a waiting ``feed`` and drops later writes

    def _emit(self, pcm: bytes) -> None:
        with self._lock:
            self._decoded += len(pcm)
            self._limit.check_expansion(self._decoded, self._fed)
            self._limit.check_length(len(self._out) + len(pcm))
            self._out += pcm

    def _take(self) -> bytes:
        if self._error is not None:
            raise AudioFormatError(self._error)
        with self._lock:
            out = bytes(self._out)
            self._out.clear()
        return out

    def feed(self, data: bytes) -> bytes:
        if self._thread is None:
            if not data:
                return b""
            # Fail fast on garbage: the demuxer would otherwise keep waiting for a header.
            if not data.startswith(EBML_MAGIC):
                raise AudioFormatError("not a webm stream: the first chunk lacks the EBML header")
            self._thread = threading.Thread(target=self._run, name="webm-decoder", daemon=True)
            self._thread.start()
        with self._lock:
            self._fed += len(data)
        self._pipe.write(data)
        self._pipe.wait_drained(FEED_WAIT)
        return self._take()

    def flush(self) -> bytes:
        self.close()
        return self._take()

    def close(self) -> None:
        self._pipe.close()
        if self._thread is not None:
            self._thread.join(JOIN_WAIT)


class InputDecoder:
    """One connection's audio in ``audio_format`` -> 16 kHz mono pcm16, within ``limit``."""

    def __init__(self, audio_format: str, limit: DecodeLimit | None = None) -> None:
        if audio_format not in FORMATS:
            raise AudioFormatError(
                f"unsupported audio format '{audio_format}'; use one of {', '.join(FORMATS)}"
            )
        self.audio_format = audio_format
        self._limit = limit or DecodeLimit()
        self._webm = _WebmStream(self._limit) if audio_format == "webm" else None
        self._resampler = (
            StreamResampler(REALTIME_RATE, RATE) if audio_format == "pcm16-24k" else None
        )

    @property
    def blocking(self) -> bool:
        """Whether ``feed`` may wait (on the webm decoder thread): then call it off the loop."""
        return self._webm is not None

    def feed(self, data: bytes) -> bytes:
        """Decode the next chunk; returns the audio decoded so far (maybe ``b""``)."""
        if self._webm is not None:
            return self._webm.feed(data)
        if self.audio_format == "wav":
            return decode_wav(data, self._limit)  # each chunk is a whole WAV file
        if self._resampler is not None:
            return self._resampler.feed(data)
        check_pcm16(data)
        return data

    def flush(self) -> bytes:
        """End of stream: the audio still held back."""
        if self._resampler is not None:
            return self._resampler.flush()
        return self._webm.flush() if self._webm is not None else b""

    def close(self) -> None:
        """Stop decoding; ends the decoder thread, if any."""
        if self._webm is not None:
            self._webm.close()
