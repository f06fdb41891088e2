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
    owner: str = ""  # the session's owner (``Principal.id``): who may see the event

    def to_json(self) -> dict[str, Any]:
        """The event as subscribers get it (the owner's identity stays out)."""
        return {
            "type": self.channel,
            "sessionId": self.sessionId,
            "userId": self.userId,
            "data": self.data,
            "timestamp": self.timestamp,
        }

    def to_transport(self) -> dict[str, Any]:
        """The event between gateway nodes: with its owner, for their filters."""
        return {**self.to_json(), "owner": self.owner}

    @classmethod
    def from_transport(cls, message: dict[str, Any]) -> BusEvent:
        """The inverse of ``to_transport``; a missing field raises ``KeyError``."""
        return cls(
            message["type"],
            message["sessionId"],
            message["userId"],
            message["data"],
            message["timestamp"],
            message["owner"],
        )


@dataclass(frozen=True, slots=True)
class Filter:
    """What a subscriber sees; ``None`` matches anything."""

    session_id: str | None = None
    user_id: str | None = None
    owner: str | None = None  # an ordinary user's subscription: its own sessions only

    def matches(self, event: BusEvent) -> bool:
        return (
            (self.session_id is None or event.sessionId == self.session_id)
            and (self.user_id is None or event.userId == self.user_id)
            and (self.owner is None or event.owner == self.owner)
        )


class Subscription(Protocol):
    def __aiter__(self) -> Subscription: ...

    async def __anext__(self) -> BusEvent: ...

    async def aclose(self) -> None: ...


class Bus(Protocol):
    async def publish(self, event: BusEvent) -> None: ...

    def subscribe(self, wanted: Filter) -> Subscription:
        """Events matching ``wanted``, from now on, until the iterator is closed."""
        ...

    async def aclose(self) -> None:
        """Ends every subscription and lets go of any connection."""
        ...
