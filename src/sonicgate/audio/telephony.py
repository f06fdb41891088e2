"""The telephone's audio: G.711 μ-law at 8 kHz, in 20 ms frames.

Twilio Media Streams carry 8-bit μ-law (PCMU) at 8 kHz both ways. The codec is two
lookup tables built once with numpy by the reference algorithm (Sun's g711.c, which
the late ``audioop`` ran: the tables match it bit for bit), so a frame is one lookup
each way. Rates change through soxr stream resamplers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from sonicgate.audio.formats import RATE, StreamResampler, check_pcm16

PHONE_RATE = 8_000
FRAME_SECONDS = 0.02
FRAME_BYTES = int(PHONE_RATE * FRAME_SECONDS)  # one byte a sample
MULAW_SILENCE = 0xFF  # μ-law's code for 0
_BIAS = 0x84  # added to the magnitude so that every segment starts at a power of two
_CLIP = 8159  # the largest 14-bit magnitude the code holds


def _decode_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF  # codes are sent inverted
    magnitude = (((codes & 0x0F) << 3) + _BIAS) << ((codes >> 4) & 0x07)
    return np.where(codes & 0x80, _BIAS - magnitude, magnitude - _BIAS).astype("<i2")


def _encode_table() -> npt.NDArray[np.uint8]:
    samples = np.arange(-32768, 32768, dtype=np.int32)
    linear = samples >> 2  # μ-law codes 14 bits
    negative = linear < 0
    magnitude = np.minimum(np.where(negative, -linear, linear), _CLIP) + (_BIAS >> 2)
    segment = np.maximum(np.floor(np.log2(magnitude)).astype(np.int32) - 5, 0)
    code = np.where(
        segment > 7, 0x7F, (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    ) ^ np.where(negative, 0x7F, 0xFF)
    table = np.empty(65536, dtype=np.uint8)
    table[samples.astype(np.uint16)] = code  # indexed by the sample's bits as unsigned
    return table


_DECODE = _decode_table()
_ENCODE = _encode_table()


def _decode(mulaw: bytes) -> npt.NDArray[np.int16]:
    return _DECODE[np.frombuffer(mulaw, dtype=np.uint8)]


def mulaw_to_pcm16(mulaw: bytes) -> bytes:
    return _decode(mulaw).tobytes()


def pcm16_to_mulaw(pcm: bytes) -> bytes:
    check_pcm16(pcm)
    return bytes(_ENCODE[np.frombuffer(pcm, dtype="<u2")].tobytes())


class CallerAudio:
    """The caller's μ-law at 8 kHz -> the engines' 16 kHz pcm16, frame by frame.

    soxr's filtering qualities hold 20 ms frames back to process them in blocks
    (measured at 8 -> 16 kHz: 30 ms on average and up to 60 ms for LQ, 60 and 113 ms
    for HQ), which would delay every end of speech; its quick (cubic) quality answers
    each frame at once. Telephone speech stops at 3.4 kHz, and what the interpolation
    mirrors above 4 kHz stays 25 dB down."""

    def __init__(self) -> None:
        self._stream = soxr.ResampleStream(PHONE_RATE, RATE, 1, dtype="int16", quality="QQ")

    def feed(self, mulaw: bytes) -> bytes:
        return bytes(self._stream.resample_chunk(_decode(mulaw)).astype("<i2").tobytes())


class ReplyAudio:
    """An engine's pcm16, at whatever rate it speaks, -> 20 ms μ-law frames at 8 kHz.

    Audio short of a whole frame waits for more, so a reply streamed in small
    chunks plays without gaps; ``flush`` ends the reply."""

    def __init__(self) -> None:
        self._resamplers: dict[int, StreamResampler] = {}
        self._pending = bytearray()  # μ-law short of a frame

    def feed(self, pcm: bytes, rate: int) -> list[bytes]:
        if rate != PHONE_RATE:
            resampler = self._resamplers.get(rate)
            if resampler is None:
                resampler = self._resamplers[rate] = StreamResampler(rate, PHONE_RATE)
            pcm = resampler.feed(pcm)
        self._pending += pcm16_to_mulaw(pcm)
        return self._whole_frames()

    def _whole_frames(self) -> list[bytes]:
        whole = len(self._pending) - len(self._pending) % FRAME_BYTES
        frames = [bytes(self._pending[i : i + FRAME_BYTES]) for i in range(0, whole, FRAME_BYTES)]
        del self._pending[:whole]
        return frames

    def flush(self) -> list[bytes]:
        """The end of a reply: what the resamplers held back, the last frame padded
        with silence."""
        for resampler in self._resamplers.values():
            self._pending += pcm16_to_mulaw(resampler.flush())
        self._resamplers.clear()
        if self._pending:
            self._pending += bytes([MULAW_SILENCE]) * (-len(self._pending) % FRAME_BYTES)
        return self._whole_frames()

    def drop(self) -> None:
        """The reply was cut: nothing of it is kept."""
        self._resamplers.clear()
        self._pending.clear()
