"""Every engine through every check of the contract (``tests/contract.py``): the local
one on its real models, the cloud ones through their real SDKs against the emulators."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bench.speech import silence
from bench.speech import speak as espeak
from sonicgate.domain import ErrorCode
from sonicgate.engines.base import Engine, EngineConfig, EngineSession
from sonicgate.engines.bedrock import bedrock_cascade
from sonicgate.engines.bedrock_settings import BedrockSettings
from sonicgate.engines.echo import EchoEngine
from sonicgate.engines.fallback import FallbackEngine
from sonicgate.engines.local import LocalEngine, LocalModels
from sonicgate.engines.local.llm import Chat
from sonicgate.engines.local.turns import TurnOptions
from sonicgate.engines.openai.cascade import openai_cascade
from sonicgate.engines.openai.client import OpenAISettings
from sonicgate.engines.openai.realtime import OpenAIRealtimeEngine
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Error,
    Interrupted,
    ResponseTextDelta,
    ResponseTextFinal,
    SpeechStarted,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
    Usage,
)
from tests.contract import CHECKS, ContractViolation, Subject, check_grammar
from tests.emulators.bedrock_converse import BedrockEmulator
from tests.emulators.nova_sonic import Failure, NovaEmulator, Turn
from tests.emulators.openai_api import OpenAIEmulator
from tests.test_nova_sonic import CREDENTIALS, nova, quiet, speech

STORYTELLER = "You are a storyteller. Tell long, detailed stories."
BRIEF = 24  # tokens at most in a local reply: a few seconds, with its speech
LONG_REPLY = " ".join(["And then the dragon flew on over the hills."] * 6)

# What an engine cannot do, by its nature, and why: those checks are skipped, saying so.
NEVER_UNDER_WAY = "echo's replies are whole the moment they start: none is ever under way"
LACKS: dict[str, dict[str, str]] = {
    "echo": {
        "spoken turn": "echo sends each chunk back as it comes, outside any turn",
        "text during a reply": NEVER_UNDER_WAY,
        "barge-in": NEVER_UNDER_WAY,
        "stop during a reply": NEVER_UNDER_WAY,
        "close during a reply": NEVER_UNDER_WAY,
        "provider failure": "echo has no provider behind it",
    },
}
ON_MODELS = {"local", "bedrock", "openai"}  # they hear through the local models


def espoken(text: str) -> bytes:
    """espeak-ng's speech, which the local VAD hears, then the silence that ends the turn."""
    return silence(0.3) + espeak(text) + silence(0.8)


class Breakable:
    """A chat model whose replies are kept short (the suite's time), and that, once
    broken, dies after its first words (then works again)."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.n_ctx = chat.n_ctx
        self.broken = False

    def count_tokens(self, text: str) -> int:
        return self.chat.count_tokens(text)

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]:
        broken, self.broken = self.broken, False
        for delta in self.chat.stream(messages, cancel, min(max_tokens, BRIEF)):
            yield delta
            if broken:
                raise RuntimeError("the model's process died")


@dataclass
class EngineSubject:
    """``engine``'s sessions. Long replies are ``prolong``'s doing (an emulator's knobs)
    or ``long_config``'s (a storyteller's prompt), the failure ``breaks``'s."""

    engine: Engine
    utterance: Callable[[str], bytes] = espoken
    config: EngineConfig = field(default_factory=EngineConfig)
    prolong: Callable[[], None] = lambda: None
    breaks: Callable[[], None] = lambda: None
    long_config: EngineConfig | None = None

    async def open(self, *, long_replies: bool = False) -> EngineSession:
        if long_replies:
            self.prolong()
        config = self.long_config if long_replies and self.long_config else self.config
        return await self.engine.start(config)

    def break_provider(self) -> None:
        self.breaks()


def tone(text: str) -> bytes:
    """A tone for the Nova emulator, which hears speech by its energy, as long as the
    words would take; then the silence that ends the turn."""
    return speech(0.06 * len(text)) + quiet(0.8)


@pytest.fixture(scope="module")
def local(local_models: LocalModels) -> LocalEngine:
    """One local engine for the suite: its chat model breakable, turns ending after a
    fixed silence (no turn detector to wait for)."""
    models = replace(local_models, llm=Breakable(local_models.llm))
    return LocalEngine(models, TurnOptions(semantic=False))


async def local_subject(request: pytest.FixtureRequest, _: AsyncExitStack) -> Subject:
    engine: LocalEngine = request.getfixturevalue("local")
    chat = engine.models.llm
    assert isinstance(chat, Breakable)
    return EngineSubject(
        engine,
        long_config=EngineConfig(system_prompt=STORYTELLER),
        breaks=lambda: setattr(chat, "broken", True),
    )


async def echo_subject(_: pytest.FixtureRequest, __: AsyncExitStack) -> Subject:
    return EngineSubject(EchoEngine())


async def nova_subject(_: pytest.FixtureRequest, stack: AsyncExitStack) -> Subject:
    emulator = await stack.enter_async_context(NovaEmulator())

    def prolong() -> None:
        emulator.realtime_output = True  # audio at the pace of speech, as the service sends it
        emulator.script, emulator.default_turn = [], Turn("Tell me more", LONG_REPLY)

    def breaks() -> None:
        emulator.script = [Turn("(typed)", LONG_REPLY, fail=Failure(drop_after_chunks=1))]

    emulator.script = [Turn("What is the capital of France?", "Paris.")]
    return EngineSubject(
        nova(emulator), tone, EngineConfig(credentials=CREDENTIALS), prolong, breaks
    )


async def nova_falling_back_subject(
    request: pytest.FixtureRequest, stack: AsyncExitStack
) -> Subject:
    """Nova Sonic as served by default: another engine takes over when it fails."""
    nova_sonic = await nova_subject(request, stack)
    assert isinstance(nova_sonic, EngineSubject)
    return replace(nova_sonic, engine=FallbackEngine(nova_sonic.engine, EchoEngine()))


async def bedrock_subject(request: pytest.FixtureRequest, stack: AsyncExitStack) -> Subject:
    emulator = await stack.enter_async_context(BedrockEmulator())
    local: LocalEngine = request.getfixturevalue("local")
    engine = bedrock_cascade(BedrockSettings(endpoint_url=emulator.endpoint), local)
    stack.push_async_callback(engine.aclose)

    def prolong() -> None:
        emulator.words_per_frame, emulator.frame_delay = 1, 0.05

    def breaks() -> None:
        emulator.drop_after_frames = 1

    return EngineSubject(
        engine, config=EngineConfig(credentials=CREDENTIALS), prolong=prolong, breaks=breaks
    )


def openai_settings(emulator: OpenAIEmulator) -> OpenAISettings:
    return OpenAISettings(base_url=emulator.base_url, api_key=emulator.api_key)


def prolonged(emulator: OpenAIEmulator) -> Callable[[], None]:
    def prolong() -> None:
        emulator.reply, emulator.word_delay = LONG_REPLY, 0.02

    return prolong


async def openai_subject(request: pytest.FixtureRequest, stack: AsyncExitStack) -> Subject:
    emulator = await stack.enter_async_context(OpenAIEmulator())
    models: LocalModels = request.getfixturevalue("local_models")
    engine = openai_cascade(openai_settings(emulator), models.vad)
    stack.push_async_callback(engine.aclose)

    def breaks() -> None:
        emulator.drop_reply_after_words = 2

    return EngineSubject(engine, prolong=prolonged(emulator), breaks=breaks)


async def realtime_subject(_: pytest.FixtureRequest, stack: AsyncExitStack) -> Subject:
    emulator = await stack.enter_async_context(OpenAIEmulator())

    def breaks() -> None:
        emulator.drop_realtime_after_deltas = 2

    engine = OpenAIRealtimeEngine(openai_settings(emulator))
    return EngineSubject(engine, prolong=prolonged(emulator), breaks=breaks)


SUBJECTS = {
    "echo": echo_subject,
    "local": local_subject,
    "nova-sonic": nova_subject,
    "nova-sonic, falling back": nova_falling_back_subject,
    "bedrock": bedrock_subject,
    "openai": openai_subject,
    "openai-realtime": realtime_subject,
}


def cases() -> list[Any]:
    found = []
    for engine in SUBJECTS:
        for check in CHECKS:
            marks = [pytest.mark.models] if engine in ON_MODELS else []
            if (reason := LACKS.get(engine, {}).get(check)) is not None:
                marks.append(pytest.mark.skip(reason=reason))
            found.append(pytest.param(engine, check, marks=marks, id=f"{engine}: {check}"))
    return found


@pytest.fixture
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    async with AsyncExitStack() as stack:
        yield await SUBJECTS[request.param](request, stack)


@pytest.mark.parametrize(("subject", "check"), cases(), indirect=["subject"])
async def test_engine_keeps_the_contract(subject: Subject, check: str) -> None:
    await CHECKS[check](subject)


AUDIO = AudioOut(b"\0\0", 24_000)
HEARD = TranscriptFinal("hi", 1.0, TriggerReason.SILENCE)


@pytest.mark.parametrize(
    "events",
    [
        [AUDIO],  # a reply with no turn
        [HEARD, HEARD],  # a second turn over the first
        [HEARD, AUDIO, TurnEnded()],  # no final text
        [HEARD, AUDIO, Interrupted(), ResponseTextFinal(""), TurnEnded()],  # not marked cut
        [HEARD, AUDIO, ResponseTextFinal("Hi"), TurnEnded(interrupted=True)],  # nothing cut it
        [HEARD, AUDIO, ResponseTextFinal("Hi"), AUDIO, TurnEnded()],  # audio after the end
        [HEARD, AUDIO, ResponseTextFinal("Hi")],  # never ended
    ],
)
def test_the_grammar_refuses_what_the_contract_forbids(events: list[EngineEvent]) -> None:
    with pytest.raises(ContractViolation):
        check_grammar(events)


def test_the_grammar_takes_what_the_contract_allows() -> None:
    check_grammar(
        [
            SpeechStarted(),
            HEARD,
            AUDIO,
            Interrupted(),
            ResponseTextFinal(""),
            TurnEnded(interrupted=True),
            TranscriptFinal("", 1.0, TriggerReason.SILENCE),
            TurnEnded(),  # nothing to answer
            HEARD,
            ResponseTextDelta("Hi"),
            Error(ErrorCode.PROVIDER_ERROR, "gone"),
            TurnEnded(),  # cut short by the error
            Usage(1, 1),
            Interrupted(),  # the last reply still plays
        ]
    )
