"""Whole-buffer conversions between pcm16 and the formats clients use."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
import pybase64
import soxr

RATE = 16_000  # the gateway's internal format: 16 kHz mono signed 16-bit little-endian
BYTES_PER_SECOND = RATE * 2
MIN_RATE, MAX_RATE = 4_000, 384_000
MP3_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
# Codecs accepted inside files and streams: what browsers, phones and recorders send.
# Others are refused, FLAC first: digital silence packs a thousand to one, so 100 KB
# of it would decode to a gigabyte.
CODECS = frozenset(
    {"opus", "libopus", "vorbis", "mp3", "mp3float", "aac", "pcm_mulaw", "pcm_alaw"}
    | {f"pcm_{kind}" for kind in ("u8", "s16le", "s24le", "s32le", "f32le", "f64le")}
)
# Decoded audio may be at most this many times the bytes it came from, plus a little
# (headers): low-bitrate Opus comes to about 40 times as 16 kHz pcm16.
MAX_EXPANSION = 64
EXPANSION_SLACK = 64 * 1024
# No one message decodes to more than this, whatever the turn limit.
MAX_DECODED_SECONDS = 600.0


class AudioFormatError(ValueError):
    """Audio the gateway cannot use; the message is meant for the client."""


class AudioTooLong(AudioFormatError):
    """Audio that decodes to more than its limit allows."""


@dataclass(frozen=True, slots=True)
class DecodeLimit:
    """How much 16 kHz pcm16 an input may decode to: ``max_seconds`` at most (the
    turn's limit, ``MAX_DECODED_SECONDS`` at most), and ``MAX_EXPANSION`` times the
    input's size. Decoding stops as soon as it would pass either: nothing decoded is
    ever larger in memory."""

    max_seconds: float = 0.0  # 0: MAX_DECODED_SECONDS

    def check(self, decoded: int, input_bytes: int) -> None:
        """For a whole input: ``decoded`` bytes so far of one of ``input_bytes``."""
        self.check_expansion(decoded, input_bytes)
        self.check_length(decoded)

    def check_expansion(self, decoded: int, input_bytes: int) -> None:
        if decoded > MAX_EXPANSION * input_bytes + EXPANSION_SLACK:
            raise AudioFormatError(
                f"{input_bytes} bytes of audio decode to more than {MAX_EXPANSION} times "
                "their size: refused"
            )

    def check_length(self, decoded: int) -> None:
        seconds = min(self.max_seconds or MAX_DECODED_SECONDS, MAX_DECODED_SECONDS)
        if decoded > seconds * BYTES_PER_SECOND:
            raise AudioTooLong(f"the audio lasts more than {seconds:g} s: it was dropped")


def check_pcm16(pcm: bytes) -> None:
    if len(pcm) % 2:
        raise AudioFormatError(f"pcm16 audio must have an even byte length, got {len(pcm)}")


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Mono pcm16 at ``from_rate`` -> mono pcm16 at ``to_rate``."""
    check_pcm16(pcm)
    if from_rate == to_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    return bytes(soxr.resample(samples, from_rate, to_rate).astype("<i2").tobytes())


class StreamResampler:
    """Mono pcm16 chunks of one stream from ``from_rate`` to ``to_rate``, with the
    filter's state carried across chunks: no seam where one chunk meets the next."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="int16")

    def feed(self, pcm: bytes) -> bytes:
        check_pcm16(pcm)
        samples = np.frombuffer(pcm, dtype="<i2")
        return bytes(self._stream.resample_chunk(samples).astype("<i2").tobytes())

    def flush(self) -> bytes:
        last = self._stream.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
        return bytes(last.astype("<i2").tobytes())


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """Mono pcm16 -> a complete WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def decode_wav(data: bytes, limit: DecodeLimit | None = None) -> bytes:
    """A PCM WAV file of any rate, width and channel count -> 16 kHz mono pcm16."""
    limit = limit or DecodeLimit()
    try:
        with wave.open(io.BytesIO(data)) as reader:
            width, channels = reader.getsampwidth(), reader.getnchannels()
            rate, width_all = reader.getframerate(), max(1, width * channels)
            # How long it is, from the header (which may say "unknown": all 1s) and the
            # bytes actually there: refused before a byte of it is read.
            count = min(reader.getnframes(), len(data) // width_all)
            _check_rate(rate)
            limit.check(count * RATE // rate * 2, len(data))
            frames = reader.readframes(count)
    except wave.Error as exc:
        # `wave` reads integer PCM only; float WAVs (and any other codec) go to FFmpeg,
        # whose codecs are checked against the list.
        if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            return decode_file(data, limit)
        raise AudioFormatError(f"not a valid WAV file: {exc}") from exc
    except (EOFError, RuntimeError) as exc:  # `wave` raises these on truncated chunks
        raise AudioFormatError("not a valid WAV file: it is truncated or malformed") from exc
    if width not in (1, 2, 3, 4):
        raise AudioFormatError(f"unsupported WAV sample width: {width * 8} bits")
    frame = width * channels
    out = bytearray()
    resampler = soxr.ResampleStream(rate, RATE, 1, dtype="float32") if rate != RATE else None
    frames = frames[: len(frames) - len(frames) % frame]  # a cut last frame is dropped
    # A second at a time, so the float copies stay small whatever the file's size.
    for start in range(0, len(frames), rate * frame):
        mono = _mono(frames[start : start + rate * frame], width, channels)
        out += _float_to_pcm16(resampler.resample_chunk(mono) if resampler else mono)
    if resampler is not None:
        out += _float_to_pcm16(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    return bytes(out)


def _mono(frames: bytes, width: int, channels: int) -> npt.NDArray[np.float32]:
    if width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 2**15
    elif width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        samples = np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.float32) / 2**23
    else:
        samples = (np.frombuffer(frames, dtype="<i4") / 2**31).astype(np.float32)
    return samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)


def _check_rate(rate: int) -> None:
    # Bounds the work: resampling 1 Hz audio to 16 kHz would multiply its size by 16000.
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFormatError(f"unsupported sample rate {rate} Hz")


def _float_to_pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    return np.clip(np.round(samples * 2**15), -(2**15), 2**15 - 1).astype("<i2").tobytes()


def decode_file(data: bytes, limit: DecodeLimit | None = None) -> bytes:
    """A complete file in a listed codec (webm or ogg Opus, mp3, wav, ...) -> 16 kHz
    mono pcm16, within ``limit``."""
    limit = limit or DecodeLimit()
    out = bytearray()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioFormatError("the file has no audio stream")
            check_codec(container.streams.audio[0])
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            for frame in container.decode(audio=0):
                _check_rate(frame.sample_rate)
                out += to_pcm16(resampler, frame)
                limit.check(len(out), len(data))
            out += to_pcm16(resampler, None)
    except av.error.FFmpegError as exc:
        raise AudioFormatError(f"could not decode the audio file: {exc.strerror}") from exc
    return bytes(out)


def check_codec(stream: av.audio.stream.AudioStream) -> None:
    # FFmpeg gives a codec it cannot decode no context.
    name = stream.codec_context.name if stream.codec_context is not None else "unknown"
    if name not in CODECS:
        raise AudioFormatError(
            f"audio coded as '{name}' is not accepted: send pcm16, PCM WAV, Opus (webm or "
            "ogg), mp3 or AAC"
        )


def to_pcm16(resampler: av.AudioResampler, frame: av.AudioFrame | None) -> bytes:
    """Run one decoded frame (``None`` flushes) through a s16 mono resampler."""
    # The plane can be padded past the last sample, hence the slice.
    return b"".join(
        bytes(converted.planes[0])[: converted.samples * 2]
        for converted in resampler.resample(frame)
    )


def mp3_data_url(pcm: bytes, rate: int) -> str:
    """Mono pcm16 -> ``data:audio/mp3;base64,...`` (a whole reply, for one client dialect)."""
    if rate not in MP3_RATES:  # LAME encodes these rates only
        pcm, rate = resample(pcm, rate, 24_000), 24_000
    check_pcm16(pcm)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        if pcm:
            samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return "data:audio/mp3;base64," + pybase64.b64encode_as_string(buffer.getvalue())
