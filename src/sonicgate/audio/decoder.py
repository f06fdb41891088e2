"""Incremental decoding of a connection's audio stream to 16 kHz mono pcm16.

``webm`` (Opus from MediaRecorder) arrives split across messages and only the
first carries the header, so a background thread runs PyAV's demuxer over a
blocking pipe: chunks go in as they arrive, decoded audio comes out while the
stream is still open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import av

from sonicgate.audio.formats import RATE, AudioFormatError, check_pcm16, decode_wav

FORMATS = ("pcm16", "wav", "webm")
EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # every WebM/Matroska stream starts with it


class _Pipe:
    """A file-like object whose ``read`` waits for bytes fed from another thread."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._closed = False
        self._cond = threading.Condition()

    def write(self, data: bytes) -> None:
        with self._cond:
            self._data += data
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while not self._data and not self._closed:
                self._cond.wait()
            size = len(self._data) if size < 0 else min(size, len(self._data))
            out = bytes(self._data[:size])
            del self._data[:size]
            return out


class _WebmDecoder:
    def __init__(self) -> None:
        self._pipe = _Pipe()
        self._out = bytearray()
        self._lock = threading.Lock()
        self._error: str | None = None
        self._started = False
        self._thread = threading.Thread(target=self._run, name="webm-decoder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with av.open(self._pipe, format="webm", mode="r") as container:
                resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
                for frame in container.decode(audio=0):
                    for converted in resampler.resample(frame):
                        with self._lock:
                            self._out += bytes(converted.planes[0])[: converted.samples * 2]
        except (av.error.FFmpegError, ValueError, IndexError) as exc:
            self._error = f"could not decode the webm stream: {exc}"

    def _take(self) -> bytes:
        if self._error is not None:
            raise AudioFormatError(self._error)
        with self._lock:
            out = bytes(self._out)
            self._out.clear()
        return out

    def feed(self, data: bytes) -> bytes:
        if not self._started:
            # Fail fast on garbage: the demuxer would otherwise wait for more bytes.
            if not data.startswith(EBML_MAGIC):
                raise AudioFormatError("not a webm stream: the first chunk lacks the EBML header")
            self._started = True
        self._pipe.write(data)
        return self._take()

    def flush(self) -> bytes:
        self._pipe.close()
        self._thread.join(timeout=5)
        return self._take()

    def close(self) -> None:
        self._pipe.close()


def _pcm16(data: bytes) -> bytes:
    check_pcm16(data)
    return data


class InputDecoder:
    def __init__(self, audio_format: str) -> None:
        self.audio_format = audio_format
        self._webm: _WebmDecoder | None = None
        self._convert: Callable[[bytes], bytes]
        if audio_format == "pcm16":
            self._convert = _pcm16
        elif audio_format == "wav":
            self._convert = decode_wav
        elif audio_format == "webm":
            self._webm = _WebmDecoder()
            self._convert = self._webm.feed
        else:
            raise AudioFormatError(
                f"unsupported audio format '{audio_format}'; use one of {', '.join(FORMATS)}"
            )

    def feed(self, data: bytes) -> bytes:
        return self._convert(data)

    def flush(self) -> bytes:
        return self._webm.flush() if self._webm is not None else b""

    def close(self) -> None:
        if self._webm is not None:
            self._webm.close()
