"""Silero VAD v6 (ONNX, shipped inside faster-whisper), streamed frame by frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

FRAME = 512
CONTEXT = 64  # Silero v5+ sees the last 64 samples of the previous frame


class SileroVad:
    """The model, loaded once and shared by every stream."""

    def __init__(self, path: Path) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=options
        )


class VadStream:
    """Per-conversation state: recurrent h/c and the context samples."""

    def __init__(self, vad: SileroVad) -> None:
        self._session = vad.session
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = bytearray()  # bytes, not samples: a chunk may end mid-sample

    def process(self, pcm: bytes) -> list[float]:
        """Speech probability of each whole 512-sample frame; leftovers wait."""
        self._pending += pcm
        whole = len(self._pending) - len(self._pending) % (FRAME * 2)
        chunk = bytes(self._pending[:whole])
        del self._pending[:whole]
        samples = np.frombuffer(chunk, dtype="<i2").astype(np.float32)
        samples /= 32768
        probabilities: list[float] = []
        for start in range(0, len(samples), FRAME):
            frame = samples[start : start + FRAME]
            batch = np.concatenate([self._context, frame]).reshape(1, -1)
            output, self._h, self._c = self._session.run(
                None, {"input": batch, "h": self._h, "c": self._c}
            )
            self._context = frame[-CONTEXT:]
            probabilities.append(float(output.reshape(-1)[0]))
        return probabilities
