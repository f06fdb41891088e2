"""What every dialect provides, and the field checks they share."""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson
import pybase64

from sonicgate.domain import Capabilities, ErrorCode, GatewayError, VoiceSession
from sonicgate.events import ClientEvent, EngineEvent

JsonObject = dict[str, Any]


class ProtocolError(GatewayError):
    """A client message that cannot be understood as sent."""


@dataclass(frozen=True, slots=True)
class SessionView:
    """What a dialect may say about the session it is rendering for."""

    session: VoiceSession
    language: str
    engine: str
    capabilities: Capabilities
    output_sample_rate: int
    last_sequence: int | None = None
    resumed: bool = False


class Dialect(Protocol):
    name: str

    def parse(self, message: JsonObject) -> ClientEvent | None:
        """Turn one client message into an input event (None: nothing to do);
        raises ``ProtocolError``."""
        ...

    def ready(self, view: SessionView) -> JsonObject: ...

    async def render(self, event: EngineEvent, view: SessionView) -> list[JsonObject]:
        """Wire messages for one engine event (often none or one)."""
        ...

    def error(self, code: ErrorCode, message: str, session_id: str | None) -> JsonObject: ...

    def ended(self, view: SessionView) -> JsonObject: ...


@runtime_checkable
class HeardReplies(Protocol):
    """A dialect that learns what of each reply its listener heard (a phone call, from
    the marks Twilio echoes as it plays): the session records replies as heard, not
    as the engine produced them."""

    def heard_replies(self, *, closing: bool = False) -> list[str]:
        """Replies done with, oldest first, as heard (the unheard left out); ``closing``:
        the conversation is ending, so every reply is done with."""
        ...


def parse_json(text: str) -> JsonObject:
    """One client message; raises ``ProtocolError``. orjson refuses, here at the edge
    rather than later where they are used: numbers past 64 bits, nesting past 1024
    levels, and strings that are not valid Unicode (a lone surrogate, \\udc00)."""
    try:
        message: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.MALFORMED_JSON, f"message is not valid JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a message must be a JSON object")
    return message


def to_json(message: JsonObject) -> str:
    """A message for the wire (orjson: several times faster than json on audio)."""
    return orjson.dumps(message).decode()


def get_str(message: JsonObject, key: str, *, required: bool = False) -> str | None:
    value = message.get(key)
    if value is None:
        if required:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"'{key}' is required")
        return None
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"'{key}' must be a string")
    return value


def get_object(message: JsonObject, key: str) -> JsonObject:
    value = message.get(key, {})
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"'{key}' must be an object")
    return value


def get_bool(message: JsonObject, key: str) -> bool:
    value = message.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"'{key}' must be true or false")
    return value


MAX_SEQUENCE = 2**31 - 1  # what every store keeps as an integer


def get_sequence(message: JsonObject) -> int | None:
    value = message.get("sequenceNumber")
    if value is not None and (type(value) is not int or not 0 <= value <= MAX_SEQUENCE):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, f"'sequenceNumber' must be an integer from 0 to {MAX_SEQUENCE}"
        )
    return value


def get_base64(message: JsonObject, key: str) -> bytes:
    text = get_str(message, key, required=True)
    assert text is not None
    if text.startswith("data:"):  # tolerate data URLs from browsers' FileReader
        text = text.partition(",")[2]
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_BASE64, f"'{key}' is not valid base64") from exc
