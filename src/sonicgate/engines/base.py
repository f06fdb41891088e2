"""The engine interface every speech-to-speech backend implements, and its contract.

An ``Engine`` is a process-wide plugin (models loaded once, clients pooled);
``Engine.start`` opens one ``EngineSession`` per conversation. Sessions take
16 kHz mono pcm16 audio and text in, and yield internal events out.

The contract (``tests/contract.py`` checks it, ``tests/test_engine_contract.py``
holds every engine to it):

- A turn is ``[SpeechStarted] TranscriptPartial* TranscriptFinal`` then the reply,
  ``(ResponseTextDelta | AudioOut)* ResponseTextFinal``, then ``TurnEnded``.
  ``TranscriptFinal`` opens a turn and ``TurnEnded`` always ends it; a turn with
  nothing to answer (empty transcript) has no reply in between.
- A typed turn (``push_text``) is its own ``TranscriptFinal`` (reason TEXT).
- Speech or text while a reply is under way is a barge-in: the reply ends first,
  ``Interrupted``, ``ResponseTextFinal`` with what the user received, and
  ``TurnEnded(interrupted=True)``; the new turn follows. ``interrupt`` (the
  client pressed stop) ends a reply the same way. A reply sent whole but still
  playing is stopped by an ``Interrupted`` alone, between turns.
- ``SpeechStarted`` and ``TranscriptPartial`` may come while a reply plays;
  ``Metrics`` (a turn's timings) and ``Usage`` (the conversation's running
  token count) whenever they are known.
- ``Error`` may come at any time; after one, ``TurnEnded`` may end a reply cut
  short without its final text. ``fatal`` means the session cannot go on (a
  ``FallbackEngine`` moves the conversation to another engine): the events may
  stop there, mid-turn.
- After ``close`` the events end: a reply under way is cut, nothing follows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from sonicgate.domain import Capabilities, GatewayError, History
from sonicgate.events import EngineEvent, TriggerReason, message_of

INPUT_SAMPLE_RATE = 16_000


@dataclass(frozen=True, slots=True)
class EngineConfig:
    language: str = "en-US"
    voice: str | None = None
    # Rules and worked examples: the examples raised the small default model's right
    # answers from 81 to 86 % in bench/answers.py, at no cost in time to first token.
    # Without the spelling one, both models said 'The word house is spelled "house."'.
    # The examples name nothing about the user: the small model repeats them. With a
    # user called Sam in them, "What is my name?" got "Sam"; with "You have not told me
    # your name yet.", it got that even after the user had said it.
    system_prompt: str = (
        "You are a friendly voice assistant. Everything you write is read aloud. "
        "Answer in one short sentence, the answer first, in plain spoken English: "
        "no lists, markdown, code, symbols or emoji. Be exact, and remember what "
        "the user told you. For example:\n"
        "User: What is four plus nine?\nAssistant: Four plus nine is 13.\n"
        "User: What colour is the sky on a clear day?\n"
        "Assistant: The sky is blue on a clear day.\n"
        "User: How do you spell the word tree?\n"
        "Assistant: Tree is spelled t r e e."
    )
    # The session's history, shared: the engine reads it, its events add to it.
    history: History = field(default_factory=History)
    text_only: bool = False
    # Per-session secrets (for cloud engines). Used for this session only:
    # never logged, never stored; excluded from repr.
    credentials: dict[str, str] = field(default_factory=dict, repr=False)


class EngineError(GatewayError):
    """A configuration or runtime problem of an engine, or of the service behind it."""


class BaseEngineSession:
    """The plumbing every engine session shares: the output queue that ``events``
    reads, the end of it at ``close``, and the session's history kept in step with
    what the engine emits."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.history = config.history
        self._out: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        self.closed = False

    def emit(self, event: EngineEvent) -> None:
        """Send an event out (dropped once closed: nothing follows the end)."""
        if self.closed:
            return
        if (message := message_of(event)) is not None:
            self.history.add(message)
        self._out.put_nowait(event)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (event := await self._out.get()) is not None:
            yield event

    async def close(self) -> None:
        """Ends ``events``; subclasses stop their own work first, then call this."""
        if not self.closed:
            self.closed = True
            self._out.put_nowait(None)


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
