"""Whole-buffer conversions between pcm16 and the formats clients use."""

from __future__ import annotations

import base64
import io
import wave

import av
import numpy as np
import numpy.typing as npt
import soxr

RATE = 16_000  # the gateway's internal format: 16 kHz mono signed 16-bit little-endian
MIN_RATE, MAX_RATE = 4_000, 384_000
MP3_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)


class AudioFormatError(ValueError):
    """Audio the gateway cannot use; the message is meant for the client."""


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


def decode_wav(data: bytes) -> bytes:
    """A PCM WAV file of any rate, width and channel count -> 16 kHz mono pcm16."""
    try:
        with wave.open(io.BytesIO(data)) as reader:
            width, channels = reader.getsampwidth(), reader.getnchannels()
            rate, frames = reader.getframerate(), reader.readframes(reader.getnframes())
    except wave.Error as exc:
        # `wave` reads integer PCM only; float and compressed WAVs are left to FFmpeg.
        if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            return decode_file(data)
        raise AudioFormatError(f"not a valid WAV file: {exc}") from exc
    except (EOFError, RuntimeError) as exc:  # `wave` raises these on truncated chunks
        raise AudioFormatError("not a valid WAV file: it is truncated or malformed") from exc
    _check_rate(rate)
    frames = frames[: len(frames) // (width * channels) * (width * channels)]  # drop a torn frame
    if width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 2**15
    elif width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        samples = np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.float32) / 2**23
    elif width == 4:
        samples = (np.frombuffer(frames, dtype="<i4") / 2**31).astype(np.float32)
    else:
        raise AudioFormatError(f"unsupported WAV sample width: {width * 8} bits")
    mono = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return _float_to_pcm16(soxr.resample(mono, rate, RATE) if rate != RATE else mono)


def _check_rate(rate: int) -> None:
    # Bounds the work: resampling 1 Hz audio to 16 kHz would multiply its size by 16000.
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFormatError(f"unsupported sample rate {rate} Hz")


def _float_to_pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    return np.clip(np.round(samples * 2**15), -(2**15), 2**15 - 1).astype("<i2").tobytes()


def decode_file(data: bytes) -> bytes:
    """Any complete file FFmpeg reads (webm, ogg, mp3, wav, ...) -> 16 kHz mono pcm16."""
    out = bytearray()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioFormatError("the file has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            for frame in container.decode(audio=0):
                _check_rate(frame.sample_rate)
                out += to_pcm16(resampler, frame)
            out += to_pcm16(resampler, None)
    except av.error.FFmpegError as exc:
        raise AudioFormatError(f"could not decode the audio file: {exc.strerror}") from exc
    return bytes(out)


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
    return "data:audio/mp3;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
