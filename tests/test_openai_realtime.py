"""The OpenAI Realtime engine through sonicgate: a seed-001 client on one side,
the real ``openai`` SDK against the Realtime emulator on the other."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from bench.speech import silence, speak
from sonicgate.engines.base import EngineConfig
from sonicgate.engines.fallback import FallbackEngine
from sonicgate.engines.local import LocalEngine, LocalModels
from sonicgate.engines.openai.client import OpenAISettings
from sonicgate.engines.openai.realtime import OpenAIRealtimeEngine
from sonicgate.events import AudioOut, EngineEvent, Interrupted, SpeechStarted, TurnEnded
from tests.conftest import Client, Connect, RunningServer, ServerFactory
from tests.emulators.openai_api import OpenAIEmulator, _RealtimeSession


@pytest.fixture
async def emulator() -> AsyncIterator[OpenAIEmulator]:
    async with OpenAIEmulator() as running:
        yield running


def realtime(emulator: OpenAIEmulator) -> OpenAIRealtimeEngine:
    return OpenAIRealtimeEngine(
        OpenAISettings(base_url=emulator.base_url, api_key=emulator.api_key)
    )


async def start(connect: Connect, server: RunningServer, **fields: object) -> Client:
    client: Client = await connect(server.ws())
    await client.initialize(engine="openai-realtime", **fields)
    return client


async def talk(client: Client, text: str) -> None:
    await client.stream_audio(speak(text) + silence(0.8))


async def test_a_voice_turn_through_the_realtime_api(
    emulator: OpenAIEmulator, make_server: ServerFactory, connect: Connect
) -> None:
    server = await make_server({"openai-realtime": realtime(emulator)})
    client = await start(connect, server)
    await talk(client, "What is the capital of France?")
    reply, seen = await client.final_reply()
    transcript = next(m for m in seen if m["type"] == "transcription" and m["isFinal"])
    assert transcript["text"] == emulator.transcript
    assert reply["text"] == emulator.reply
    audio = [m for m in seen if m["type"] == "audio_response"]
    assert audio and all(m["sampleRate"] == 24_000 for m in audio)

    update = next(e for e in emulator.realtime_events if e["type"] == "session.update")
    assert update["session"]["instructions"] == EngineConfig().system_prompt
    assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24_000}
    sent = sum(
        len(base64.b64decode(e["audio"]))
        for e in emulator.realtime_events
        if e["type"] == "input_audio_buffer.append"
    )
    spoken = len(speak("What is the capital of France?") + silence(0.8))
    assert abs(sent - spoken * 1.5) < 2_000  # resampled 16 -> 24 kHz


async def test_speech_during_the_reply_interrupts_and_truncates_it(
    emulator: OpenAIEmulator, make_server: ServerFactory, connect: Connect
) -> None:
    emulator.reply = " ".join(["and then the dragon flew on"] * 20)
    emulator.word_delay = 0.05
    server = await make_server({"openai-realtime": realtime(emulator)})
    client = await start(connect, server)
    await talk(client, "Tell me a story.")
    await client.until("audio_response", within=20)
    await talk(client, "Stop.")
    await client.until("interrupted", within=20)
    truncate = next(
        e for e in emulator.realtime_events if e["type"] == "conversation.item.truncate"
    )
    assert truncate["audio_end_ms"] > 0
    assert any(e["type"] == "response.cancel" for e in emulator.realtime_events)


async def test_typed_text_and_text_only(
    emulator: OpenAIEmulator, make_server: ServerFactory, connect: Connect
) -> None:
    server = await make_server({"openai-realtime": realtime(emulator)})
    client = await start(connect, server, textOnly=True)
    await client.send({"type": "text_message", "text": "Hello"})
    reply, seen = await client.final_reply()
    assert reply["text"] == emulator.reply
    assert not any(m["type"] == "audio_response" for m in seen)
    update = next(e for e in emulator.realtime_events if e["type"] == "session.update")
    assert update["session"]["output_modalities"] == ["text"]


async def test_a_refused_key_is_a_clear_error(
    emulator: OpenAIEmulator, make_server: ServerFactory, connect: Connect
) -> None:
    server = await make_server({"openai-realtime": realtime(emulator)})
    client: Client = await connect(server.ws())
    await client.send(
        {"type": "initialize", "engine": "openai-realtime", "openaiApiKey": "sk-not-this"}
    )
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == "unauthorized", error
    assert emulator.keys_seen[-1] == "sk-not-this"


async def test_a_socket_dropped_as_it_opens_is_a_clear_error(
    emulator: OpenAIEmulator,
    make_server: ServerFactory,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service accepts the WebSocket, then drops it before the session is set up:
    the client is told in its protocol (and a fallback could take over), rather than
    losing its connection to an unexpected exception."""

    async def drop_at_once(self: _RealtimeSession) -> None:
        await self.ws.close(code=1011)

    monkeypatch.setattr(_RealtimeSession, "run", drop_at_once)
    server = await make_server({"openai-realtime": realtime(emulator)})
    client: Client = await connect(server.ws())
    await client.send({"type": "initialize", "engine": "openai-realtime"})
    error = await client.recv()
    assert error["type"] == "error" and error["code"] == "provider_unreachable", error


@pytest.mark.models
async def test_a_dropped_socket_falls_back_to_local_with_the_history(
    emulator: OpenAIEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
) -> None:
    engine = FallbackEngine(realtime(emulator), LocalEngine(local_models))
    server = await make_server({"openai-realtime": engine})
    client = await start(connect, server)
    await client.send({"type": "text_message", "text": "My name is Ada."})
    await client.final_reply()
    emulator.drop_realtime_after_deltas = 2
    await client.send({"type": "text_message", "text": "What is my name?"})
    notice, _ = await client.until("error", within=30)
    assert notice["code"] == "engine_fallback"
    answer, _ = await client.final_reply()
    assert "ada" in str(answer["text"]).lower()


async def test_speech_over_a_reply_sent_whole_but_still_playing_stops_playback(
    emulator: OpenAIEmulator,
) -> None:
    """The service sends a reply faster than it plays: the user who talks over what is
    still playing must be able to stop it (an ``Interrupted``, as the contract says)."""
    session = await realtime(emulator).start(EngineConfig())
    events = session.events()
    seen: list[EngineEvent] = []
    await session.push_text("Tell me about Paris.")
    async with asyncio.timeout(10):
        async for event in events:
            seen.append(event)
            if isinstance(event, TurnEnded):
                break
    played = sum(len(e.pcm) / 2 / e.sample_rate for e in seen if isinstance(e, AudioOut))
    assert played > 1.0  # sent in a fraction of that: the client plays on for a second
    t = np.arange(int(0.3 * 16_000)) / 16_000
    await session.push_audio((np.sin(2 * np.pi * 220 * t) * 9000).astype("<i2").tobytes())
    after: list[EngineEvent] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.5):
            async for event in events:
                after.append(event)
    await session.close()
    assert any(isinstance(e, SpeechStarted) for e in after)  # the service heard the user
    assert any(isinstance(e, Interrupted) for e in after), after  # yet the audio plays on
    # The service forgets what the user did not hear: the reply up to where it stopped.
    truncate = [e for e in emulator.realtime_events if e["type"] == "conversation.item.truncate"]
    assert len(truncate) == 1 and truncate[0]["audio_end_ms"] < played * 1000, truncate
