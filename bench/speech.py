"""Test speech made on the spot with espeak-ng, as 16 kHz mono pcm16."""

from __future__ import annotations

import io
import subprocess
import wave

import numpy as np
import soxr


def speak(text: str, voice: str = "en-us", words_per_minute: int = 165) -> bytes:
    """Synthesize ``text``; leading and trailing silence trimmed."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    audio = soxr.resample(samples.astype(np.float32) / 32768, rate, 16_000)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    if loud.size:
        audio = audio[loud[0] : loud[-1] + 1]
    pcm: bytes = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * 16_000) * 2)
