"""Seed 000 (the ``action`` protocol) end to end through the real server."""

from __future__ import annotations

import base64
import io
import wave

import av
import numpy as np

from tests.conftest import Client, Connect, RunningServer
from tests.scripted_engine import ScriptedEngine, tone


def pcm_wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(tone(seconds, 16_000))
    return buffer.getvalue()


async def start(client: Client, **data: object) -> dict[str, object]:
    await client.send(
        {
            "action": "voice_session_start",
            "userId": "user-123",
            "data": {"audioFormat": "pcm16", "streaming": True, "language": "en-US", **data},
        }
    )
    return await client.recv()


async def send_chunks(client: Client, session_id: str, data: bytes, size: int, fmt: str) -> None:
    """``data`` as numbered voice_chunk messages; the last one ends the turn."""
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    for number, piece in enumerate(pieces, start=1):
        await client.send(
            {
                "action": "voice_chunk",
                "sessionId": session_id,
                "data": {
                    "audioData": base64.b64encode(piece).decode(),
                    "sequenceNumber": number,
                    "audioFormat": fmt,
                    "isFinal": number == len(pieces),
                },
            }
        )


async def test_session_initialized_has_the_seed_shape(
    server: RunningServer, connect: Connect
) -> None:
    client = await connect(server.ws())
    ready = await start(client)
    assert ready["type"] == "voice_session_initialized"
    assert ready["status"] == "ready"
    assert str(ready["novaSonicSessionId"]).startswith("ns-")
    assert str(ready["timestamp"]).endswith("Z")
    caps = ready["capabilities"]
    assert isinstance(caps, dict)
    assert caps["languages"] == ["en-US", "en-GB"]
    assert caps["models"] == ["scripted-1"]
    for key in ("transcription", "synthesis", "streaming", "realTimeProcessing"):
        assert caps[key] is True


async def test_chunks_give_partials_and_a_triggered_response(
    server: RunningServer, connect: Connect, scripted: ScriptedEngine
) -> None:
    client = await connect(server.ws())
    ready = await start(client)
    session_id = ready["sessionId"]
    assert isinstance(session_id, str)
    await send_chunks(client, session_id, tone(2.0, 16_000), 8192, "pcm16")
    response, before = await client.until("voice_response_triggered")
    partials = [m for m in before if m["type"] == "voice_transcription_partial"]
    assert partials, before
    assert partials[0]["data"]["partialTranscription"] == "hello"
    assert partials[0]["data"]["language"] == "en-US"
    assert isinstance(partials[0]["data"]["sequenceNumber"], int)
    data = response["data"]
    assert data["transcription"] == scripted.transcript
    assert data["aiResponse"] == scripted.reply
    assert data["triggerReason"] == "explicit_end"
    assert data["audioResponse"].startswith("data:audio/mp3;base64,")
    mp3 = base64.b64decode(data["audioResponse"].partition(",")[2])
    with av.open(io.BytesIO(mp3), mode="r") as container:
        assert container.format.name == "mp3"
        assert container.duration and container.duration > 0


async def test_voice_data_takes_a_complete_recording(
    server: RunningServer, connect: Connect
) -> None:
    client = await connect(server.ws())
    ready = await start(client, audioFormat="wav")
    await client.send(
        {
            "action": "voice_data",
            "sessionId": ready["sessionId"],
            "data": {
                "audioData": base64.b64encode(pcm_wav(1.0)).decode(),
                "audioFormat": "wav",
            },
        }
    )
    response, _ = await client.until("voice_response_triggered")
    assert response["data"]["triggerReason"] == "voice_data"


async def test_voice_data_takes_a_recording_in_the_sessions_pcm16(
    server: RunningServer, connect: Connect
) -> None:
    """``voice_data`` is "complete audio data" in the format the session was started
    with (``data.audioFormat``): a pcm16 session's whole recording is raw pcm16, as
    its ``voice_chunk`` audio is."""
    client = await connect(server.ws())
    ready = await start(client)  # data.audioFormat: pcm16
    await client.send(
        {
            "action": "voice_data",
            "sessionId": ready["sessionId"],
            "data": {
                "audioData": base64.b64encode(tone(1.0, 16_000)).decode(),
                "audioFormat": "pcm16",
            },
        }
    )
    response = await client.recv()
    assert response["type"] == "voice_response_triggered", response
    assert response["data"]["triggerReason"] == "voice_data"


async def test_out_of_order_chunks_are_reordered_and_gaps_reported(
    server: RunningServer, connect: Connect
) -> None:
    client = await connect(server.ws())
    ready = await start(client)
    session_id = ready["sessionId"]

    async def chunk(number: int) -> None:
        await client.send(
            {
                "action": "voice_chunk",
                "sessionId": session_id,
                "data": {
                    "audioData": base64.b64encode(b"\0\0" * 160).decode(),
                    "sequenceNumber": number,
                },
            }
        )

    for number in (1, 3, 2, 2):
        await chunk(number)
    duplicate = await client.recv()
    assert duplicate["type"] == "voice_error"
    assert duplicate["data"]["code"] == "duplicate_chunk"
    # 4 is lost: after the window (8) fills, the gap is reported and skipped.
    for number in range(5, 15):
        await chunk(number)
    gap = await client.recv()
    assert gap["data"]["code"] == "sequence_gap"
    assert "4" in gap["data"]["message"]


async def test_session_end_and_resume(
    server: RunningServer, connect: Connect, scripted: ScriptedEngine
) -> None:
    client = await connect(server.ws())
    ready = await start(client)
    session_id = ready["sessionId"]
    await client.send(
        {
            "action": "voice_data",
            "sessionId": session_id,
            "data": {"audioData": base64.b64encode(pcm_wav(0.5)).decode(), "audioFormat": "wav"},
        }
    )
    await client.until("voice_response_triggered")
    await client.send({"action": "voice_session_end", "sessionId": session_id})
    ended, _ = await client.until("voice_session_ended")
    assert ended["data"]["status"] == "COMPLETED"
    assert ended["data"]["messageCount"] == 2

    again = await connect(server.ws())
    await again.send(
        {
            "action": "voice_session_start",
            "sessionId": session_id,
            "userId": "user-123",
            "data": {"audioFormat": "pcm16"},
        }
    )
    resumed = await again.recv()
    assert resumed["sessionId"] == session_id
    assert resumed["resumed"] is True
    history = scripted.configs[-1].history
    assert [m.text for m in history] == [scripted.transcript, scripted.reply]


def webm_opus(seconds: float) -> bytes:
    """What a browser's MediaRecorder sends: Opus at 48 kHz in WebM."""
    rate = 48_000
    samples = np.frombuffer(tone(seconds, rate), dtype="<i2").reshape(1, -1)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


async def test_webm_split_across_chunks(server: RunningServer, connect: Connect) -> None:
    client = await connect(server.ws())
    ready = await start(client, audioFormat="webm")
    await send_chunks(client, str(ready["sessionId"]), webm_opus(2.0), 1000, "webm")
    response, before = await client.until("voice_response_triggered")
    # Decoded while streaming: the scripted engine gives a partial per second heard.
    assert [m for m in before if m["type"] == "voice_transcription_partial"]
    assert response["data"]["transcription"]


async def test_speech_pending_at_session_end_is_still_answered(
    server: RunningServer, connect: Connect
) -> None:
    client = await connect(server.ws())
    session_id = (await start(client))["sessionId"]
    await client.send(
        {
            "action": "voice_chunk",
            "sessionId": session_id,
            "data": {"audioData": base64.b64encode(tone(0.5, 16_000)).decode()},
        }
    )
    await client.send({"action": "voice_session_end", "sessionId": session_id})
    response, _ = await client.until("voice_response_triggered")
    assert response["data"]["triggerReason"] == "session_end"
    ended, _ = await client.until("voice_session_ended")
    assert ended["data"]["messageCount"] == 2
