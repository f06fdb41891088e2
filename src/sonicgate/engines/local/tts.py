"""Speech synthesis: hibari (24 kHz, the default) or a Piper voice (22.05 kHz).

Both come out at the same loudness, so switching voices does not change the level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from hibari import Hibari
from numpy.typing import NDArray

from sonicgate.models import PIPER_JOE

# hibari alone sits near -27 dBFS RMS, its peaks ~18 dB higher: lift speech to
# about -16 dBFS RMS and bend the few peaks above the knee (-4 dBFS) smoothly
# under a -1 dBFS ceiling (headroom for lossy codecs) instead of clipping them.
# The gain cap keeps near-silence (a lone comma) from becoming audible noise.
TARGET_RMS = 10 ** (-16 / 20)
MAX_GAIN = 10 ** (20 / 20)
KNEE = 10 ** (-4 / 20)
CEILING = 10 ** (-1 / 20)
# A reply is synthesized a piece at a time, each piece played straight after the
# one before. The voices frame every piece with silence (hibari: ~0.2 s of zeros
# at each end), which made a 0.5-0.7 s hole at every join, where speaking whole
# pauses ~0.25 s at a comma, and held back the first word. So a piece keeps a
# short lead-in before its first sound and a natural pause after its last; sound
# is anything within 50 dB of the piece's peak.
QUIET = 10 ** (-50 / 20)
LEAD_IN = 0.02  # seconds
CLAUSE_PAUSE = 0.2
SENTENCE_PAUSE = 0.35
SENTENCE_ENDS = (".", "!", "?")


class Synthesizer(Protocol):
    sample_rate: int
    voices: tuple[str, ...]

    def synthesize(self, text: str) -> bytes:
        """Mono pcm16 little-endian at ``sample_rate``; empty when there is nothing to say."""
        ...


def trim(audio: NDArray[np.float32], sample_rate: int, text: str) -> NDArray[np.float32]:
    """``audio`` of ``text`` with its silence cut to a lead-in and a natural pause."""
    sound = np.flatnonzero(np.abs(audio) > QUIET * np.max(np.abs(audio), initial=0.0))
    if not sound.size:
        return audio[:0]
    ends_sentence = text.rstrip("\"')] ").endswith(SENTENCE_ENDS)
    pause = SENTENCE_PAUSE if ends_sentence else CLAUSE_PAUSE
    start = max(int(sound[0]) - int(LEAD_IN * sample_rate), 0)
    return audio[start : int(sound[-1]) + int(pause * sample_rate)]


def level(audio: NDArray[np.float32]) -> bytes:
    """Float samples to pcm16 at the common speech level, peaks softly limited."""
    if not audio.size:
        return b""
    audio = audio.copy()
    rms = float(np.sqrt(np.mean(np.square(audio))))
    if rms > 0:
        audio *= min(TARGET_RMS / rms, MAX_GAIN)
    loud = np.abs(audio) > KNEE
    room = CEILING - KNEE
    excess = (np.abs(audio[loud]) - KNEE) / room
    audio[loud] = np.sign(audio[loud]) * (KNEE + room * np.tanh(excess))
    return (audio * 32767).astype("<i2").tobytes()


class HibariSynthesizer:
    sample_rate: int = 24_000
    voices: tuple[str, ...] = (
        "heart",
    )  # the one voice inside the package (others download: not here)

    def __init__(self) -> None:
        self._tts = Hibari(voice="heart", threads=1)

    def synthesize(self, text: str) -> bytes:
        audio = np.asarray(self._tts(text), dtype=np.float32)
        return level(trim(audio, self.sample_rate, text))


class PiperSynthesizer:
    voices: tuple[str, ...] = ("joe",)

    def __init__(self, model: Path) -> None:
        from piper import PiperVoice  # an optional package: imported only when chosen

        # Piper's own phonemizer data (espeak-ng, inside the wheel): nothing downloads.
        self._voice = PiperVoice.load(model)
        self.sample_rate: int = self._voice.config.sample_rate

    def synthesize(self, text: str) -> bytes:
        chunks = [chunk.audio_float_array for chunk in self._voice.synthesize(text)]
        if not chunks:
            return b""
        audio = np.concatenate(chunks).astype(np.float32)
        return level(trim(audio, self.sample_rate, text))


def load_synthesizer(name: str, model: Path) -> Synthesizer:
    """The synthesizer for a TTS model of the catalog (``sonicgate.models``)."""
    if name == PIPER_JOE.name:
        return PiperSynthesizer(model)
    return HibariSynthesizer()
