"""hibari TTS (24 kHz), its quiet output brought to a normal level."""

from __future__ import annotations

import numpy as np
from hibari import Hibari

TARGET_PEAK = 0.7  # about -3 dBFS peaks; hibari alone sits near -27 dBFS


class Synthesizer:
    sample_rate = 24_000
    voices = ("heart",)  # the one voice inside the package (others download: not here)

    def __init__(self) -> None:
        self._tts = Hibari(voice="heart", threads=1)

    def synthesize(self, text: str) -> bytes:
        audio = np.asarray(self._tts(text), dtype=np.float32)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak > 0:
            audio = audio * (TARGET_PEAK / peak)
        return bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
