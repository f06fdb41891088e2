"""Every kind of bad input gets an error in the client's dialect; nothing falls over."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import wave
from typing import Any

import pytest
import websockets

from sonicgate.server import stream
from tests.conftest import Client, Connect, RunningServer, ServerFactory
from tests.scripted_engine import ScriptedEngine

B64 = base64.b64encode(b"\0\0" * 100).decode()


async def typed(connect: Connect, server: RunningServer) -> Client:
    client: Client = await connect(server.ws())
    await client.send({"type": "initialize"})
    assert (await client.recv())["type"] == "initialized"
    return client


async def action(
    connect: Connect, server: RunningServer, audio_format: str = "pcm16"
) -> tuple[Client, str]:
    client: Client = await connect(server.ws())
    await client.send(
        {"action": "voice_session_start", "userId": "u", "data": {"audioFormat": audio_format}}
    )
    ready = await client.recv()
    assert ready["type"] == "voice_session_initialized", ready
    return client, ready["sessionId"]


async def still_works(client: Client) -> None:
    """The connection and its session keep serving after an error."""
    await client.send({"type": "text_message", "text": "still there?"})
    message, _ = await client.until("text_response")
    assert message["type"] == "text_response"


async def expect_error(client: Client, code: str, dialect: str = "type") -> dict[str, object]:
    message = await client.recv()
    if dialect == "type":
        assert message["type"] == "error", message
        assert message["code"] == code, message
        assert message["message"]
    else:
        assert message["type"] == "voice_error", message
        assert message["data"]["code"] == code, message
    return message


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed_json"),
        ("[1, 2]", "invalid_message"),
        ({"type": "audio_chunk"}, "missing_field"),
        ({"type": "audio_chunk", "audio": "%%% not base64"}, "bad_base64"),
        ({"type": "audio_chunk", "audio": 12}, "invalid_field"),
        ({"type": "audio_chunk", "audio": base64.b64encode(b"\1\2\3").decode()}, "audio_format"),
        ({"type": "audio_chunk", "audio": B64, "audioFormat": "webm"}, "audio_format"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "text_message", "text": "  "}, "invalid_field"),
        ({"type": "initialize"}, "session_active"),
        ({"type": "audio_chunk", "audio": B64, "sessionId": "someone-else"}, "unknown_session"),
        (b"\x00\x01binary", "binary_frame"),
    ],
)
async def test_typed_bad_input(
    server: RunningServer, connect: Connect, frame: dict[str, Any] | str | bytes, code: str
) -> None:
    client = await typed(connect, server)
    await client.send(frame)
    await expect_error(client, code)
    await still_works(client)


async def test_oversize_frame(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server({"scripted": scripted}, max_message_bytes=10_000)
    client = await typed(connect, server)
    await client.send({"type": "audio_chunk", "audio": base64.b64encode(bytes(20_000)).decode()})
    message = await expect_error(client, "frame_too_large")
    assert "10000" in str(message["message"])
    await still_works(client)


async def test_the_size_limit_counts_bytes_not_characters(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    """A browser's JSON.stringify sends text as UTF-8: 4000 euro signs are 12000 bytes."""
    server = await make_server({"scripted": scripted}, max_message_bytes=10_000)
    client = await typed(connect, server)
    text = json.dumps({"type": "text_message", "text": "\u20ac" * 4000}, ensure_ascii=False)
    assert len(text.encode()) > 10_000
    await client.send(text)
    message = await expect_error(client, "frame_too_large")
    assert "10000" in str(message["message"])


async def test_input_before_a_session(server: RunningServer, connect: Connect) -> None:
    client = await connect(server.ws())
    await client.send({"type": "audio_chunk", "audio": B64})
    await expect_error(client, "no_session")
    first = await connect(server.ws())
    await first.send({"action": "voice_chunk", "sessionId": "nope", "data": {"audioData": B64}})
    await expect_error(first, "no_session", "action")


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"action": "voice_dance"}, "unknown_action"),
        ({"action": "voice_chunk", "data": {"audioData": "***"}}, "bad_base64"),
        (
            {"action": "voice_chunk", "data": {"audioData": B64, "sequenceNumber": "x"}},
            "invalid_field",
        ),
        ({"action": "voice_chunk", "data": "nope"}, "invalid_field"),
        (
            {"action": "voice_data", "data": {"audioData": B64, "audioFormat": "wav"}},
            "audio_format",
        ),
    ],
)
async def test_action_bad_input(
    server: RunningServer, connect: Connect, message: dict[str, Any], code: str
) -> None:
    client, session_id = await action(connect, server)
    await client.send({**message, "sessionId": session_id})
    await expect_error(client, code, "action")
    await client.send({"action": "voice_session_end", "sessionId": session_id})
    ended, _ = await client.until("voice_session_ended")
    assert ended["data"]["status"] == "COMPLETED"


async def test_corrupt_webm_stream(server: RunningServer, connect: Connect) -> None:
    client, session_id = await action(connect, server, "webm")
    garbage = base64.b64encode(b"this is not webm at all" * 200).decode()
    await client.send(
        {
            "action": "voice_chunk",
            "sessionId": session_id,
            "data": {"audioData": garbage, "sequenceNumber": 1, "isFinal": True},
        }
    )
    message, _ = await client.until("voice_error")
    assert message["data"]["code"] == "audio_format"


def wav_coded_as(tag: int) -> bytes:
    """A 16 kHz mono WAV file whose header names codec ``tag``, one FFmpeg cannot decode."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\0\0" * 1600)
    data = buffer.getvalue()
    return data[:20] + tag.to_bytes(2, "little") + data[22:]


@pytest.mark.parametrize("kind", ["voice_chunk", "voice_data"])
async def test_wav_of_an_unknown_codec_is_an_audio_format_error(
    server: RunningServer, connect: Connect, kind: str
) -> None:
    """The message itself is wrong (audio_format, not retryable), not the engine
    (engine_failed, retryable: "an engine or the service behind it")."""
    client, session_id = await action(connect, server, "wav")
    audio = base64.b64encode(wav_coded_as(0x1234)).decode()
    await client.send(
        {
            "action": kind,
            "sessionId": session_id,
            "data": {"audioData": audio, "audioFormat": "wav", "isFinal": kind == "voice_chunk"},
        }
    )
    await expect_error(client, "audio_format", "action")


async def test_unsupported_session_settings(server: RunningServer, connect: Connect) -> None:
    client = await connect(server.ws())
    for fields, code in [
        ({"language": "ja-JP"}, "unsupported_language"),
        ({"engine": "nope"}, "unknown_engine"),
        ({"audioFormat": "flac"}, "audio_format"),
        ({"voice": "missing"}, "unknown_voice"),
        ({"sessionId": "../../etc"}, "invalid_field"),
    ]:
        await client.send({"type": "initialize", **fields})
        await expect_error(client, code)
    await client.send({"type": "initialize"})
    assert (await client.recv())["type"] == "initialized"


async def test_chunks_after_the_session_ended(server: RunningServer, connect: Connect) -> None:
    client, session_id = await action(connect, server)
    await client.send({"action": "voice_session_end", "sessionId": session_id})
    await client.until("voice_session_ended")
    await client.send(
        {"action": "voice_chunk", "sessionId": session_id, "data": {"audioData": B64}}
    )
    await expect_error(client, "no_session", "action")


async def test_engine_failure_keeps_the_connection(
    server: RunningServer, connect: Connect, scripted: ScriptedEngine
) -> None:
    client = await typed(connect, server)
    scripted.fail_on_audio = True
    await client.send({"type": "audio_chunk", "audio": B64})
    message = await expect_error(client, "engine_failed")
    assert "scripted engine failure" in str(message["message"])
    scripted.fail_on_audio = False
    await still_works(client)


async def test_a_client_that_never_reads_is_cut_off(
    make_uvicorn: ServerFactory, scripted: ScriptedEngine
) -> None:
    # Through a real socket, whose buffers fill. No rate limit, and long replies: every
    # message below gets one, to fill the outbox.
    scripted.reply = " ".join(["word"] * 300)
    server = await make_uvicorn(
        {"scripted": scripted}, max_messages_per_second=0, outbox_messages=32
    )
    # A tiny receive window and max_queue=1: this client stops taking frames off
    # the socket, as a stuck one would, and the kernel buffers little for it.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", server.settings.port))
    async with websockets.connect(server.ws(), sock=sock, max_queue=1) as reader_that_stalls:
        await reader_that_stalls.send(json.dumps({"type": "initialize"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for _ in range(1000):
                await reader_that_stalls.send(json.dumps({"type": "text_message", "text": "hi"}))
                await asyncio.sleep(0.002)
            while True:  # drain what was sent before the server gave up
                await asyncio.wait_for(reader_that_stalls.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == stream.SLOW_CLIENT_CODE
    async with server.http() as http:
        status = (await http.get("/api/nova-sonic/status")).json()
    assert status["activeSessions"] == 0


async def test_ending_a_session_on_a_dead_engine_keeps_the_connection(
    server: RunningServer, connect: Connect, scripted: ScriptedEngine
) -> None:
    """A chunk held for a gap reaches the engine as the session ends: an engine that
    died meanwhile is an error for the client, and the session still ends."""
    client = await typed(connect, server)
    await client.send({"type": "audio_chunk", "audio": B64, "sequenceNumber": 3})  # 1, 2 awaited
    scripted.fail_on_audio = True
    await client.send({"type": "end_conversation"})
    ended, before = await client.until("conversation_ended")
    assert ended["status"] == "COMPLETED"
    assert [m["code"] for m in before if m["type"] == "error"] == ["engine_failed"], before
    scripted.fail_on_audio = False
    await client.send({"type": "initialize"})
    assert (await client.recv())["type"] == "initialized"
