"""OpenAI engines: the cascade (Whisper → chat → TTS through the HTTP API, or any
OpenAI-compatible server) and the Realtime API."""
