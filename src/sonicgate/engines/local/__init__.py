"""The local cascade engine (VAD, Whisper, small LLM, TTS on CPU)."""

from sonicgate.engines.local.engine import LocalEngine, LocalModels

__all__ = ["LocalEngine", "LocalModels"]
