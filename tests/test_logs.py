"""Structured logs: every line of a conversation carries its session and turn."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from sonicgate import logs
from tests.conftest import Connect, ServerFactory
from tests.scripted_engine import ScriptedEngine


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """sonicgate's records as the JSON lines `--log-format json` writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ConversationFilter())
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("sonicgate")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_a_conversation_logs_its_session_and_turn(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, json_lines: io.StringIO
) -> None:
    server = await make_server({"scripted": scripted})
    client = await connect(server.ws())
    session_id = (await client.initialize())["sessionId"]
    await client.complete_turn(bytes(16_000))
    await client.until("text_response")
    await client.send({"type": "end_conversation"})
    await client.until("conversation_ended")

    records = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    mine = [r for r in records if r.get("session_id") == session_id]
    assert any(r["message"].startswith("session") and "started" in r["message"] for r in mine)
    heard = next(r for r in mine if r["message"].startswith("heard"))
    assert heard["turn"] == 1 and heard["connection_id"].startswith("conn-")
    assert scripted.transcript not in json_lines.getvalue()  # words are counted, not logged
    assert {"time", "level", "logger", "message"} <= set(heard)


def test_text_lines_end_with_the_ids() -> None:
    record = logging.LogRecord("sonicgate.x", logging.INFO, __file__, 1, "hello", None, None)
    token = logs.session_id.set("s-1")
    try:
        logs.ConversationFilter().filter(record)
    finally:
        logs.session_id.reset(token)
    assert logs.TextFormatter().format(record).endswith("hello [session_id=s-1]")
