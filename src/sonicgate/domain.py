"""The domain's types, shared by every layer: the seeds' records, conversation
messages, identities and the one vocabulary of errors. It imports nothing of
sonicgate: engines, store, protocol and sessions all stand on it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


def utc_now() -> str:
    """ISO-8601 UTC timestamp with milliseconds, as in the seeds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SessionStatus(StrEnum):
    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"


class ProcessingState(StrEnum):
    IDLE = "idle"
    RECEIVING = "receiving"
    PROCESSING = "processing"
    RESPONDING = "responding"


@dataclass(slots=True)
class VoiceSession:
    sessionId: str
    novaSonicSessionId: str
    connectionId: str
    userId: str
    status: SessionStatus = SessionStatus.ACTIVE
    createdAt: str = field(default_factory=utc_now)
    updatedAt: str = field(default_factory=utc_now)
    audioFormat: str | None = None
    totalDuration: float | None = None  # seconds of user audio received
    messageCount: int = 0
    # The identity of the credential that started it (``Principal.id``): with access
    # control on, only it may resume, use or end the session. Not the seed's ``userId``,
    # which is a label the client chooses.
    owner: str = ""


@dataclass(slots=True)
class Connection:
    connectionId: str
    sessionId: str | None
    userId: str
    dialect: str
    connectedAt: str = field(default_factory=utc_now)


@dataclass(slots=True)
class StreamingContext:
    sessionId: str
    connectionId: str
    userId: str
    audioFormat: str
    language: str
    model: str
    # Sequence numbers accepted so far in the current turn (the seed's chunks).
    chunks: list[int] = field(default_factory=list)
    transcriptionBuffer: str = ""
    processingState: ProcessingState = ProcessingState.IDLE


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    text: str


class History:
    """A conversation's messages, oldest first: one per session, which owns it.

    The session's engine reads it to build its prompts; the engine's events add to
    it as they leave the engine (``BaseEngineSession.emit``), so an engine sees
    every exchange it has told, in order, and a backup engine taking the
    conversation over gets the very same list.
    """

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self._messages = list(messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self._messages)

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, message: Message) -> None:
        self._messages.append(message)

    def unanswered(self) -> str | None:
        """The last user turn, if nothing has answered it yet."""
        last = self._messages[-1] if self._messages else None
        return last.text if last is not None and last.role is Role.USER else None

    def drop_unanswered(self) -> None:
        """Forget an unanswered last user turn: it is about to be asked again."""
        if self.unanswered() is not None:
            self._messages.pop()


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine offers: the ready messages and /status show it."""

    languages: tuple[str, ...]
    models: tuple[str, ...]
    voices: tuple[str, ...]
    output_sample_rate: int = 24_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request or a connection acts for, as its credential says.

    ``id`` is ``sub:<JWT subject>``, ``key:<hash of the API key>``, or, with access
    control off, ``ip:<address>``: never anything the client merely claims.
    """

    id: str
    authenticated: bool = False  # the id comes from a verified credential
    operator: bool = False  # may see every session's events and clean up every session

    def owns(self, owner: str) -> bool:
        return self.id == owner


class ErrorCode(StrEnum):
    """Every error a client can be told, in one vocabulary: each dialect maps it to its
    wire form. ``retryable``: the same request may succeed later, unchanged."""

    # The message itself
    MALFORMED_JSON = "malformed_json"
    INVALID_MESSAGE = "invalid_message"
    INVALID_FIELD = "invalid_field"
    MISSING_FIELD = "missing_field"
    INVALID_TEXT = "invalid_text"
    BINARY_FRAME = "binary_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    BAD_BASE64 = "bad_base64"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_ACTION = "unknown_action"
    AUDIO_FORMAT = "audio_format"
    DUPLICATE_CHUNK = "duplicate_chunk"
    SEQUENCE_GAP = "sequence_gap"
    # A phone call's stream (Twilio)
    NO_START = "no_start"
    UNKNOWN_EVENT = "unknown_event"
    UNKNOWN_STREAM = "unknown_stream"
    UNKNOWN_MARK = "unknown_mark"
    OUT_OF_ORDER = "out_of_order"
    # The session
    NO_SESSION = "no_session"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_ACTIVE = "session_active"
    SESSION_ENDED = "session_ended"
    SESSION_MOVED = "session_moved"
    SESSION_EXISTS = "session_exists"
    FORBIDDEN = "forbidden"
    UNKNOWN_ENGINE = "unknown_engine"
    UNKNOWN_VOICE = "unknown_voice"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    NO_SPEECH = "no_speech"
    # Access
    FORBIDDEN_ORIGIN = "forbidden_origin"
    SERVER_FULL = "server_full"
    # Limits
    RATE_LIMITED = "rate_limited"
    TOO_MANY_SESSIONS = "too_many_sessions"
    TURN_TOO_LONG = "turn_too_long"
    SESSION_TOO_LONG = "session_too_long"
    IDLE_TIMEOUT = "idle_timeout"
    # The gateway
    SERVER_STOPPING = "server_stopping"
    STORE_UNAVAILABLE = "store_unavailable"
    # Engines and the services behind them
    UNAUTHORIZED = "unauthorized"  # credentials refused (the gateway's, or a provider's)
    THROTTLED = "throttled"
    PROVIDER_UNREACHABLE = "provider_unreachable"
    PROVIDER_ERROR = "provider_error"
    PROVIDER_REJECTED = "provider_rejected"  # the provider refused the request as made
    ENGINE_FAILED = "engine_failed"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    ENGINE_FALLBACK = "engine_fallback"  # a notice: the conversation moved to another engine

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.SERVER_FULL,
        ErrorCode.TOO_MANY_SESSIONS,
        ErrorCode.IDLE_TIMEOUT,
        ErrorCode.SERVER_STOPPING,
        ErrorCode.STORE_UNAVAILABLE,
        ErrorCode.THROTTLED,
        ErrorCode.PROVIDER_UNREACHABLE,
        ErrorCode.PROVIDER_ERROR,
        ErrorCode.ENGINE_FAILED,
        ErrorCode.ENGINE_UNAVAILABLE,
        ErrorCode.SESSION_MOVED,
    }
)


class GatewayError(Exception):
    """A request that cannot be honoured, told to the client in its dialect; each
    layer raises its own kind (``ProtocolError``, ``SessionError``, ``EngineError``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SessionError(GatewayError):
    """A session rule: who may use a session, the limits, its state."""
