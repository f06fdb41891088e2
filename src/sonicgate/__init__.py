"""sonicgate: a self-hostable real-time speech-to-speech gateway."""

__version__ = "0.1.0"
