"""Hostile input, generated: thousands of malformed, truncated, oversized and
out-of-order messages in both seed dialects, and OpenAI's Realtime dialect at
``/v1/realtime``, against one running server.

Properties: the server never crashes or drops the connection, every reply is
in the client's dialect, every frame that is not a JSON object gets an error,
and the store stays consistent (each session's messageCount matches its
history, no connection record outlives its socket).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from sonicgate.config import Settings
from sonicgate.protocol.action import ACTIONS
from sonicgate.protocol.typed import TYPES
from sonicgate.server.app import create_app
from sonicgate.store.sqlite import SqliteStore
from tests.scripted_engine import ScriptedEngine

MAX_BYTES = 16 * 1024
PROBE = "fuzz_probe"  # an unknown type/action: always answered with one error
LAST = "fuzz_last"  # the same, sent once after each conversation to mark its end
TYPED_REPLIES = {
    "initialized",
    "transcription",
    "text_response",
    "audio_response",
    "interrupted",
    "metrics",
    "usage",
    "error",
    "conversation_ended",
}
REALTIME_REPLIES = {
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "response.output_item.added",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_item.done",
    "response.done",
    "error",
}
ACTION_REPLIES = {
    "voice_session_initialized",
    "voice_transcription_partial",
    "voice_response_triggered",
    "voice_error",
    "voice_session_ended",
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
pcm = st.binary(max_size=3000).map(lambda raw: base64.b64encode(raw).decode())
base64ish = (
    pcm | st.text(alphabet="ABCDabcd0123+/=%$ \n", max_size=40) | st.just("data:audio/wav;base64,")
)
formats = st.sampled_from(["pcm16", "wav", "webm", "mp3", "ogg", ""])
session_ids = st.sampled_from(["fuzz-1", "fuzz-2", "bad id!", "x" * 200]) | st.text(max_size=12)


def fields(**values: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    """Each field takes its plausible values, or anything at all."""
    return {name: strategy | json_values for name, strategy in values.items()}


typed_messages = st.fixed_dictionaries(
    {"type": st.sampled_from([*TYPES, PROBE, "Initialize", ""]) | json_values},
    optional=fields(
        sessionId=session_ids,
        audio=base64ish,
        text=st.text(max_size=60),
        audioFormat=formats,
        isComplete=st.booleans(),
        sequenceNumber=st.integers(-3, 40),
        language=st.sampled_from(["en-US", "fr-FR", "klingon"]),
        engine=st.sampled_from(["scripted", "nova-sonic"]),
        textOnly=st.booleans(),
    ),
)
action_data = st.fixed_dictionaries(
    {},
    optional=fields(
        audioData=base64ish,
        audioFormat=formats,
        sequenceNumber=st.integers(-3, 40),
        isFinal=st.booleans(),
        language=st.sampled_from(["en-US", "fr-FR"]),
    ),
)
action_messages = st.fixed_dictionaries(
    {"action": st.sampled_from([*ACTIONS, PROBE, "VOICE_CHUNK"]) | json_values},
    optional={
        "sessionId": session_ids | json_values,
        "userId": st.text(max_size=8),
        "data": action_data | json_values,
    },
)

realtime_session = st.fixed_dictionaries(
    {},
    optional=fields(
        instructions=st.text(max_size=30),
        output_modalities=st.sampled_from([["text"], ["audio"], []]),
        voice=st.text(max_size=8),
    ),
)
realtime_item = st.fixed_dictionaries(
    {"type": st.just("message"), "role": st.sampled_from(["user", "assistant"])},
    optional=fields(
        content=st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["input_text", "text"]), "text": st.text(max_size=20)}
            ),
            max_size=2,
        )
    ),
)
realtime_messages = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "session.update",
                "input_audio_buffer.append",
                "input_audio_buffer.commit",
                "input_audio_buffer.clear",
                "conversation.item.create",
                "response.create",
                "response.cancel",
                PROBE,
            ]
        )
        | json_values
    },
    optional=fields(audio=base64ish, session=realtime_session, item=realtime_item),
)


def truncated(message: dict[str, Any]) -> st.SearchStrategy[str]:
    text = json.dumps(message)
    return st.integers(0, max(0, len(text) - 1)).map(lambda cut: text[:cut])


def frames(messages: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        messages.map(json.dumps),
        messages.flatmap(truncated),
        json_values.map(json.dumps),  # JSON, but not an object
        st.text(max_size=40),
        st.binary(min_size=1, max_size=64),
        st.just("x" * (MAX_BYTES + 1)),  # oversized
    )


# A conversation: a first message that picks the dialect, then anything, in any order.
typed_conversations = st.tuples(typed_messages, st.lists(frames(typed_messages), max_size=20))
action_conversations = st.tuples(action_messages, st.lists(frames(action_messages), max_size=20))
realtime_conversations = st.tuples(
    realtime_messages, st.lists(frames(realtime_messages), max_size=20)
)


def is_json_object(frame: str | bytes) -> bool:
    if isinstance(frame, bytes) or len(frame) > MAX_BYTES:
        return False
    try:
        return isinstance(json.loads(frame), dict)
    except json.JSONDecodeError:
        return False


class ThreadedServer:
    """The real app on uvicorn in a thread, so the synchronous hypothesis tests
    can drive it with blocking WebSocket clients."""

    def __init__(self, data_dir: Path) -> None:
        self.settings = Settings(
            port=0,  # the kernel picks; read back once listening
            engine="scripted",
            data_dir=data_dir,
            max_message_bytes=MAX_BYTES,
            # One address opens hundreds of connections here: per-client limits off.
            max_messages_per_second=0,
            max_requests_per_second=0,
            max_sessions_per_client=0,
        )
        app = create_app(self.settings, {"scripted": ScriptedEngine()})
        config = uvicorn.Config(
            app, port=0, log_level="critical", ws_max_size=self.settings.ws_max_size
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)  # uvicorn offers no event to wait on
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[ThreadedServer]:
    """A server of each test's own: none depends on what another left (or did not)."""
    with ThreadedServer(tmp_path) as server:
        yield server


@dataclass(frozen=True)
class Dialect:
    path: str
    tag: str  # the field that names a message's kind
    error: str  # the type of its error messages
    replies: set[str]
    common: str  # a field every reply carries


TYPED = Dialect("/api/nova-sonic/stream", "type", "error", TYPED_REPLIES, "sessionId")
ACTION = Dialect("/api/nova-sonic/stream", "action", "voice_error", ACTION_REPLIES, "sessionId")
REALTIME = Dialect("/v1/realtime", "type", "error", REALTIME_REPLIES, "event_id")


def converse(
    live: ThreadedServer, dialect: Dialect, first: dict[str, Any], rest: list[str | bytes]
) -> None:
    sent = [json.dumps(first), *rest]
    with connect(live.url.replace("http", "ws") + dialect.path) as ws:
        for frame in sent:
            ws.send(frame)
        ws.send(json.dumps({dialect.tag: LAST}))
        received = until_probe(ws, dialect.error)
    kinds = [message.get("type") for message in received]
    assert set(kinds) <= dialect.replies, f"replies outside the {dialect.path} dialect"
    assert all(dialect.common in message for message in received)
    not_objects = sum(not is_json_object(frame) for frame in sent)
    assert kinds.count(dialect.error) >= not_objects + 1  # each non-object, and the last probe


def until_probe(ws: ClientConnection, error: str) -> list[dict[str, Any]]:
    """Everything the server sent, up to the error that answers the last probe."""
    received: list[dict[str, Any]] = []
    while True:
        message = json.loads(ws.recv(timeout=10))
        received.append(message)
        if message.get("type") == error and LAST in json.dumps(message):
            return received


fuzz = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI stays reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def survives(
    live: ThreadedServer,
    dialect: Dialect,
    conversations: st.SearchStrategy[tuple[dict[str, Any], list[str | bytes]]],
) -> None:
    """Every generated conversation gets its answers; then the server and the store are
    sound."""

    @fuzz
    @given(conversation=conversations)
    def conversation_answered(conversation: tuple[dict[str, Any], list[str | bytes]]) -> None:
        converse(live, dialect, *conversation)

    conversation_answered()
    assert_sound(live)


def test_typed_dialect_survives_anything(live: ThreadedServer) -> None:
    survives(live, TYPED, typed_conversations)


def test_action_dialect_survives_anything(live: ThreadedServer) -> None:
    survives(live, ACTION, action_conversations)


def test_realtime_dialect_survives_anything(live: ThreadedServer) -> None:
    survives(live, REALTIME, realtime_conversations)


def assert_sound(live: ThreadedServer) -> None:
    """No session is left open, and each stored session is whole and consistent."""
    status = httpx.get(live.url + "/api/nova-sonic/status").json()
    assert status["status"] == "ok"
    assert status["activeSessions"] == 0

    async def check_store() -> None:
        store = SqliteStore(live.settings.store_path)
        await store.open()
        try:
            sessions = await store.list_sessions()
            assert sessions, "the fuzzing never opened a session"
            for session in sessions:
                assert session.messageCount == len(await store.history(session.sessionId))
                assert await store.get_context(session.sessionId) is not None
            assert await store.list_connections() == []
        finally:
            await store.close()

    asyncio.run(check_store())
