"""The local cascade engine (VAD, Whisper, small LLM, TTS on CPU)."""

from sonicgate.engines.local.engine import LocalEngine

__all__ = ["LocalEngine"]
