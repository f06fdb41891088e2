"""Wire dialects: thin adapters between client JSON and internal events."""

from __future__ import annotations

from typing import Any

from sonicgate.protocol.action import ActionDialect
from sonicgate.protocol.base import Dialect, ProtocolError
from sonicgate.protocol.typed import TypedDialect

__all__ = ["ActionDialect", "Dialect", "ProtocolError", "TypedDialect", "detect"]


def detect(message: dict[str, Any]) -> Dialect:
    """Pick the dialect from a connection's first message.

    The first seed tags messages with ``action``, the second with ``type``.
    Unrecognisable first messages are answered in the second seed's shape,
    whose ``error`` message is the more generic one.
    """
    if "action" in message:
        return ActionDialect()
    return TypedDialect()
