"""Seed 001 (the ``type`` protocol) end to end through the real server."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import wave

import pytest

from tests.conftest import Client, Connect, RunningServer
from tests.scripted_engine import ScriptedEngine, tone

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


async def initialize(client: Client, **fields: object) -> dict[str, object]:
    await client.send(
        {
            "type": "initialize",
            "awsAccessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "awsSecretAccessKey": SECRET,
            "awsRegion": "us-east-1",
            **fields,
        }
    )
    return await client.recv()


async def stream_speech(client: Client, seconds: float) -> None:
    audio = tone(seconds, 16_000)
    step = 4096 * 2  # the seed's 4096-sample chunks
    for offset in range(0, len(audio), step):
        last = offset + step >= len(audio)
        await client.send(
            {
                "type": "audio_chunk",
                "audio": base64.b64encode(audio[offset : offset + step]).decode(),
                "isComplete": last,
            }
        )


async def test_conversation(
    server: RunningServer, connect: Connect, scripted: ScriptedEngine
) -> None:
    client = await connect(server.ws())
    ready = await initialize(client)
    assert ready["type"] == "initialized"
    assert ready["outputAudio"] == {"format": "pcm16", "sampleRate": 24000, "channels": 1}
    await stream_speech(client, 2.0)
    final, before = await client.until("text_response")
    kinds = [m["type"] for m in before]
    assert "transcription" in kinds
    transcripts = [m for m in before if m["type"] == "transcription"]
    assert transcripts[-1]["isFinal"] is True
    assert transcripts[-1]["text"] == scripted.transcript
    done = final
    seen = []
    while not (done["type"] == "text_response" and done["isFinal"]):
        seen.append(done)
        done = await client.recv()
    assert done["text"] == scripted.reply
    audio = [m for m in seen if m["type"] == "audio_response"]
    assert len(audio) == 2
    assert audio[0]["sampleRate"] == 24000
    assert len(base64.b64decode(audio[0]["audio"])) == 0.2 * 24000 * 2
    deltas = "".join(m["text"] for m in seen if m["type"] == "text_response")
    assert deltas.split() == scripted.reply.split()

    await client.send({"type": "end_conversation"})
    ended, _ = await client.until("conversation_ended")
    assert ended["sessionId"] == ready["sessionId"]
    assert ended["status"] == "COMPLETED"


async def test_text_message_and_text_only(
    server: RunningServer, connect: Connect, scripted: ScriptedEngine
) -> None:
    client = await connect(server.ws())
    await initialize(client, textOnly=True)
    await client.send({"type": "text_message", "text": "What time is it?"})
    _, seen = await client.final_reply()
    assert scripted.texts == ["What time is it?"]
    assert not [m for m in seen if m["type"] == "audio_response"]


async def test_barge_in_reaches_the_client(
    server: RunningServer, connect: Connect, scripted: ScriptedEngine
) -> None:
    scripted.word_delay = 0.2
    client = await connect(server.ws())
    await initialize(client)
    await client.send({"type": "text_message", "text": "Tell me a story"})
    await client.until("text_response")
    await stream_speech(client, 0.3)
    interrupted, _ = await client.until("interrupted")
    assert interrupted["sessionId"]
    final, _ = await client.final_reply()
    assert final["text"] == "Hi!"  # only what was said before the barge-in


async def test_credentials_are_never_stored_or_logged(
    server: RunningServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await connect(server.ws())
    ready = await initialize(client, awsSessionToken="TOKEN-" + SECRET)
    await client.send({"type": "text_message", "text": "hi"})
    await client.until("text_response")
    await client.send({"type": "end_conversation"})
    await client.until("conversation_ended")
    assert SECRET not in caplog.text
    assert "AKIAIOSFODNN7EXAMPLE" not in caplog.text
    database = server.settings.store_path
    for path in database.parent.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    with sqlite3.connect(database) as db:
        dump = "\n".join(db.iterdump())
    assert isinstance(ready["sessionId"], str)
    assert SECRET not in dump and ready["sessionId"] in dump


async def test_status_and_cleanup(server: RunningServer, connect: Connect) -> None:
    client = await connect(server.ws())
    await initialize(client)
    async with server.http() as http:
        status = (await http.get("/api/nova-sonic/status")).json()
        assert status["status"] == "ok"
        assert status["activeSessions"] == 1
        assert status["engines"]["scripted"]["languages"] == ["en-US", "en-GB"]
        assert status["version"]
        cleanup = (await http.post("/api/nova-sonic/cleanup")).json()
        assert cleanup["status"] == "ok"
        assert cleanup["endedSessions"] == 0


async def test_events_websocket_filters_by_session(server: RunningServer, connect: Connect) -> None:
    client = await connect(server.ws())
    ready = await initialize(client, userId="alice")
    events = await connect(server.ws(f"/api/events?sessionId={ready['sessionId']}"))
    other = await connect(server.ws())
    await initialize(other, userId="bob")
    await client.send({"type": "text_message", "text": "hello"})
    await other.send({"type": "text_message", "text": "hello"})
    response, before = await events.until("voice_response_event")
    assert response["sessionId"] == ready["sessionId"]
    assert response["userId"] == "alice"
    assert all(m["sessionId"] == ready["sessionId"] for m in before)
    assert {m["type"] for m in before} <= {"voice_session_event", "voice_transcription_event"}
    json.dumps(response)


async def test_each_turn_audio_is_saved_as_wav(server: RunningServer, connect: Connect) -> None:
    client = await connect(server.ws())
    ready = await initialize(client)
    await stream_speech(client, 1.0)
    await client.final_reply()
    await client.send({"type": "end_conversation"})
    await client.until("conversation_ended")
    folder = server.settings.audio_dir / str(ready["sessionId"])
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["00001-assistant.wav", "00001-user.wav"]
    with wave.open(str(folder / "00001-user.wav")) as user:
        assert user.getframerate() == 16000
        assert abs(user.getnframes() - 16000) < 4096
    with wave.open(str(folder / "00001-assistant.wav")) as reply:
        assert reply.getframerate() == 24000
