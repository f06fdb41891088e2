"""Whisper tiny.en through faster-whisper (CTranslate2, int8).

Whisper is trained on 30 s windows, and faster-whisper pads every input to
one: a two-second question then costs as much to encode as thirty seconds of
speech. An utterance is encoded with only ``PAD_SECONDS`` of silence after it
instead, as whisper.cpp's ``audio_ctx`` does, and the silence (padded before
the log-mel, as OpenAI's Whisper pads) gives the decoder the end it needs.
Without the window's end it sometimes says the utterance again: ``unlooped``
cuts that off. ``bench.stt_window`` (84 sentences in two voices, one thread):
0.59 s -> 0.09 s a sentence, word errors 4.4 % -> 4.4 % (hibari) and 16.4 % ->
13.1 % (espeak-ng).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens
from numpy.typing import NDArray

from sonicgate.engines.local import threads
from sonicgate.engines.local.cpu import read_cpu

log = logging.getLogger(__name__)

RATE = 16_000
PAD_SECONDS = 4.0  # silence after the speech: 2-3 s made more word errors
WINDOW_SECONDS = 30.0  # Whisper's: longer input goes through faster-whisper's windows
NO_SPEECH = 0.8  # the model's probability that there was no speech at all
TOKENS_PER_SECOND = 8  # of speech, and then some: a looping decoder stops here
REPEATS = 3  # a phrase said this often in a row is the decoder looping
KIND = "stt"  # its thread counts' cache
STT_SPEEDUP = 1.2  # more threads must be this much faster than one to be chosen
SENTENCE_BREAK = re.compile(r"(?<=[.?!])\s+")


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    confidence: float


class Recognizer(Protocol):
    """Speech to text, one whole utterance at a time (16 kHz mono pcm16)."""

    def transcribe(self, pcm: bytes, language: str = "en") -> Transcript: ...


class Transcriber:
    """Whisper through faster-whisper (CTranslate2, int8 on the CPU)."""

    languages = ("en",)

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        self.threads = threads  # ``tuned`` picks them on the CPU at hand
        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
        )

    def transcribe(self, pcm: bytes, language: str = "en") -> Transcript:
        if len(pcm) < 3200:  # under 0.1 s: nothing to hear
            return Transcript("", 0.0)
        if len(pcm) / 2 / RATE + PAD_SECONDS > WINDOW_SECONDS:
            return self.windowed(pcm, language)
        return self._short(_samples(pcm), language)

    def _short(self, audio: NDArray[np.float32], language: str) -> Transcript:
        model = self._model
        padded = np.pad(audio, (0, round(PAD_SECONDS * RATE)))
        features = model.feature_extractor(padded, padding=0)
        features = features[:, : features.shape[-1] // 2 * 2]  # the encoder halves frames
        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        budget = 10 + math.ceil(TOKENS_PER_SECOND * len(audio) / RATE)
        result = model.model.generate(
            model.encode(features),
            [prompt],
            beam_size=1,
            max_length=len(prompt) + budget,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
        )[0]
        tokens = result.sequences_ids[0]
        if result.no_speech_prob > NO_SPEECH or not tokens:
            return Transcript("", 0.0)
        # The score is the log-probability per token: its mean, as faster-whisper's.
        confidence = math.exp(result.scores[0] * len(tokens) / (len(tokens) + 1))
        return Transcript(unlooped(tokenizer.decode(tokens).strip()), confidence)

    def windowed(self, pcm: bytes, language: str = "en") -> Transcript:
        """faster-whisper's own way, in 30 s windows: for input longer than one (and
        ``bench.stt_window``, which compares the two)."""
        segments, _ = self._model.transcribe(
            _samples(pcm),
            language=language,
            beam_size=1,
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        texts: list[str] = []
        weighted = length = 0.0
        for segment in segments:
            if segment.no_speech_prob > NO_SPEECH:
                continue
            texts.append(segment.text.strip())
            # Confidence: token probability, averaged over segments by text length.
            weight = max(len(segment.text), 1)
            weighted += math.exp(segment.avg_logprob) * weight
            length += weight
        return Transcript(" ".join(texts).strip(), weighted / length if length else 0.0)


def _samples(pcm: bytes) -> NDArray[np.float32]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768)


def tuned(model_dir: Path) -> Transcriber:
    """A transcriber on as many threads as pay here: timed once per machine and model
    (about a second), then read from ``~/.cache/sonicgate/stt-threads.v3.json``, kept the
    way the LLM's counts are (``threads``)."""
    key = cache_key(model_dir)
    kept = threads.read_kept(KIND, key)
    if isinstance(kept, dict) and isinstance(kept.get("threads"), int):
        return Transcriber(model_dir, kept["threads"])
    timed = {n: Transcriber(model_dir, n) for n in threads.counts(read_cpu().cores)}
    with threads.OtherWork() as other:
        seconds = {n: _seconds(transcriber) for n, transcriber in timed.items()}
    # More threads must clearly pay: the turn detector and a reply's TTS want a core too.
    best = min(seconds, key=lambda n: seconds[n] * (1 if n == 1 else STT_SPEEDUP))
    timings = ", ".join(f"{n} thread{'s' * (n > 1)} {s * 1000:.0f} ms" for n, s in seconds.items())
    if not threads.disturbed({n: 1 / s for n, s in seconds.items()}, other.cores):
        threads.keep(KIND, key, {"threads": best, "seconds": seconds})
        log.info("stt threads: %d (a 2 s utterance: %s)", best, timings)
    else:
        log.warning(
            "stt threads: other work took %.2f of a core during the timing (%s); "
            "timed again next start",
            other.cores,
            timings,
        )
    return timed[best]


def cache_key(model_dir: Path) -> str:
    return threads.machine_key(f"ctranslate2 {version('ctranslate2')}", model_dir)


def _seconds(transcriber: Transcriber) -> float:
    """The best of three transcriptions of 2 s of quiet noise: the encoder's work, mostly."""
    noise = np.random.default_rng(0).normal(0, 100, 2 * RATE).astype("<i2").tobytes()
    transcriber.transcribe(noise)  # the first call allocates
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        transcriber.transcribe(noise)
        timings.append(time.perf_counter() - started)
    return min(timings)


def unlooped(text: str) -> str:
    """``text`` up to where the decoder loops: it says a sentence again ("Tell me a
    joke. Tell me a" -> "Tell me a joke.") or a phrase of two or more words a third
    time in a row ("a recipe for chocolate cake chocolate cake chocolate cake")."""
    sentences = SENTENCE_BREAK.split(text)
    said = [_words(sentences[0])]
    for index, sentence in enumerate(sentences[1:], 1):
        words = _words(sentence)
        if words and any(_begins(earlier, words) for earlier in said):
            return " ".join(sentences[:index])
        said.append(words)
    return _repeats_cut(text)


def _begins(sentence: list[str], words: list[str]) -> bool:
    """Whether ``words`` say ``sentence`` again, whole or stopped short (mid-word too)."""
    if len(words) > len(sentence):
        return False
    *whole, last = words
    return whole == sentence[: len(whole)] and sentence[len(whole)].startswith(last)


def _repeats_cut(text: str) -> str:
    said = text.split()
    words = [" ".join(_words(word)) for word in said]
    for start in range(len(words)):
        for size in range(2, (len(words) - start) // REPEATS + 1):
            phrase = words[start : start + size]
            ends = start + size * REPEATS
            if all(words[at : at + size] == phrase for at in range(start, ends, size)):
                return " ".join(said[: start + size])
    return text


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()
