"""The OpenAI cascade through sonicgate, against the HTTP API emulator, with the
real ``openai`` SDK inside the engine and a seed-001 client outside."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bench.speech import silence, speak
from sonicgate.engines.fallback import FallbackEngine
from sonicgate.engines.local import LocalEngine, LocalModels
from sonicgate.engines.openai.cascade import openai_cascade
from sonicgate.engines.openai.client import OpenAISettings
from tests.conftest import Client, Connect, RunningServer, ServerFactory
from tests.emulators.openai_api import OpenAIEmulator
from tests.test_metrics import scrape

pytestmark = pytest.mark.models  # the VAD is the local one


@pytest.fixture
async def emulator() -> AsyncIterator[OpenAIEmulator]:
    async with OpenAIEmulator() as running:
        yield running


def cascade(emulator: OpenAIEmulator, local_models: LocalModels) -> LocalEngine:
    settings = OpenAISettings(base_url=emulator.base_url, api_key=emulator.api_key)
    return openai_cascade(settings, local_models.vad)


async def talk(client: Client, text: str) -> None:
    await client.stream_audio(silence(0.3) + speak(text) + silence(1.0))


async def start(connect: Connect, server: RunningServer, **fields: object) -> Client:
    client: Client = await connect(server.ws())
    await client.initialize(engine="openai", **fields)
    return client


async def test_a_spoken_question_goes_through_whisper_chat_and_tts(
    emulator: OpenAIEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
) -> None:
    server = await make_server({"openai": cascade(emulator, local_models)})
    client = await start(connect, server)
    await talk(client, "What is the capital of France?")
    final, before = await client.until("metrics", within=30)
    kinds = [m["type"] for m in before]
    transcript = next(m for m in before if m["type"] == "transcription" and m["isFinal"])
    assert transcript["text"] == emulator.transcript
    assert 0.8 < transcript["confidence"] <= 1.0
    reply = next(m for m in before if m["type"] == "text_response" and m["isFinal"])
    assert reply["text"] == emulator.reply
    audio = [m for m in before if m["type"] == "audio_response"]
    assert audio and all(m["sampleRate"] == 24_000 for m in audio)
    assert kinds.index("audio_response") < kinds.index("text_response") + len(kinds)

    calls = [path for path, _ in emulator.requests]
    assert calls[-3:] == ["completions", "speech", "speech"]  # one synthesis per sentence
    chat = next(body for path, body in emulator.requests if path == "completions")
    assert chat["model"] == "gpt-4o-mini" and chat["messages"][-1]["content"] == emulator.transcript
    spoken = [body["input"] for path, body in emulator.requests if path == "speech"]
    assert spoken == ["The capital of France is Paris.", "It is a lovely city on the Seine."]
    assert final["stages"]["first_audio"] > 0


async def test_typed_text_and_text_only_replies(
    emulator: OpenAIEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
) -> None:
    server = await make_server({"openai": cascade(emulator, local_models)})
    client = await start(connect, server, textOnly=True)
    await client.send({"type": "text_message", "text": "Hello there"})
    reply, before = await client.final_reply(within=10)
    assert reply["text"] == emulator.reply
    assert not any(m["type"] == "audio_response" for m in before)
    assert "speech" not in [path for path, _ in emulator.requests]


async def test_a_refused_key_is_a_clear_error_and_the_session_stays(
    emulator: OpenAIEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
) -> None:
    server = await make_server({"openai": cascade(emulator, local_models)})
    client = await start(connect, server, openaiApiKey="sk-wrong-one")
    await client.send({"type": "text_message", "text": "Hello"})
    error, _ = await client.until("error", within=10)
    assert error["code"] == "unauthorized" and "API key" in error["message"]
    assert emulator.keys_seen[-1] == "sk-wrong-one"  # the session's own key, not the server's
    emulator.api_key = "sk-wrong-one"  # the key becomes valid: the same session goes on
    await client.send({"type": "text_message", "text": "Hello again"})
    reply, _ = await client.until("text_response", within=10)
    assert reply["sessionId"] == error["sessionId"]


@pytest.mark.parametrize(
    ("fail", "drop"), [({"completions": 429}, None), ({"completions": 503}, None), ({}, 3)]
)
async def test_provider_failures_fall_back_to_local_with_the_history(
    emulator: OpenAIEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
    fail: dict[str, int],
    drop: int | None,
) -> None:
    engine = FallbackEngine(cascade(emulator, local_models), LocalEngine(local_models))
    server = await make_server({"openai": engine})
    client = await start(connect, server)
    await client.send({"type": "text_message", "text": "My name is Ada."})
    await client.until("text_response", within=10)
    emulator.fail, emulator.drop_reply_after_words = fail, drop
    await client.send({"type": "text_message", "text": "What is my name?"})
    notice, _ = await client.until("error", within=30)
    assert notice["code"] == "engine_fallback"
    answer, _ = await client.final_reply(within=60)
    assert "ada" in answer["text"].lower()  # the local engine got the history
    assert (await scrape(server))[("sonicgate_fallbacks_total", (("engine", "openai"),))] == 1
