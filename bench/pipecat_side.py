"""The Pipecat side of ``bench/peer_pipecat.py``: run in Pipecat's own venv, not ours.

A Pipecat 1.14 pipeline as its docs build one (STT -> user aggregator with VAD and
turn strategy -> LLM -> TTS -> assistant aggregator), on the models sonicgate uses:
faster-whisper on the same CTranslate2 weights, the same GGUF behind llama.cpp's
OpenAI-compatible server, Piper on the same voice file. The turns' speech comes in
as 16 kHz pcm16 files, one turn at a time on request (so that the two sides take
turns), fed as ``InputAudioRawFrame``s at real-time pace in chunks of the same size
as our client's; per turn, end of speech -> the first ``TTSAudioRawFrame`` out of
the TTS.

    python bench/pipecat_side.py SETTINGS.json   # written by bench/peer_pipecat.py
    # stdin: a speech file's path per line; stdout: a line of JSON per turn
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transcriptions.language import Language
from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

RATE = 16_000
BYTES_PER_SECOND = RATE * 2
NO_REPLY_SECONDS = 30  # after the end of speech: the turn failed
LIBRARIES = (
    "pipecat-ai",
    "faster-whisper",
    "ctranslate2",
    "onnxruntime",
    "piper-tts",
    "openai",
    "llama-cpp-python",
    "numpy",
)


class Probe(FrameProcessor):
    """After the TTS: when the current turn's audio began, how long it is, when it ended.
    Listens from the end of the turn's speech: what comes before answers an earlier turn."""

    def __init__(self) -> None:
        super().__init__()
        self.turn: dict[str, Any] = {}
        self.done = asyncio.Event()

    def listen(self, turn: dict[str, Any]) -> None:
        self.turn = turn
        self.done.clear()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.perf_counter()
        if isinstance(frame, TTSAudioRawFrame):
            self.turn.setdefault("first_audio_clock", now)
            seconds = len(frame.audio) / 2 / frame.sample_rate / frame.num_channels
            self.turn["audio_seconds"] = self.turn.get("audio_seconds", 0.0) + seconds
        elif isinstance(frame, TTSStoppedFrame) and "first_audio_clock" in self.turn:
            self.done.set()
        await self.push_frame(frame, direction)


def warm_up(
    stt: WhisperSTTService,
    smart_turn: LocalSmartTurnAnalyzerV3,
    tts: PiperTTSService,
    settings: dict[str, Any],
) -> None:
    """As sonicgate's ``LocalModels.warm_up`` at start-up: each model once (first calls
    pay for allocation and caches). Through the services' models: Pipecat has no hook.
    The LLM reads the system prompt here, and keeps it (llama.cpp reuses the longest
    prefix of the last prompt), as sonicgate keeps it."""
    quiet = np.zeros(RATE, dtype=np.float32)
    list(stt._model.transcribe(quiet)[0])
    smart_turn._predict_endpoint(quiet)
    list(tts._voice.synthesize("Ready."))
    system = {"role": "system", "content": settings["system_prompt"]}
    messages = [system, {"role": "user", "content": "Hi"}]
    hi = {"model": "local", "messages": messages, "max_tokens": 1}
    request = urllib.request.Request(
        f"{settings['llm_url']}/chat/completions",
        data=json.dumps(hi).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def build(settings: dict[str, Any], probe: Probe) -> tuple[PipelineWorker, LLMContext]:
    turn = settings["turn"]
    vad = SileroVADAnalyzer(
        params=VADParams(
            confidence=turn["vad_confidence"],
            start_secs=turn["vad_start_secs"],
            stop_secs=turn["vad_stop_secs"],
        )
    )
    smart_turn = LocalSmartTurnAnalyzerV3(params=SmartTurnParams(stop_secs=turn["fallback_secs"]))
    stt = WhisperSTTService(
        device="cpu",
        compute_type="int8",
        settings=WhisperSTTService.Settings(model=settings["whisper_dir"], language=Language.EN),
    )
    llm = OpenAILLMService(
        base_url=settings["llm_url"],
        api_key="none",  # llama.cpp's server asks for none
        settings=OpenAILLMService.Settings(
            model="local",
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            max_tokens=settings["max_tokens"],
            system_instruction=settings["system_prompt"],
        ),
    )
    tts = PiperTTSService(
        download_dir=Path(settings["piper_dir"]),
        settings=PiperTTSService.Settings(voice=settings["piper_voice"]),
    )
    warm_up(stt, smart_turn, tts, settings)
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=vad,
            user_turn_strategies=UserTurnStrategies(
                stop=[TurnAnalyzerUserTurnStopStrategy(turn_analyzer=smart_turn)]
            ),
        ),
    )
    pipeline = Pipeline([stt, aggregators.user(), llm, tts, probe, aggregators.assistant()])
    params = PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=settings["tts_rate"])
    worker = PipelineWorker(pipeline, params=params, enable_rtvi=False, idle_timeout_secs=None)
    return worker, context


async def ask(
    worker: PipelineWorker, probe: Probe, speech: bytes, chunk_bytes: int
) -> dict[str, Any]:
    """As ``bench/local_latency.ask``: 0.3 s of silence, the speech, then silence at
    real-time pace until the reply is complete; then the reply's playing time."""
    audio = bytes(int(0.3 * BYTES_PER_SECOND)) + speech
    speech_end = len(audio) / BYTES_PER_SECOND
    turn: dict[str, Any] = {"speech_seconds": len(speech) / BYTES_PER_SECOND}
    probe.listen({})
    start = time.perf_counter()
    sent = 0
    while not (probe.turn is turn and probe.done.is_set()):
        chunk = audio[sent : sent + chunk_bytes] or bytes(chunk_bytes)
        sent += chunk_bytes
        await asyncio.sleep(max(0.0, start + sent / BYTES_PER_SECOND - time.perf_counter()))
        await worker.queue_frame(InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1))
        if sent >= len(audio) and probe.turn is not turn:
            probe.listen(turn)
        if sent / BYTES_PER_SECOND > speech_end + NO_REPLY_SECONDS:
            # Counted, not fatal: one lost reply should not end a long run.
            turn["latency"] = None
            return turn
    first_audio_at = turn.pop("first_audio_clock") - start
    turn["latency"] = round(first_audio_at - speech_end, 4)
    played = start + first_audio_at + turn["audio_seconds"]
    await asyncio.sleep(max(0.0, played - time.perf_counter()) + 0.5)
    return turn


async def run(settings: dict[str, Any]) -> None:
    """Turns on request: a speech file's path per line of stdin, the turn's figures
    as a line of JSON on stdout; at the end of stdin, the library versions."""
    probe = Probe()
    worker, context = build(settings, probe)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(_worker: PipelineWorker, _frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 120)
    reply({"ready": True})
    chunk_bytes = settings["chunk_samples"] * 2
    while path := (await asyncio.to_thread(sys.stdin.readline)).strip():
        speech = await asyncio.to_thread(Path(path).read_bytes)
        turn = await ask(worker, probe, speech, chunk_bytes)
        # What was heard and said, as the aggregators wrote it into the context.
        said = {message["role"]: message["content"] for message in context.messages[-2:]}
        turn["transcript"], turn["reply"] = said.get("user", ""), said.get("assistant", "")
        reply(turn)
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 30)
    reply({"libraries": {name: version(name) for name in LIBRARIES}})


def reply(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


def main() -> None:
    logger.remove()  # Pipecat logs every frame's journey at DEBUG
    logger.add(sys.stderr, level=os.environ.get("PEER_PIPECAT_LOG", "WARNING"))
    asyncio.run(run(json.loads(Path(sys.argv[1]).read_text())))


if __name__ == "__main__":
    main()
