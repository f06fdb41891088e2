"""The local engine's session logic on fake models: a VAD that hears loud frames as
speech, a recognizer that names the loud values it hears, a chat model that counts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from sonicgate.engines.base import EngineConfig
from sonicgate.engines.local import LocalEngine, LocalModels
from sonicgate.engines.local.engine import LocalSession
from sonicgate.engines.local.stt import Transcript
from sonicgate.engines.local.turns import FRAME_SAMPLES, TurnOptions
from sonicgate.engines.local.vad import SileroVad
from sonicgate.events import (
    Error,
    ResponseTextDelta,
    ResponseTextFinal,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
)
from tests.contract import Listener, check_grammar

LOUD = 0.1  # a frame louder than this (mean absolute sample, full scale 1) is speech
# The recognizer "hears" these sample values, one word each.
WORDS = {20_000: "first", 24_000: "second"}


class FakeOnnx:
    """Silero's interface: a probability from each frame's loudness."""

    def run(
        self, _: object, feeds: dict[str, NDArray[np.float32]]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        frame = feeds["input"][0, -FRAME_SAMPLES:]
        probability = 0.9 if float(np.abs(frame).mean()) > LOUD else 0.0
        return np.array([[probability]], dtype=np.float32), feeds["h"], feeds["c"]


class FakeVad(SileroVad):
    def __init__(self) -> None:
        self.session = cast(Any, FakeOnnx())


class Listening:
    """Names the loud values in the audio, in order; the first call may be held."""

    def __init__(self) -> None:
        self.heard: list[bytes] = []
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()

    def transcribe(self, pcm: bytes, language: str = "en") -> Transcript:
        self.heard.append(pcm)
        self.started.set()
        self.hold.wait(10)
        samples = np.frombuffer(pcm, dtype="<i2")
        said: list[str] = []
        for value in samples.tolist():
            word = WORDS.get(value)
            if word and (not said or said[-1] != word):
                said.append(word)
        return Transcript(" ".join(said), 0.9 if said else 0.0)


class Counting:
    """A chat model that counts to ``words``, one word each ``pause`` seconds, the words
    ``between`` apart."""

    n_ctx = 2048

    def __init__(self, words: int = 6, pause: float = 0.0, between: str = ", ") -> None:
        self.words, self.pause, self.between = words, pause, between
        self.prompts: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]:
        self.prompts.append(messages[-1]["content"])
        for number in range(1, self.words + 1):
            if cancel.is_set():
                return
            time.sleep(self.pause)
            yield f"word{number}{self.between}" if number < self.words else f"word{number}."


class Silent:
    sample_rate = 24_000
    voices: tuple[str, ...] = ("heart",)

    def synthesize(self, text: str) -> bytes:
        return bytes(480)  # 10 ms


def models(llm: Counting | None = None, stt: Listening | None = None) -> LocalModels:
    return LocalModels(
        vad=FakeVad(),
        stt=stt or Listening(),
        llm=llm or Counting(),
        tts=Silent(),
        names=("fake",),
    )


def sound(seconds: float, value: int = 0) -> bytes:
    return np.full(round(seconds * 16_000), value, dtype="<i2").tobytes()


async def feed(session: LocalSession, pcm: bytes, chunk: int = 4096 * 2) -> None:
    for offset in range(0, len(pcm), chunk):
        await session.push_audio(pcm[offset : offset + chunk])


def engine(local: LocalModels, **options: Any) -> LocalEngine:
    """Turns end after 500 ms of silence (no turn detector)."""
    return LocalEngine(local, TurnOptions(semantic=False, **options))


async def test_the_recognizer_hears_every_frame_of_speech() -> None:
    """The speech's onset frames (the VAD needs two voiced frames to call it speech)
    reach the recognizer whole and in order, after the pre-roll."""
    stt = Listening()
    local = engine(models(stt=stt))
    session = await local.start(EngineConfig(text_only=True))
    listener = Listener(session)
    # Each frame of speech a value of its own (all loud), so a missing one shows.
    frames = [sound(FRAME_SAMPLES / 16_000, 10_000 + index) for index in range(20)]
    lead = sound(16 * FRAME_SAMPLES / 16_000)  # whole VAD frames of silence first
    await feed(session, lead + b"".join(frames) + sound(0.8))
    await listener.until(lambda event: isinstance(event, TurnEnded))
    await session.close()
    await local.aclose()
    [pcm] = stt.heard
    missing = [index for index, frame in enumerate(frames) if frame not in pcm]
    assert b"".join(frames) in pcm, f"speech frames missing: {missing}"


async def test_speech_resumed_while_the_turn_is_transcribed_is_not_lost() -> None:
    """The silence ended the turn, but the user spoke on before its transcript came:
    the words of the first part are not dropped (heard as a turn, or with the next)."""
    stt = Listening()
    stt.hold.clear()  # the first transcription takes a while
    local = engine(models(stt=stt))
    session = await local.start(EngineConfig(text_only=True))
    listener = Listener(session)
    await feed(session, sound(0.3) + sound(0.6, 20_000) + sound(0.6))  # the turn ends
    await asyncio.to_thread(stt.started.wait, 5)
    await feed(session, sound(0.6, 24_000))  # the user goes on
    stt.hold.set()
    await feed(session, sound(0.8))
    await listener.until(lambda event: isinstance(event, TurnEnded) and not event.interrupted)
    await session.close()
    await local.aclose()
    heard = " ".join(e.text for e in listener.events if isinstance(e, TranscriptFinal))
    assert "first" in heard, (heard, [type(e).__name__ for e in listener.events])


async def test_text_typed_while_the_user_speaks_is_answered_alone() -> None:
    """A typed turn while speech is under way: its reply and the spoken turn's do
    not run at once (the events keep to the contract's grammar)."""
    llm = Counting(words=30, pause=0.02)  # a reply that lasts ~0.6 s
    local = engine(models(llm=llm))
    session = await local.start(EngineConfig(text_only=True))
    listener = Listener(session)
    await feed(session, sound(0.3) + sound(0.5, 20_000))  # the user is speaking
    await session.push_text("Hello there")
    await listener.until(lambda event: isinstance(event, ResponseTextDelta))
    await feed(session, sound(0.3, 20_000) + sound(0.8))  # ... and ends the turn
    await listener.until(lambda event: isinstance(event, TranscriptFinal) and event.text == "first")
    await asyncio.sleep(1.5)
    await session.close()
    await local.aclose()
    check_grammar(listener.events, finished=False)
    assert sum(isinstance(e, ResponseTextFinal) for e in listener.events) == 2


async def test_a_cut_text_only_reply_keeps_the_words_the_user_read() -> None:
    """Text only, the user receives the reply as its deltas: when it is cut, its final
    text (and the history) hold all of those, not only the pieces cut for speech."""
    llm = Counting(words=40, pause=0.02, between=" ")  # no clause marks: one piece of 7
    local = engine(models(llm=llm))
    config = EngineConfig(text_only=True)
    session = await local.start(config)
    listener = Listener(session)
    await session.push_text("Count for me")
    await listener.until(
        lambda event: isinstance(event, ResponseTextDelta) and event.text.strip() == "word12"
    )
    await session.interrupt()
    end = await listener.until(lambda event: isinstance(event, TurnEnded))
    await session.close()
    await local.aclose()
    events = listener.events[: end + 1]
    received = "".join(e.text for e in events if isinstance(e, ResponseTextDelta)).strip()
    [final] = [e for e in events if isinstance(e, ResponseTextFinal)]
    assert final.text == received
    assert list(config.history)[-1].text == received


class Deaf:
    """A recognizer that fails."""

    def transcribe(self, pcm: bytes, language: str = "en") -> Transcript:
        raise RuntimeError("the recognizer crashed")


async def test_a_failed_transcription_does_not_end_a_turn_never_opened() -> None:
    """The recognizer fails: the client is told, and no TurnEnded comes for a turn whose
    TranscriptFinal never came (the grammar: TranscriptFinal opens a turn)."""
    local = engine(replace(models(), stt=Deaf()))
    session = await local.start(EngineConfig(text_only=True))
    listener = Listener(session)
    await session.push_utterance(sound(1.0, 20_000), TriggerReason.VOICE_DATA)
    await listener.until(lambda event: isinstance(event, Error))
    await asyncio.sleep(0.2)
    await session.close()
    await local.aclose()
    check_grammar(listener.events, finished=False)
