"""The internal event vocabulary.

Every engine produces these events and every wire dialect (seed 000, seed 001,
and later Nova and OpenAI) is a thin adapter to and from them. Each event is a
small frozen dataclass with a ``type`` tag, in the manner of Wyoming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from sonicgate.domain import ErrorCode, Message, Role


class TriggerReason(StrEnum):
    """Why a user turn ended (the first seed's ``triggerReason``)."""

    SILENCE = "auto_processing"  # endpointing detected the end of speech
    EXPLICIT = "explicit_end"  # the client marked the turn complete
    VOICE_DATA = "voice_data"  # a complete recording was sent
    SESSION_END = "session_end"  # the session ended with speech pending
    TEXT = "text_message"  # typed input


@dataclass(frozen=True, slots=True)
class SessionStarted:
    type: ClassVar[str] = "session_started"
    session_id: str


@dataclass(frozen=True, slots=True)
class SessionEnded:
    type: ClassVar[str] = "session_ended"
    session_id: str
    status: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The engine heard the user start speaking (used for barge-in and UI)."""

    type: ClassVar[str] = "speech_started"


@dataclass(frozen=True, slots=True)
class TranscriptPartial:
    type: ClassVar[str] = "transcript_partial"
    text: str
    confidence: float


@dataclass(frozen=True, slots=True)
class TranscriptFinal:
    type: ClassVar[str] = "transcript_final"
    text: str
    confidence: float
    reason: TriggerReason
    audio_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ResponseTextDelta:
    type: ClassVar[str] = "response_text_delta"
    text: str


@dataclass(frozen=True, slots=True)
class ResponseTextFinal:
    """The reply text as the user received it (cut short on barge-in)."""

    type: ClassVar[str] = "response_text_final"
    text: str


@dataclass(frozen=True, slots=True)
class AudioOut:
    """A chunk of synthesized speech: mono pcm16 little-endian."""

    type: ClassVar[str] = "audio_out"
    pcm: bytes
    sample_rate: int
    # The reply's words this chunk speaks, when the engine knows them (a cascade
    # synthesizes sentence by sentence): a phone call learns from them what was heard.
    text: str = ""


@dataclass(frozen=True, slots=True)
class TurnEnded:
    type: ClassVar[str] = "turn_ended"
    interrupted: bool = False


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The user barged in: the client must stop playback now."""

    type: ClassVar[str] = "interrupted"


@dataclass(frozen=True, slots=True)
class Error:
    """``fatal``: the engine session cannot go on (a fallback engine takes over)."""

    type: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Metrics:
    """Per-turn timings in seconds, measured from the end of user speech."""

    type: ClassVar[str] = "metrics"
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a cloud model counted for the conversation so far (Nova's usageEvent)."""

    type: ClassVar[str] = "usage"
    input_tokens: int
    output_tokens: int


EngineEvent = (
    SpeechStarted
    | TranscriptPartial
    | TranscriptFinal
    | ResponseTextDelta
    | ResponseTextFinal
    | AudioOut
    | TurnEnded
    | Interrupted
    | Error
    | Metrics
    | Usage
)
Event = SessionStarted | SessionEnded | EngineEvent


def message_of(event: EngineEvent) -> Message | None:
    """The history message an event makes, if any: a user's turn heard or typed,
    or the reply as the user received it."""
    match event:
        case TranscriptFinal(text=text) if text:
            return Message(Role.USER, text)
        case ResponseTextFinal(text=text) if text:
            return Message(Role.ASSISTANT, text)
    return None


# Client input, as every dialect's parser produces it.


@dataclass(frozen=True, slots=True)
class Start:
    session_id: str | None
    user_id: str
    audio_format: str = "pcm16"
    language: str = "en-US"
    engine: str | None = None
    voice: str | None = None
    system_prompt: str | None = None
    text_only: bool = False
    # Used for this session only; never stored or logged (excluded from repr).
    credentials: dict[str, str] = field(default_factory=dict, repr=False)
    # New settings for the session already open on the connection (it reopens with
    # them, history kept), rather than a second session.
    reconfigure: bool = False


@dataclass(frozen=True, slots=True)
class AudioIn:
    """Encoded audio from the client (``audio_format`` names the encoding)."""

    data: bytes
    audio_format: str | None = None
    sequence: int | None = None
    end_of_turn: bool = False
    # A whole recording of one turn (the first seed's ``voice_data``).
    complete_recording: bool = False


@dataclass(frozen=True, slots=True)
class TextIn:
    text: str


@dataclass(frozen=True, slots=True)
class End:
    # A caller who hung up hears no answer to what they said last: none is waited for.
    answer_pending: bool = True


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the reply under way (the client pressed stop)."""


ClientEvent = Start | AudioIn | TextIn | Cancel | End
