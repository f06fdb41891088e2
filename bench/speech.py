"""Test speech made on the spot, as 16 kHz mono pcm16: espeak-ng's (``speak``),
hibari's (``natural``: a neural voice, whose intonation a turn detector can read),
or Piper's "joe" (``joe``: another neural voice, a man's, the optional TTS's)."""

from __future__ import annotations

import io
import re
import subprocess
import wave
from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import soxr
from hibari import Hibari
from numpy.typing import NDArray

from sonicgate.config import default_data_dir
from sonicgate.engines.local.tts import PiperSynthesizer
from sonicgate.models import PIPER_JOE, Selection, locate

RATE = 16_000
Voice = Callable[[str], bytes]  # text -> 16 kHz mono pcm16, leading and trailing silence trimmed


def speak(text: str, voice: str = "en-us", words_per_minute: int = 165) -> bytes:
    """Synthesize ``text`` with espeak-ng; leading and trailing silence trimmed."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    return _trimmed(soxr.resample(samples.astype(np.float32) / 32768, rate, RATE))


@cache
def _hibari() -> Hibari:
    return Hibari(voice="heart", threads=1)


def natural(text: str) -> bytes:
    """Synthesize ``text`` in hibari's voice (the gateway's own); the same every time."""
    audio = np.asarray(_hibari()(text, seed=0), dtype=np.float32)
    audio = soxr.resample(audio, Hibari.sample_rate, RATE)
    return _trimmed(0.5 * audio / max(float(np.abs(audio).max()), 1e-6))  # peaks at -6 dBFS


@cache
def _joe() -> PiperSynthesizer:
    return PiperSynthesizer(locate(default_data_dir(), Selection(tts=PIPER_JOE.name)).tts)


def joe(text: str) -> bytes:
    """Synthesize ``text`` in Piper's "joe" voice; it varies a little from run to run
    (Piper's model draws noise for a natural delivery)."""
    voice = _joe()
    audio = np.frombuffer(voice.synthesize(text), dtype="<i2").astype(np.float32) / 32768
    return _trimmed(soxr.resample(audio, voice.sample_rate, RATE))


def _trimmed(audio: NDArray[np.float32]) -> bytes:
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    if loud.size:
        audio = audio[loud[0] : loud[-1] + 1]
    pcm: bytes = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def paused(text: str, pauses: Sequence[float], voice: Voice = natural) -> tuple[bytes, list[float]]:
    """``text`` said with a pause (seconds) at each ``|``, and where each pause starts (s).

    Said in one go, with a comma at each bar, so the words before a pause sound
    unfinished, as a speaker's do who goes on; each comma's short gap is then
    stretched to its pause. The gap is the quiet stretch nearest to where the words
    before the bar end when said alone.
    """
    pieces = [piece.strip() for piece in text.split("|")]
    if len(pieces) != len(pauses) + 1:
        raise ValueError(f"{text!r}: {len(pieces) - 1} bars for {len(pauses)} pauses")
    said = np.frombuffer(voice(", ".join(pieces)), dtype="<i2")
    out: list[NDArray[np.int16]] = []
    starts: list[float] = []
    cut = position = 0  # in the speech as said, and as returned
    for index, pause in enumerate(pauses):
        alone = len(voice(", ".join(pieces[: index + 1]))) // 2
        start, end = _nearest_gap(said, alone, after=cut)
        gap = np.zeros(round(pause * RATE), np.int16)
        out += [said[cut:start], gap]
        position += start - cut
        starts.append(position / RATE)
        position += len(gap)
        cut = end
    out.append(said[cut:])
    return np.concatenate(out).astype("<i2").tobytes(), starts


def _nearest_gap(samples: NDArray[np.int16], near: int, after: int) -> tuple[int, int]:
    """The quiet stretch (10 ms blocks well under the speech's level) nearest ``near``."""
    block = RATE // 100
    count = len(samples) // block
    blocks = samples[: count * block].astype(np.float32).reshape(count, block)
    level = np.sqrt(np.mean(blocks**2, axis=1))
    quiet = "".join("q" if value < 0.1 * level.mean() else "s" for value in level)
    gaps = [
        (match.start() * block, match.end() * block)
        for match in re.finditer("q+", quiet)
        if match.start() > 0 and match.end() < count and match.start() * block >= after
    ]
    if not gaps:
        raise ValueError("no pause in the speech where a comma was")
    return min(gaps, key=lambda gap: abs(gap[0] - near))
