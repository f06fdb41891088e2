"""The engine interface every speech-to-speech backend implements.

An ``Engine`` is a process-wide plugin (models loaded once, clients pooled);
``Engine.start`` opens one ``EngineSession`` per conversation. Sessions take
16 kHz mono pcm16 audio and text in, and yield internal events out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from sonicgate.events import EngineEvent, TriggerReason

INPUT_SAMPLE_RATE = 16_000


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    text: str


@dataclass(frozen=True, slots=True)
class Capabilities:
    languages: tuple[str, ...]
    models: tuple[str, ...]
    voices: tuple[str, ...]
    output_sample_rate: int = 24_000


@dataclass(frozen=True, slots=True)
class EngineConfig:
    language: str = "en-US"
    voice: str | None = None
    system_prompt: str = (
        "You are a helpful voice assistant. Your words are spoken aloud: answer in one or "
        "two short, plain sentences, with no code, lists, markdown or emoji."
    )
    history: tuple[Message, ...] = ()
    text_only: bool = False
    # Per-session secrets (for cloud engines). Used for this session only:
    # never logged, never stored; excluded from repr.
    credentials: dict[str, str] = field(default_factory=dict, repr=False)


class EngineError(Exception):
    """A configuration or runtime problem the client should be told about."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EngineSession(Protocol):
    async def push_audio(self, pcm: bytes) -> None:
        """Feed 16 kHz mono pcm16 audio, in any chunk size."""

    async def push_text(self, text: str) -> None:
        """A typed user turn."""

    async def end_turn(self, reason: TriggerReason) -> bool:
        """The client says the user turn is complete: answer what was heard.

        True when an answer is coming (there was speech not yet answered).
        """

    async def push_utterance(self, pcm: bytes, reason: TriggerReason) -> None:
        """A complete recording of one user turn: answer it as a whole,
        without endpointing inside it."""

    async def interrupt(self) -> None:
        """Stop the current reply (the client pressed stop)."""

    def events(self) -> AsyncIterator[EngineEvent]:
        """Output events, until ``close``."""
        ...

    async def close(self) -> None: ...


def supports_language(capabilities: Capabilities, language: str) -> bool:
    """Match on the primary subtag: an English model serves en-US and en-GB alike.
    ``*`` is every language (an engine that does not listen to the words)."""
    primary = language.split("-")[0].lower()
    return any(tag == "*" or tag.split("-")[0].lower() == primary for tag in capabilities.languages)


class Engine(Protocol):
    name: str

    def capabilities(self) -> Capabilities: ...

    async def start(self, config: EngineConfig) -> EngineSession:
        """Open a conversation; raises ``EngineError`` on bad config."""
        ...

    async def aclose(self) -> None: ...
