"""Whole-buffer conversions between pcm16 and the formats clients use."""

from __future__ import annotations

import base64
import io
import wave

import av
import numpy as np
import soxr

RATE = 16_000


class AudioFormatError(ValueError):
    """Audio the gateway cannot use; the message is meant for the client."""


def check_pcm16(pcm: bytes) -> None:
    if len(pcm) % 2:
        raise AudioFormatError(f"pcm16 audio must have an even byte length, got {len(pcm)}")


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    if from_rate == to_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    return bytes(soxr.resample(samples, from_rate, to_rate).astype("<i2").tobytes())


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def decode_wav(data: bytes) -> bytes:
    """A RIFF file of any rate, width and channel count -> 16 kHz mono pcm16."""
    try:
        with wave.open(io.BytesIO(data)) as reader:
            width, channels = reader.getsampwidth(), reader.getnchannels()
            rate, frames = reader.getframerate(), reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioFormatError(f"not a valid WAV file: {exc}") from exc
    if width == 1:
        samples = (np.frombuffer(frames, dtype=np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768
    elif width == 3:
        raw = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        samples = np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.float32) / 2**23
    elif width == 4:
        samples = np.frombuffer(frames, dtype="<i4").astype(np.float32) / 2**31
    else:
        raise AudioFormatError(f"unsupported WAV sample width: {width * 8} bits")
    mono = samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples
    return float_to_pcm16(soxr.resample(mono, rate, RATE) if rate != RATE else mono)


def float_to_pcm16(samples: np.ndarray) -> bytes:
    return bytes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def decode_file(data: bytes) -> bytes:
    """Any complete container PyAV reads (webm, ogg, mp3, wav) -> 16 kHz mono pcm16."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioFormatError("the file has no audio stream")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            out = bytearray()
            for frame in container.decode(audio=0):
                for converted in resampler.resample(frame):
                    out += bytes(converted.planes[0])[: converted.samples * 2]
            for converted in resampler.resample(None):
                out += bytes(converted.planes[0])[: converted.samples * 2]
            return bytes(out)
    except av.error.FFmpegError as exc:
        raise AudioFormatError(f"could not decode the audio: {exc}") from exc


def mp3_data_url(pcm: bytes, rate: int) -> str:
    """The first seed's ``audioResponse``: ``data:audio/mp3;base64,...``."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return "data:audio/mp3;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
