"""Records of the first seed and the store interface that keeps them.

``SqliteStore`` is the embedded default; a server database implements the
same ``Store`` protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from sonicgate.engines.base import Message

log = logging.getLogger(__name__)


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


class StoreUnavailable(Exception):
    """The store cannot be reached (a shared database down or restarting)."""


async def saved(write: Awaitable[object], what: str) -> bool:
    """A write during a conversation: while the store is unreachable it is lost
    (and logged) rather than taking the conversation down with it."""
    try:
        await write
    except StoreUnavailable as exc:
        log.warning("%s not saved: %s", what, exc)
        return False
    return True


class SessionExists(ValueError):
    """``create_session`` with an id already taken (by another node, say)."""


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_session(self, session: VoiceSession) -> None:
        """Raises ``SessionExists`` if the id is taken."""

    async def get_session(self, session_id: str) -> VoiceSession | None: ...

    async def update_session(self, session: VoiceSession) -> None:
        """Write the record back, all but ``messageCount`` (``append_message`` keeps
        that); sets ``updatedAt``."""

    async def list_sessions(self, status: SessionStatus | None = None) -> list[VoiceSession]: ...

    async def put_connection(self, connection: Connection) -> None: ...

    async def delete_connection(self, connection_id: str) -> None: ...

    async def list_connections(self) -> list[Connection]: ...

    async def put_context(self, context: StreamingContext) -> None: ...

    async def get_context(self, session_id: str) -> StreamingContext | None: ...

    async def append_message(self, session_id: str, message: Message) -> None:
        """Append to the history and bump the session's ``messageCount``."""

    async def history(self, session_id: str) -> list[Message]: ...

    async def save_turn_audio(self, session_id: str, sequence: int, pcm: bytes) -> None:
        """Audio of the turn under way, by the client's sequence number, kept until the
        turn ends: another node resuming the session hears the turn from the start."""

    async def turn_audio(self, session_id: str) -> list[tuple[int, bytes]]:
        """The turn's audio so far, in sequence order."""

    async def clear_turn_audio(self, session_id: str) -> None: ...

    async def heartbeat(self, node_id: str) -> None:
        """The node is alive now (a registry of the nodes sharing this store)."""

    async def silent_nodes(self, since_epoch: float) -> list[str]:
        """Nodes not heard from since then, forgotten as they are returned."""
