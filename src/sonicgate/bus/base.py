"""The event bus interface (the first seed's AppSync Events)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

SESSION_EVENT = "voice_session_event"
TRANSCRIPTION_EVENT = "voice_transcription_event"
RESPONSE_EVENT = "voice_response_event"


@dataclass(frozen=True, slots=True)
class BusEvent:
    channel: str  # one of the three constants above
    sessionId: str
    userId: str
    data: dict[str, Any]
    timestamp: str

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.channel,
            "sessionId": self.sessionId,
            "userId": self.userId,
            "data": self.data,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_json(cls, message: dict[str, Any]) -> BusEvent:
        """The inverse of ``to_json``; a missing field raises ``KeyError``."""
        return cls(
            message["type"],
            message["sessionId"],
            message["userId"],
            message["data"],
            message["timestamp"],
        )


class Subscription(Protocol):
    def __aiter__(self) -> Subscription: ...

    async def __anext__(self) -> BusEvent: ...

    async def aclose(self) -> None: ...


class Bus(Protocol):
    async def publish(self, event: BusEvent) -> None: ...

    def subscribe(self, session_id: str | None = None, user_id: str | None = None) -> Subscription:
        """Events matching the filters, from now on, until the iterator is closed."""
        ...

    async def aclose(self) -> None:
        """Ends every subscription and lets go of any connection."""
        ...
