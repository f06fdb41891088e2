"""Events for UIs: session, transcription and response events."""
