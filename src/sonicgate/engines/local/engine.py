"""The local cascade: Silero VAD -> Whisper -> small LLM -> TTS, all on CPU.

Models load once per process (``LocalEngine``); each conversation is a
``LocalSession``. Inference runs on one worker thread per model so the event
loop never blocks and sessions share the models safely. Latency comes from
overlap: the answer starts speculatively during the endpointing silence (its
output held back until the turn really ends), the reply is cut into clauses,
and each is synthesized while the LLM writes the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from sonicgate.domain import Capabilities, ErrorCode, Message
from sonicgate.engines.base import BaseEngineSession, EngineConfig, EngineError
from sonicgate.engines.local import threads
from sonicgate.engines.local.llm import Chat, ChatModel, ReadsAhead, RunCheck, SentenceReader
from sonicgate.engines.local.smart_turn import SmartTurn, TurnDetector
from sonicgate.engines.local.stt import Recognizer, tuned
from sonicgate.engines.local.text import SentenceSplitter, before_code
from sonicgate.engines.local.tts import Synthesizer, load_synthesizer
from sonicgate.engines.local.turns import FRAME_SAMPLES, Cue, Endpointer, TurnOptions
from sonicgate.engines.local.vad import SileroVad, VadStream
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Error,
    Interrupted,
    Metrics,
    ResponseTextDelta,
    ResponseTextFinal,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TriggerReason,
    TurnEnded,
)
from sonicgate.models import Kind, Selection, locate

log = logging.getLogger(__name__)

FRAME_BYTES = FRAME_SAMPLES * 2
PREROLL_BYTES = 16_000 * 2 * 3 // 10  # 300 ms kept before the speech onset
# Whisper base hears many languages, but every installed voice (hibari, Piper joe)
# speaks English only: answering in English would be the silent fallback we refuse.
LANGUAGES = ("en-US", "en-GB")
MAX_REPLY_TOKENS = 160
HISTORY_STEP = 8  # messages dropped at once when the history outgrows the context
BARGE_IN_WAIT = 0.15  # seconds to wait for the LLM worker to stop after a barge-in


@dataclass(slots=True)
class LocalModels:
    """The cascade's four parts: on this machine by default, or any backends with
    the same interfaces (``engines/openai`` plugs in remote ones)."""

    vad: SileroVad
    stt: Recognizer
    llm: Chat
    tts: Synthesizer
    names: tuple[str, ...]
    languages: tuple[str, ...] = LANGUAGES
    turn: TurnDetector | None = None  # without one, a turn ends after a fixed silence

    def warm_up(self, llm_thread: Executor) -> None:
        """Run each model once: first calls pay for allocation and caches. The LLM runs
        on ``llm_thread``, where the engine will run it (see ``LocalEngine.load``)."""
        self.stt.transcribe(bytes(32_000))
        if self.turn is not None:
            self.turn.probability(bytes(32_000))
        llm_thread.submit(self._warm_up_llm).result()
        self.tts.synthesize("Ready.")

    def _warm_up_llm(self) -> None:
        # With the default system prompt: the first turn finds it in the model's cache.
        system = {"role": "system", "content": EngineConfig().system_prompt}
        greeting = [system, {"role": "user", "content": "Hi"}]
        if isinstance(self.llm, SentenceReader):
            self.llm.sentence_end(greeting)
        for _ in self.llm.stream(greeting, threading.Event(), 1):
            pass


class LocalEngine:
    def __init__(
        self,
        models: LocalModels,
        options: TurnOptions | None = None,
        *,
        name: str = "local",
        workers: int = 1,
        session_models: Callable[[EngineConfig], LocalModels] | None = None,
        beside: LocalEngine | None = None,
        llm_pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.name = name
        self.models = models
        self.options = options or TurnOptions()
        # One thread per local model: they are not re-entrant, and the three stages
        # overlap. Remote backends take more (``workers``): sessions wait on the network.
        # With ``beside``, whose speech models these are, they run on its threads.
        self._pools: list[ThreadPoolExecutor] = []  # its own, to shut down
        self.stt_pool: ThreadPoolExecutor = (
            beside.stt_pool if beside else self._pool("stt", workers)
        )
        self.llm_pool = llm_pool or self._pool("llm", workers)
        if llm_pool is not None:
            self._pools.append(llm_pool)
        self.tts_pool: ThreadPoolExecutor = (
            beside.tts_pool if beside else self._pool("tts", workers)
        )
        # The turn detector's own thread: behind a transcription, its answer would come late.
        self.turn_pool: ThreadPoolExecutor = beside.turn_pool if beside else self._pool("turn", 1)
        # Models for one session (its own credentials, say); by default the shared ones.
        self._session_models = session_models or (lambda config: self.models)

    @classmethod
    def load(
        cls,
        data_dir: Path,
        selection: Selection | None = None,
        options: TurnOptions | None = None,
    ) -> LocalEngine:
        paths = locate(data_dir, selection)
        started = time.perf_counter()
        threads.one_blas_thread()
        # The four stages' models; the turn detector is part of listening.
        chosen = tuple(name for kind, name in paths.names.items() if kind is not Kind.TURN)
        log.info("loading local models %s from %s", ", ".join(chosen), data_dir)
        llm_runs = RunCheck(paths.llm)  # a CPU it cannot run on: one clear error, not SIGILL
        vad, tts = SileroVad(paths.vad), load_synthesizer(paths.names[Kind.TTS], paths.tts)
        llm_runs.result()
        stt = tuned(paths.stt)  # timed with the check's process gone: see threads.OtherWork
        # llama.cpp's OpenMP keeps a team of threads for each thread that runs the model;
        # with more of them than cores, they wait for work asleep, not spinning: a token
        # took 41-43 ms from the engine's LLM thread once the model had also run on the
        # loading thread, 28-34 ms run on one thread alone. So it runs on that one only.
        llm_thread = ThreadPoolExecutor(1, thread_name_prefix="local-llm")
        llm = llm_thread.submit(_chat_model, paths.llm).result()
        models = LocalModels(
            vad=vad,
            stt=stt,
            llm=llm,
            tts=tts,
            names=chosen,
            turn=SmartTurn(paths.turn),
        )
        models.warm_up(llm_thread)
        log.info("local models loaded and warmed up in %.1f s", time.perf_counter() - started)
        return cls(models, options, llm_pool=llm_thread)

    def capabilities(self) -> Capabilities:
        tts = self.models.tts
        return Capabilities(self.models.languages, self.models.names, tts.voices, tts.sample_rate)

    async def start(self, config: EngineConfig) -> LocalSession:
        # The language was checked against capabilities by the session manager.
        capabilities = self.capabilities()
        if config.voice is not None and config.voice not in capabilities.voices:
            raise EngineError(
                ErrorCode.UNKNOWN_VOICE,
                f"voice '{config.voice}' is not installed; available: "
                f"{', '.join(capabilities.voices)}",
            )
        return LocalSession(self, config, self._session_models(config))

    def _pool(self, stage: str, workers: int) -> ThreadPoolExecutor:
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"{self.name}-{stage}")
        self._pools.append(pool)
        return pool

    async def aclose(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)


def chat_prompt(
    llm: Chat, system: str, history: tuple[Message, ...], text: str
) -> list[dict[str, str]]:
    """System prompt, then as much recent history as fits the context.

    Nothing in front of the history changes from turn to turn, and history is
    dropped from the front ``HISTORY_STEP`` messages at a time, so the prompt
    mostly begins as the last one did: llama.cpp then reads only what is new.
    """
    room = llm.n_ctx - MAX_REPLY_TOKENS - 64 - llm.count_tokens(system)  # 64: the template's
    tokens = llm.count_tokens(text)
    if tokens > room:
        text = _last_words(llm, text, room)
        tokens = llm.count_tokens(text)
    budget = room - tokens
    costs = [llm.count_tokens(message.text) + 8 for message in history]
    start = 0
    while start < len(history) and sum(costs[start:]) > budget:
        start += HISTORY_STEP
    return [
        {"role": "system", "content": system},
        *({"role": message.role.value, "content": message.text} for message in history[start:]),
        {"role": "user", "content": text},
    ]


def _last_words(llm: Chat, text: str, room: int) -> str:
    """As much of the end of ``text`` as fits ``room`` tokens: a message longer than the
    context (a long recording's transcript, say) is answered from its last words."""
    words = text.split()
    while words and (tokens := llm.count_tokens(" ".join(words))) > room:
        keep = min(len(words) - 1, len(words) * max(room, 0) // tokens)
        words = words[len(words) - keep :] if keep > 0 else []
    log.warning("a message too long for the context: its last %d words kept", len(words))
    return " ".join(words)


def _chat_model(path: Path) -> ChatModel:
    """The LLM, its threads measured (or known): on the thread it will run on."""
    llm = ChatModel(path)
    llm.use_threads(threads.tune(llm, path).threads)
    return llm


def _log_read_ahead_failure(work: Future[None]) -> None:
    """Nobody waits on a reading ahead: its failure is logged, not lost."""
    if not work.cancelled() and (error := work.exception()) is not None:
        log.warning("reading ahead failed: %s", error)


def _since(moment: float) -> float:
    return round(time.perf_counter() - moment, 4)


@dataclass(eq=False)
class Turn:
    """One answer under way; its output is held until the turn is committed."""

    reason: TriggerReason
    pcm: bytes = b""
    text: str | None = None  # typed input skips recognition
    reference: float = field(default_factory=time.perf_counter)  # end of user speech
    committed: bool = False
    held: list[EngineEvent] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None
    generation: asyncio.Future[None] | None = None  # the LLM worker's job, once queued
    user_text: str = ""
    before: tuple[Message, ...] = ()  # the conversation before this turn, for the prompt
    spoken: list[str] = field(default_factory=list)  # reply text whose audio went out
    said: list[str] = field(default_factory=list)  # the reply's text deltas, as sent
    opened: bool = False  # its TranscriptFinal is out: a TurnEnded closes it
    # Estimated client playback, which runs on after the reply is all sent.
    audio_started: float | None = None
    audio_seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str) -> None:
        self.stages.setdefault(stage, _since(self.reference))

    def sent(self, audio: AudioOut) -> None:
        if self.audio_started is None:
            self.audio_started = time.perf_counter()
            self.mark("first_audio")
        self.audio_seconds += len(audio.pcm) / 2 / audio.sample_rate

    def playing(self) -> bool:
        """Whether the client is likely still playing the reply (played at real time)."""
        started = self.audio_started
        return started is not None and time.perf_counter() < started + self.audio_seconds


class LocalSession(BaseEngineSession):
    def __init__(self, engine: LocalEngine, config: EngineConfig, models: LocalModels) -> None:
        super().__init__(config)
        self._engine = engine
        self._models = models
        self._language = config.language.split("-")[0].lower()
        self._vad = VadStream(models.vad)
        # Without a turn detector (remote backends), the silence rule.
        semantic = engine.options.semantic and models.turn is not None
        self._endpointer = Endpointer(replace(engine.options, semantic=semantic))
        self._asking: asyncio.Task[None] | None = None  # the turn detector at work
        self._ending: asyncio.Task[None] | None = None  # a turn the words ended
        self._frames = bytearray()  # input not yet a whole VAD frame
        self._preroll = bytearray()
        self._utterance = bytearray()
        self._last_voiced = time.perf_counter()
        self._turn: Turn | None = None
        self._partial: asyncio.Task[None] | None = None
        self._partials_resume = 0.0  # no partial transcript before this moment
        self._reading_ahead: Future[None] | None = None  # the LLM reading a partial

    # Input ----------------------------------------------------------------

    async def push_audio(self, pcm: bytes) -> None:
        self._frames += pcm
        whole = len(self._frames) - len(self._frames) % FRAME_BYTES
        if not whole:
            return
        chunk = bytes(self._frames[:whole])
        del self._frames[:whole]
        probabilities = self._vad.process(chunk)  # ~0.1 ms a frame: fine on the loop
        for index, probability in enumerate(probabilities):
            frame = chunk[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]
            await self._on_frame(frame, probability)

    async def push_text(self, text: str) -> None:
        await self._take_turn()
        self._start_turn(Turn(TriggerReason.TEXT, text=text, committed=True))

    async def end_turn(self, reason: TriggerReason) -> bool:
        if not self._endpointer.in_turn:
            return False  # the turn already ended by itself (or nothing was said)
        self._endpointer.reset()
        await self._commit(reason)
        return True

    async def push_utterance(self, pcm: bytes, reason: TriggerReason) -> None:
        await self._take_turn()
        self._start_turn(Turn(reason, pcm=pcm, committed=True))

    async def _take_turn(self) -> None:
        """Input that is a whole turn by itself: the reply under way stops, and speech
        under way is dropped (two turns at once would answer at once). Speech that goes
        on starts a turn of its own, which interrupts this one's reply."""
        await self._barge_in()
        self._drop_speculation()
        self._endpointer.reset()
        self._utterance.clear()

    async def interrupt(self) -> None:
        await self._barge_in()

    async def close(self) -> None:
        turn_task = self._turn.task if self._turn else None
        for task in (self._partial, self._asking, self._ending, turn_task):
            if task is not None:
                task.cancel()
        if self._turn is not None:
            self._turn.cancel.set()
        if self._reading_ahead is not None:
            self._reading_ahead.cancel()
        await super().close()

    # Turn-taking ------------------------------------------------------------

    async def _on_frame(self, frame: bytes, probability: float) -> None:
        in_turn = self._endpointer.in_turn
        cue = self._endpointer.step(probability)
        if in_turn or cue is Cue.SPEECH_STARTED:
            self._utterance += frame
            if probability >= self._engine.options.end_threshold:
                self._last_voiced = time.perf_counter()
        else:
            self._preroll += frame
            del self._preroll[:-PREROLL_BYTES]
        match cue:
            case Cue.SPEECH_STARTED:
                self._utterance[:0] = self._preroll  # this frame is in the utterance
                self._preroll.clear()
                await self._barge_in(speech_goes_on=True)
                self.emit(SpeechStarted())
            case Cue.PARTIAL:
                # At most half the recogniser's time goes to partials: the final
                # transcript, due any moment, should find it free.
                idle = self._partial is None or self._partial.done()
                if idle and time.perf_counter() >= self._partials_resume:
                    self._partial = asyncio.create_task(self._transcribe_partial())
            case Cue.SPECULATE:
                self._start_turn(
                    Turn(
                        TriggerReason.SILENCE,
                        pcm=bytes(self._utterance),
                        reference=self._last_voiced,
                    )
                )
            case Cue.ASK if self._models.turn is not None:
                ask = self._ask(self._models.turn, self._endpointer.asks, bytes(self._utterance))
                self._asking = asyncio.create_task(ask)
            case Cue.RESUMED:
                self._drop_speculation()
            case Cue.END_OF_TURN:
                await self._commit(TriggerReason.SILENCE)
            case Cue.NOISE:
                self._drop_speculation()
                self._utterance.clear()

    async def _ask(self, detector: TurnDetector, ask: int, pcm: bytes) -> None:
        """Is the user done? The detector answers from its thread; if so, the turn ends."""
        probability = await self._run(self._engine.turn_pool, detector.probability, pcm)
        if self._endpointer.answer(ask, probability) is Cue.END_OF_TURN:
            await self._commit(TriggerReason.SILENCE)

    async def _commit(self, reason: TriggerReason) -> None:
        turn = self._turn
        if turn is None or turn.committed:
            turn = Turn(reason, pcm=bytes(self._utterance), reference=self._last_voiced)
            self._start_turn(turn)
        self._utterance.clear()
        turn.mark("endpoint")
        turn.committed = True
        # A speculative turn began as "silence"; the commit knows the real reason.
        turn.reason = reason
        held, turn.held = turn.held, []
        for event in held:
            if isinstance(event, TranscriptFinal):
                event = replace(event, reason=reason)
            elif isinstance(event, Metrics):
                # A reply made whole before the turn ended: its figures as delivered,
                # the endpoint and first audio (marked as it goes out) included.
                event = Metrics(dict(turn.stages))
            await self._deliver(turn, event)

    def _start_turn(self, turn: Turn) -> None:
        # A partial under way goes on: its decode would run on in the worker thread
        # anyway, and until the endpoint its words are news to the client (after it,
        # _transcribe_partial drops them). Short questions get a partial this way.
        turn.before = tuple(self.history)
        self._turn = turn
        if self._reading_ahead is not None:
            self._reading_ahead.cancel()  # if not begun: the turn's own prompt comes first
        turn.task = asyncio.create_task(self._answer(turn))

    def _drop_speculation(self) -> None:
        turn = self._turn
        if turn is not None and not turn.committed and turn.task is not None:
            turn.cancel.set()
            turn.task.cancel()
            self._turn = None

    async def _barge_in(self, speech_goes_on: bool = False) -> None:
        """The user spoke (or typed) over the reply: stop it, keep what was said.
        ``speech_goes_on``: a turn cut before its words were heard is heard again with
        the speech that cut it (the user paused, then went on)."""
        turn = self._turn
        if turn is None or not turn.committed or turn.task is None:
            return
        onset = time.perf_counter()
        if turn.task.done():
            self._turn = None
            if turn.playing():  # all sent, not all heard: the client stops playback
                self.emit(Interrupted())
                self.emit(Metrics({"barge_in_playback": _since(onset)}))
            return
        turn.cancel.set()
        turn.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await turn.task
        if turn.generation is not None:
            # The worker sees the cancel at its next token (~30 ms), or returns at
            # once when it starts. Not cancelled here: that would only mark the
            # future done while the thread still ran.
            await asyncio.wait([turn.generation], timeout=BARGE_IN_WAIT)
        self._turn = None
        if not turn.user_text:  # cut before anything was said back
            if speech_goes_on and turn.text is None:
                self._utterance[:0] = turn.pcm
            return
        # What the user received: the text read, or the pieces heard.
        spoken = "".join(turn.said).strip() if self.config.text_only else " ".join(turn.spoken)
        self.emit(Interrupted())
        self.emit(ResponseTextFinal(spoken))
        self.emit(Metrics({"barge_in_stopped": _since(onset)}))
        self.emit(TurnEnded(interrupted=True))

    # The answer -----------------------------------------------------------------

    async def _emit(self, turn: Turn, event: EngineEvent) -> None:
        if turn.committed:
            await self._deliver(turn, event)
        else:
            turn.held.append(event)

    async def _deliver(self, turn: Turn, event: EngineEvent) -> None:
        if isinstance(event, AudioOut):
            turn.sent(event)
        self.emit(event)

    async def _answer(self, turn: Turn) -> None:
        try:
            await self._answer_turn(turn)
        except asyncio.CancelledError:
            raise
        except EngineError as exc:  # a backend refused: the client (or a fallback) is told
            log.warning("%s engine turn failed: %s: %s", self._engine.name, exc.code, exc.message)
            await self._failed(turn, Error(exc.code, exc.message, fatal=True))
        except Exception as exc:
            log.exception("%s engine turn failed", self._engine.name)
            message = f"the {self._engine.name} engine failed: {exc}"
            await self._failed(turn, Error(ErrorCode.ENGINE_FAILED, message))

    async def _failed(self, turn: Turn, error: Error) -> None:
        await self._emit(turn, error)
        if turn.opened:  # else no turn began for the client (the recognizer failed)
            await self._emit(turn, TurnEnded())

    async def _answer_turn(self, turn: Turn) -> None:
        if turn.text is not None:
            text, confidence = turn.text, 1.0
        else:
            transcript = await self._run(
                self._engine.stt_pool, self._models.stt.transcribe, turn.pcm, self._language
            )
            text, confidence = transcript.text.strip(), transcript.confidence
        turn.mark("transcript")
        seconds = len(turn.pcm) / 32_000
        turn.user_text = text
        await self._emit(turn, TranscriptFinal(text, confidence, turn.reason, seconds))
        turn.opened = True
        if not text:
            if turn.reason in (TriggerReason.EXPLICIT, TriggerReason.VOICE_DATA):
                await self._emit(turn, Error(ErrorCode.NO_SPEECH, "no speech was recognised"))
            await self._emit(turn, TurnEnded())
            return

        messages = await self._run(self._engine.llm_pool, self._prompt, turn.before, text)
        if not turn.committed:
            self._read_words(turn, messages)
        synthesis: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak(turn, synthesis))
        splitter = SentenceSplitter()
        try:
            async for delta in self._generate(messages, turn):
                turn.mark("llm_first_token")
                delta, code = before_code("".join(turn.said), delta)
                turn.said.append(delta)
                if delta:
                    await self._emit(turn, ResponseTextDelta(delta))
                for piece in splitter.push(delta):
                    await synthesis.put(piece)
                if code:
                    break
            for piece in splitter.flush():
                await synthesis.put(piece)
            await synthesis.put(None)
            await speaker
        finally:
            speaker.cancel()
        full = "".join(turn.said).strip()
        await self._emit(turn, ResponseTextFinal(full))
        await self._emit(turn, Metrics(dict(turn.stages)))
        await self._emit(turn, TurnEnded())

    async def _speak(self, turn: Turn, pieces: asyncio.Queue[str | None]) -> None:
        tts = self._models.tts
        while (piece := await pieces.get()) is not None:
            if self.config.text_only:
                continue  # read, not heard: see turn.said
            pcm = await self._run(self._engine.tts_pool, tts.synthesize, piece)
            turn.mark("first_sentence_synthesized")
            await self._emit(turn, AudioOut(pcm, tts.sample_rate, piece))
            turn.spoken.append(piece)

    async def _generate(self, messages: list[dict[str, str]], turn: Turn) -> AsyncIterator[str]:
        """Stream LLM deltas from the model's worker thread."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        cancel = turn.cancel

        def produce() -> None:
            try:
                for delta in self._models.llm.stream(messages, cancel, MAX_REPLY_TOKENS):
                    loop.call_soon_threadsafe(deltas.put_nowait, delta)
            except BaseException as exc:  # handed to the loop, raised there
                loop.call_soon_threadsafe(deltas.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(deltas.put_nowait, None)

        turn.generation = loop.run_in_executor(self._engine.llm_pool, produce)
        try:
            while (item := await deltas.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()  # stops the worker at its next token if we left early

    def _read_words(self, turn: Turn, messages: list[dict[str, str]]) -> None:
        """While the user may yet go on: how whole a sentence their words are, read on
        the LLM's thread ahead of the reply (sharing its prompt). The endpointer weighs
        it with the turn detector's answer."""
        llm = self._models.llm
        if not isinstance(llm, SentenceReader) or not self._endpointer.options.semantic:
            return
        loop = asyncio.get_running_loop()
        reading = loop.run_in_executor(self._engine.llm_pool, llm.sentence_end, messages)
        reading.add_done_callback(lambda done: self._on_words(turn, done))

    def _on_words(self, turn: Turn, reading: asyncio.Future[float | None]) -> None:
        if reading.cancelled() or self._turn is not turn or turn.committed:
            return  # the user went on, or the turn ended meanwhile
        if (error := reading.exception()) is not None:
            log.warning("reading the words for the end of turn failed: %s", error)
            return
        sentence = reading.result()
        if sentence is not None and self._endpointer.words(sentence) is Cue.END_OF_TURN:
            self._ending = asyncio.create_task(self._commit(TriggerReason.SILENCE))

    def _prompt(self, history: tuple[Message, ...], text: str) -> list[dict[str, str]]:
        return chat_prompt(self._models.llm, self.config.system_prompt, history, text)

    async def _transcribe_partial(self) -> None:
        pcm = bytes(self._utterance)
        started = time.perf_counter()
        transcript = await self._run(
            self._engine.stt_pool, self._models.stt.transcribe, pcm, self._language
        )
        finished = time.perf_counter()
        self._partials_resume = finished + (finished - started)
        text = transcript.text.strip()
        if self._endpointer.in_turn and text:
            self.emit(TranscriptPartial(text, transcript.confidence))
            self._read_ahead(text)

    def _read_ahead(self, text: str) -> None:
        """While the user speaks, the LLM reads the reply's prompt with their words so
        far: when the turn ends, the reply reads only the last words. It stays behind
        the turn's own work on the LLM's thread: skipped once a turn has begun."""
        llm = self._models.llm
        reading = self._reading_ahead
        busy = reading is not None and not reading.done()
        if not isinstance(llm, ReadsAhead) or busy or self._turn is not None:
            return
        history = tuple(self.history)
        self._reading_ahead = self._engine.llm_pool.submit(
            lambda: llm.read_ahead(self._prompt(history, text))
        )
        self._reading_ahead.add_done_callback(_log_read_ahead_failure)

    async def _run[T](self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
