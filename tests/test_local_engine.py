"""The local engine with the real models, on speech made by espeak-ng."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from bench.speech import natural, paused, silence, speak
from sonicgate.config import default_data_dir
from sonicgate.domain import Message, Role
from sonicgate.engines.base import EngineConfig, EngineError, supports_language
from sonicgate.engines.local import LocalEngine, LocalModels
from sonicgate.engines.local.engine import HISTORY_STEP, MAX_REPLY_TOKENS, chat_prompt
from sonicgate.engines.local.llm import ChatModel
from sonicgate.engines.local.turns import TurnOptions
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Interrupted,
    Metrics,
    ResponseTextFinal,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TriggerReason,
    TurnEnded,
)
from sonicgate.models import Selection, install
from tests.conftest import Connect, ServerFactory
from tests.test_metrics import scrape

pytestmark = pytest.mark.models

CHUNK = 4096 * 2  # the second seed's 4096-sample chunks
REAL_TIME = CHUNK / 32_000  # seconds between chunks at the pace of speech
# Silence after espeak-ng's speech: the turn detector often hears its flat ending as
# unfinished, and then waits for its 1.5 s fallback.
AFTER = 2.0


@pytest.fixture(scope="module")
def engine(local_models: LocalModels) -> LocalEngine:
    return LocalEngine(local_models)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def heard(text: str, expected: str) -> bool:
    """Most of the expected words were recognised (tiny.en on espeak is not perfect)."""
    got = set(words(text))
    wanted = words(expected)
    return sum(word in got for word in wanted) >= 0.75 * len(wanted)


async def collect(events: AsyncIterator[EngineEvent], until: type, into: list[EngineEvent]) -> None:
    async for event in events:
        into.append(event)
        if isinstance(event, until):
            return


async def stream(session: object, pcm: bytes, pace: float = 0.0) -> None:
    for offset in range(0, len(pcm), CHUNK):
        await session.push_audio(pcm[offset : offset + CHUNK])  # type: ignore[attr-defined]
        await asyncio.sleep(pace)


@pytest.fixture(scope="module")
def listening(local_models: LocalModels) -> LocalEngine:
    """Turns end when the turn detector hears the user is done."""
    return LocalEngine(local_models, TurnOptions(semantic=True))


async def test_a_spoken_turn_gets_a_spoken_reply(engine: LocalEngine) -> None:
    session = await engine.start(EngineConfig())
    events: list[EngineEvent] = []
    reader = asyncio.create_task(collect(session.events(), TurnEnded, events))
    await stream(session, silence(0.3) + speak("What is the capital of France?") + silence(AFTER))
    await asyncio.wait_for(reader, 60)
    await session.close()

    assert isinstance(events[0], SpeechStarted)
    final = next(e for e in events if isinstance(e, TranscriptFinal))
    assert heard(final.text, "what is the capital of france"), final.text
    assert final.reason is TriggerReason.SILENCE
    assert 0.5 < final.confidence <= 1.0
    reply = next(e for e in events if isinstance(e, ResponseTextFinal))
    assert "paris" in words(reply.text)
    audio = b"".join(e.pcm for e in events if isinstance(e, AudioOut))
    assert all(e.sample_rate == 24_000 for e in events if isinstance(e, AudioOut))
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float32) / 32768
    assert len(samples) > 24_000 * 0.5
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(samples**2)))
    assert rms_dbfs > -30, rms_dbfs  # audible, not a whisper
    metrics = next(e for e in events if isinstance(e, Metrics))
    assert set(metrics.stages) >= {"endpoint", "transcript", "llm_first_token", "first_audio"}


async def test_speech_during_the_reply_interrupts_it(engine: LocalEngine) -> None:
    session = await engine.start(
        EngineConfig(system_prompt="You are a storyteller. Tell long, detailed stories.")
    )
    events: list[EngineEvent] = []
    await session.push_text("Tell me a long story about a dragon and a knight.")
    await asyncio.wait_for(collect(session.events(), AudioOut, events), 30)
    reader = asyncio.create_task(collect(session.events(), Interrupted, events))
    await stream(session, speak("Stop, please stop.") + silence(0.2))
    await asyncio.wait_for(reader, 30)
    ended: list[EngineEvent] = []
    await asyncio.wait_for(collect(session.events(), TurnEnded, ended), 10)
    await session.close()

    cut = next(e for e in ended if isinstance(e, ResponseTextFinal))
    full_stream = "".join(getattr(e, "text", "") for e in events if e.type == "response_text_delta")
    assert cut.text  # what was spoken before the barge-in is kept ...
    assert len(cut.text) <= len(full_stream) + 1  # ... and nothing that was not sent
    stopped = next(e for e in ended if isinstance(e, Metrics))
    assert "barge_in_stopped" in stopped.stages  # timed by bench/local_barge_in.py
    assert isinstance(ended[-1], TurnEnded) and ended[-1].interrupted


async def test_speech_while_the_sent_reply_still_plays_stops_playback(
    engine: LocalEngine,
) -> None:
    session = await engine.start(EngineConfig())
    events: list[EngineEvent] = []
    await session.push_text("Describe the sea in two sentences.")
    await asyncio.wait_for(collect(session.events(), TurnEnded, events), 60)
    played = sum(len(e.pcm) / 2 / e.sample_rate for e in events if isinstance(e, AudioOut))
    assert played > 2  # seconds of reply audio: the client plays it for that long
    after: list[EngineEvent] = []
    reader = asyncio.create_task(collect(session.events(), Interrupted, after))
    await stream(session, speak("Wait a second.") + silence(0.2))
    await asyncio.wait_for(reader, 10)
    await session.close()
    assert isinstance(after[-1], Interrupted)  # the client stops playing the rest


async def test_two_sessions_at_once(engine: LocalEngine) -> None:
    async def converse(text: str) -> str:
        session = await engine.start(EngineConfig())
        events: list[EngineEvent] = []
        reader = asyncio.create_task(collect(session.events(), TurnEnded, events))
        await stream(session, speak(text) + silence(AFTER), pace=0.05)
        await asyncio.wait_for(reader, 90)
        await session.close()
        return next(e.text for e in events if isinstance(e, TranscriptFinal))

    first, second = await asyncio.gather(
        converse("What is the capital of Italy?"), converse("Tell me a short joke.")
    )
    assert heard(first, "what is the capital of italy"), first
    assert heard(second, "tell me a short joke"), second


async def test_capabilities_list_only_english(engine: LocalEngine) -> None:
    capabilities = engine.capabilities()
    assert capabilities.languages == ("en-US", "en-GB")
    assert not supports_language(capabilities, "fr-FR")
    with pytest.raises(EngineError) as error:
        await engine.start(EngineConfig(voice="fenrir"))  # downloads on first use: not here
    assert error.value.code == "unknown_voice"


async def test_a_recording_with_no_speech_says_so(engine: LocalEngine) -> None:
    session = await engine.start(EngineConfig())
    events: list[EngineEvent] = []
    reader = asyncio.create_task(collect(session.events(), TurnEnded, events))
    await session.push_utterance(silence(1.0), TriggerReason.VOICE_DATA)
    await asyncio.wait_for(reader, 30)
    await session.close()
    assert any(e.type == "error" and getattr(e, "code", "") == "no_speech" for e in events)


async def test_seed_client_talks_to_the_local_engine_through_the_server(
    engine: LocalEngine, make_server: ServerFactory, connect: Connect
) -> None:
    # Its own executors: the server shuts them down when it stops.
    server = await make_server({"local": LocalEngine(engine.models)})
    client = await connect(server.ws())
    await client.send({"type": "initialize"})
    ready = await client.recv()
    assert ready["engine"] == "local"
    audio = speak("What is the largest ocean?") + silence(AFTER)
    for offset in range(0, len(audio), CHUNK):
        chunk = base64.b64encode(audio[offset : offset + CHUNK]).decode()
        await client.send({"type": "audio_chunk", "audio": chunk, "isComplete": False})
    final, before = await client.until("text_response", within=60)
    transcript = [m for m in before if m["type"] == "transcription" and m["isFinal"]]
    assert heard(transcript[0]["text"], "what is the largest ocean"), transcript
    while not (final["type"] == "text_response" and final["isFinal"]):
        final = await client.recv(within=60)
        before.append(final)
    assert final["text"]
    assert any(m["type"] == "audio_response" and m["sampleRate"] == 24000 for m in before)
    await client.until("metrics")
    seen = await scrape(server)
    voice_to_voice = (("engine", "local"), ("stage", "first_audio"))
    assert seen[("sonicgate_turn_stage_seconds_count", voice_to_voice)] == 1


async def test_the_optional_models_hold_a_conversation() -> None:
    data_dir = default_data_dir()
    choice = Selection(
        stt="whisper-base", llm="qwen2.5-coder-1.5b-instruct-q4_k_m", tts="piper-joe"
    )
    install(data_dir, choice, progress=False)
    engine = LocalEngine.load(data_dir, choice)
    assert engine.capabilities().models == ("silero-vad-v6", *choice_names(choice))
    assert engine.capabilities().output_sample_rate == 22_050
    session = await engine.start(EngineConfig())
    events: list[EngineEvent] = []
    reader = asyncio.create_task(collect(session.events(), TurnEnded, events))
    question = "What is the largest ocean on Earth?"
    await stream(session, silence(0.3) + speak(question) + silence(AFTER))
    await asyncio.wait_for(reader, 90)
    await session.close()
    await engine.aclose()
    final = next(e for e in events if isinstance(e, TranscriptFinal))
    assert heard(final.text, question), final.text
    reply = next(e for e in events if isinstance(e, ResponseTextFinal))
    assert "pacific" in words(reply.text), reply.text
    assert any(isinstance(e, AudioOut) and e.sample_rate == 22_050 for e in events)


def choice_names(choice: Selection) -> tuple[str, ...]:
    return tuple(name for name in (choice.stt, choice.llm, choice.tts) if name)


async def test_text_only_mode_answers_in_words_alone(engine: LocalEngine) -> None:
    session = await engine.start(EngineConfig(text_only=True))
    events: list[EngineEvent] = []
    reader = asyncio.create_task(collect(session.events(), TurnEnded, events))
    await session.push_text("What is the capital of France?")
    await asyncio.wait_for(reader, 60)
    await session.close()
    reply = next(e for e in events if isinstance(e, ResponseTextFinal))
    assert "paris" in words(reply.text)
    assert not any(isinstance(e, AudioOut) for e in events)


async def one_turn(engine: LocalEngine, pcm: bytes) -> list[EngineEvent]:
    """``pcm`` streamed at the pace of speech (the turn detector answers while audio
    goes on coming); the events up to the end of the first turn."""
    session = await engine.start(EngineConfig(text_only=True))
    events: list[EngineEvent] = []
    reader = asyncio.create_task(collect(session.events(), TurnEnded, events))
    await stream(session, pcm, pace=REAL_TIME)
    await asyncio.wait_for(reader, 60)
    await session.close()
    return events


async def test_the_detector_ends_a_finished_question_before_the_silence_fallback(
    listening: LocalEngine,
) -> None:
    # 0.8 s of silence: shorter than the fallback, only the detector can end the turn.
    events = await one_turn(
        listening, silence(0.3) + natural("What is the capital of France?") + silence(0.8)
    )
    final = next(e for e in events if isinstance(e, TranscriptFinal))
    assert heard(final.text, "what is the capital of france"), final.text
    metrics = next(e for e in events if isinstance(e, Metrics))
    assert metrics.stages["endpoint"] < 0.8


async def test_a_pause_inside_a_sentence_does_not_end_the_turn(listening: LocalEngine) -> None:
    said, _ = paused("So the problem is | my laptop won't turn on.", [0.9])
    events = await one_turn(listening, silence(0.3) + said + silence(2.0))
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    assert len(finals) == 1
    assert heard(finals[0].text, "so the problem is my laptop won't turn on"), finals[0].text


class Unsure:
    """A turn detector that never knows: whether the turn ends is up to the words."""

    def probability(self, pcm: bytes) -> float:
        return 0.8


class Chatting:
    """The real chat model, as a plain chat: what a subclass adds, it has."""

    def __init__(self, llm: ChatModel) -> None:
        self._llm, self.n_ctx = llm, llm.n_ctx

    def count_tokens(self, text: str) -> int:
        return self._llm.count_tokens(text)

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]:
        return self._llm.stream(messages, cancel, max_tokens)


class Fragmentary(Chatting):
    """Every user's words read as a cut-off phrase."""

    def sentence_end(self, messages: list[dict[str, str]]) -> float:
        return 0.1


class ReadingAhead(Chatting):
    """Reads ahead, noting the user's words it was given."""

    def __init__(self, llm: ChatModel) -> None:
        super().__init__(llm)
        self.read: list[str] = []

    def read_ahead(self, messages: list[dict[str, str]]) -> None:
        self.read.append(messages[-1]["content"])
        self._llm.read_ahead(messages)


@pytest.mark.parametrize("whole", [True, False])
async def test_where_the_detector_is_unsure_the_words_end_the_turn(
    local_models: LocalModels, whole: bool
) -> None:
    """A finished question ends the turn within the silence; with the words read as a
    fragment, the turn waits for the silence fallback (1.5 s), which never comes here."""
    assert isinstance(local_models.llm, ChatModel)
    llm = local_models.llm if whole else Fragmentary(local_models.llm)
    engine = LocalEngine(replace(local_models, turn=Unsure(), llm=llm))
    session = await engine.start(EngineConfig(text_only=True))
    events: list[EngineEvent] = []
    reader = asyncio.create_task(collect(session.events(), TranscriptFinal, events))
    # 0.6 s of silence: past the detector's ask, short of its fallback.
    await stream(session, silence(0.3) + natural("What is the capital of France?") + silence(0.6))
    done, _ = await asyncio.wait([reader], timeout=5)
    reader.cancel()
    await session.close()
    assert bool(done) is whole
    if whole:
        assert isinstance(events[-1], TranscriptFinal)
        assert heard(events[-1].text, "what is the capital of france"), events


class WordCounter:
    """A chat model of 400 tokens where every word is one: only its budget matters here."""

    n_ctx = 400

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]:
        raise NotImplementedError


async def test_the_llm_reads_the_words_while_the_user_speaks(local_models: LocalModels) -> None:
    """Each partial transcript is read ahead (those that come while the LLM is free),
    and the reply that follows is whole."""
    assert isinstance(local_models.llm, ChatModel)
    llm = ReadingAhead(local_models.llm)
    said = natural("Tell me what the weather is usually like in London in the spring.")
    events = await one_turn(LocalEngine(replace(local_models, llm=llm)), said + silence(AFTER))
    partials = [e.text for e in events if isinstance(e, TranscriptPartial)]
    assert llm.read and set(llm.read) <= set(partials), (llm.read, partials)
    reply = next(e for e in events if isinstance(e, ResponseTextFinal))
    assert words(reply.text), reply


async def test_the_llm_runs_on_the_engine_s_llm_thread_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llama.cpp's OpenMP keeps a team of threads for each thread that runs the model:
    loaded, timed, warmed up and answering, it runs on one thread, the engine's own."""
    ran: set[str] = set()
    for method in ("__init__", "speed", "sentence_end", "stream"):
        original = getattr(ChatModel, method)

        def noted(*args: object, _original: Any = original, **kwargs: object) -> Any:
            ran.add(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(ChatModel, method, noted)
    engine = LocalEngine.load(default_data_dir())
    await one_turn(engine, natural("What is the capital of France?") + silence(AFTER))
    await engine.aclose()
    (llm_thread,) = engine.llm_pool._threads
    assert ran == {llm_thread.name}, ran


def test_numpy_stays_on_one_thread(local_models: LocalModels) -> None:
    """Once the engine is loaded, numpy's matrix products run on the calling thread:
    BLAS threads idling in a spin would take the LLM's cores."""
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas), blas


def test_the_prompt_keeps_its_start_while_history_grows() -> None:
    """llama.cpp reuses the cache for the start a prompt shares with the last one:
    history is dropped in steps, not one message a turn."""
    llm = WordCounter()
    history: list[Message] = []
    starts: list[tuple[str, ...]] = []
    for turn in range(40):
        messages = chat_prompt(llm, "Be brief.", tuple(history), f"question {turn}")
        assert messages[0] == {"role": "system", "content": "Be brief."}
        assert messages[-1] == {"role": "user", "content": f"question {turn}"}
        kept = [m["content"] for m in messages[1:-1]]
        assert kept or not history  # a step is smaller than the budget: some history stays
        assert sum(len(text.split()) + 8 for text in kept) <= 400 - 160 - 64
        starts.append(tuple(kept[:1]))
        history += [Message(Role.USER, f"question {turn}"), Message(Role.ASSISTANT, "an answer")]
    changes = sum(a != b for a, b in pairwise(starts))
    assert 0 < changes <= 40 // (HISTORY_STEP // 2)  # the start moves a step at a time


def test_a_message_longer_than_the_context_leaves_room_for_the_reply() -> None:
    """A typed message (up to the 8 MB frame limit) or a long recording's transcript
    may alone outgrow the context: the prompt still fits it with room for the reply.
    Before, it went to llama.cpp whole, which failed ("llama_decode returned 1"), and the
    turn ended in engine_failed."""
    llm = WordCounter()
    history = (Message(Role.USER, "Hi"), Message(Role.ASSISTANT, "Hello"))
    text = " ".join(f"word{n}" for n in range(1000))
    messages = chat_prompt(llm, "Be brief.", history, text)
    assert messages[-1]["role"] == "user"
    used = sum(llm.count_tokens(m["content"]) + 8 for m in messages)
    assert used <= llm.n_ctx - MAX_REPLY_TOKENS, used
