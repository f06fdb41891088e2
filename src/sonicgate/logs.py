"""Logging with the conversation in every line: each record carries the
connection, session and turn it happened in, as text or as one JSON object
per line (``--log-format json``) for log collectors.

The ids live in context variables: set once where a connection, a session or
a turn begins, they follow every task started from there.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Literal

connection_id: ContextVar[str | None] = ContextVar("connection_id", default=None)
session_id: ContextVar[str | None] = ContextVar("session_id", default=None)
turn: ContextVar[int | None] = ContextVar("turn", default=None)

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")


class ConversationFilter(logging.Filter):
    """Stamps each record with the ids of the conversation it belongs to."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.connection_id = connection_id.get()
        record.session_id = session_id.get()
        record.turn = turn.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [
            f"{name}={value}"
            for name in ("session_id", "turn")
            if (value := getattr(record, name, None)) is not None
        ]
        return f"{line} [{' '.join(ids)}]" if ids else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("connection_id", "session_id", "turn"):
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class RefusedHandshakeFilter(logging.Filter):
    """uvicorn logs a WebSocket handshake that the app refused with an HTTP answer (the
    access control's 401, 403, 429 or 503) as an error; it is a refusal, at INFO.
    Every route of ours accepts the handshakes it does not refuse."""

    UVICORN_MESSAGE = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.UVICORN_MESSAGE:
            record.msg, record.levelno, record.levelname = (
                "WebSocket handshake refused",
                logging.INFO,
                "INFO",
            )
        return True


def configure(level: str, log_format: LogFormat = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ConversationFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("uvicorn.error").addFilter(RefusedHandshakeFilter())
    # faster-whisper notes every decode at INFO: several lines a second per speaker.
    logging.getLogger("faster_whisper").setLevel(max(logging.WARNING, logging.root.level))
