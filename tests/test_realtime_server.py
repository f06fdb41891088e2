"""``/v1/realtime``: the unmodified ``openai`` SDK, pointed at sonicgate, holds
voice conversations with sonicgate's engines."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeConversationItemUserMessageParam

from bench.speech import natural, silence, speak
from sonicgate.audio.formats import resample
from sonicgate.engines.local import LocalEngine, LocalModels
from tests.conftest import RunningServer, ServerFactory
from tests.scripted_engine import ScriptedEngine

CHUNK = 4800  # 100 ms at 24 kHz


def sdk(server: RunningServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key="not-needed", base_url=f"{server.url}/v1")


async def append(connection: Any, pcm16k: bytes) -> None:
    """Send 16 kHz speech as the Realtime API wants it: 24 kHz pcm16, base64."""
    pcm = resample(pcm16k, 16_000, 24_000)
    for offset in range(0, len(pcm), CHUNK * 2):
        audio = base64.b64encode(pcm[offset : offset + CHUNK * 2]).decode()
        await connection.input_audio_buffer.append(audio=audio)


def user_text(text: str) -> RealtimeConversationItemUserMessageParam:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def collect(connection: Any, until: str, limit: float = 60.0) -> list[Any]:
    """Server events up to (and with) the first of type ``until``."""
    seen: list[Any] = []
    events: AsyncIterator[Any] = connection.__aiter__()
    while True:
        event = await asyncio.wait_for(anext(events), limit)
        seen.append(event)
        if event.type == until:
            return seen


async def test_the_sdk_talks_to_a_sonicgate_engine(
    make_uvicorn: ServerFactory, scripted: ScriptedEngine
) -> None:
    server = await make_uvicorn({"scripted": scripted})
    async with sdk(server).realtime.connect(model="scripted") as connection:
        created = await collect(connection, "session.created", 10)
        assert created[-1].session.model == "scripted"
        await connection.session.update(
            session={
                "type": "realtime",
                "instructions": "Be brief.",
                "output_modalities": ["audio"],
            }
        )
        await collect(connection, "session.updated", 10)
        assert scripted.configs[-1].system_prompt == "Be brief."

        await append(connection, silence(1.2))
        await connection.input_audio_buffer.commit()
        events = await collect(connection, "response.done", 10)
        kinds = [event.type for event in events]
        assert "input_audio_buffer.speech_started" in kinds
        transcript = next(
            e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
        )
        assert transcript.transcript == scripted.transcript
        assert kinds.index("response.created") < kinds.index("response.output_audio.delta")
        audio = b"".join(
            base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
        )
        assert len(audio) == 2 * int(0.4 * 24_000)  # the two 0.2 s chunks, at 24 kHz
        words = "".join(
            e.delta for e in events if e.type == "response.output_audio_transcript.delta"
        )
        assert words.strip() == scripted.reply
        assert events[-1].response.status == "completed"

        await connection.conversation.item.create(item=user_text("And in writing?"))
        await connection.response.create()
        events = await collect(connection, "response.done", 10)
        assert scripted.texts[-1] == "And in writing?"
        assert events[-1].response.output[0].content[0].text == scripted.reply


async def test_unknown_events_get_an_error_event_and_the_session_goes_on(
    make_uvicorn: ServerFactory, scripted: ScriptedEngine
) -> None:
    server = await make_uvicorn({"scripted": scripted})
    async with sdk(server).realtime.connect(model="scripted") as connection:
        await collect(connection, "session.created", 10)
        await connection.send({"type": "input_audio_buffer.append", "audio": "%%%"})
        error = (await collect(connection, "error", 10))[-1]
        assert error.error.code == "bad_base64"
        # An event the API has not: the SDK's types allow none such.
        await connection.send({"type": "no.such.event"})  # type: ignore[arg-type]
        error = (await collect(connection, "error", 10))[-1]
        assert error.error.code == "unknown_type"
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            }
        )
        assert (await collect(connection, "response.done", 10))[-1].response.status == "completed"


@pytest.mark.models
async def test_a_voice_conversation_with_the_local_engine_and_an_interruption(
    make_uvicorn: ServerFactory, local_models: LocalModels
) -> None:
    server = await make_uvicorn({"local": LocalEngine(local_models)})
    async with sdk(server).realtime.connect(model="gpt-realtime") as connection:
        await collect(connection, "session.created", 10)
        # In hibari's voice: Whisper may mishear espeak-ng's "France" on some CPUs ("the
        # capital and friends"). 2 s of silence after each: past the turn detector's
        # fallback (1.5 s), which espeak-ng's flat endings often make it wait for.
        await append(
            connection, silence(0.3) + natural("What is the capital of France?") + silence(2.0)
        )
        events = await collect(connection, "response.done", 60)
        transcript = next(
            e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
        )
        assert "capital" in transcript.transcript.lower()
        assert any(e.type == "response.output_audio.delta" for e in events)
        assert "paris" in events[-1].response.output[0].content[0].text.lower()

        await append(connection, speak("Tell me a long story about a dragon.") + silence(2.0))
        await collect(connection, "response.output_audio.delta", 60)
        await append(connection, speak("Stop. What time is it?") + silence(2.0))
        events = await collect(connection, "response.done", 60)
        assert events[-1].response.status == "cancelled"
        assert "input_audio_buffer.speech_started" in [e.type for e in events]
