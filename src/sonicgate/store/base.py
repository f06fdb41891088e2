"""The store interface that keeps the first seed's records (``sonicgate.domain``).

``SqliteStore`` is the embedded default; a server database implements the
same ``Store`` protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Protocol

from sonicgate.domain import Connection, Message, SessionStatus, StreamingContext, VoiceSession

log = logging.getLogger(__name__)


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
        """Nodes not heard from since then, until ``forget_silent_node``."""

    async def forget_silent_node(self, node_id: str, since_epoch: float) -> None:
        """The node's sessions are taken care of: it is no longer listed (unless it has
        spoken since then)."""
