"""The OpenAI cascade: the local pipeline (Silero VAD endpointing, partial
transcripts, sentence-by-sentence synthesis, barge-in) with its three models
served over the OpenAI HTTP API: ``/audio/transcriptions``, streamed
``/chat/completions`` and ``/audio/speech``. Any OpenAI-compatible server
(vLLM, llama.cpp's server, faster-whisper servers) does as well.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import cast

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from sonicgate.audio.formats import wav_bytes
from sonicgate.domain import ErrorCode
from sonicgate.engines.base import INPUT_SAMPLE_RATE, EngineConfig, EngineError
from sonicgate.engines.local.engine import LocalEngine, LocalModels
from sonicgate.engines.local.llm import estimate_tokens
from sonicgate.engines.local.stt import Transcript
from sonicgate.engines.local.turns import TurnOptions
from sonicgate.engines.local.vad import SileroVad
from sonicgate.engines.openai.client import (
    OpenAISettings,
    provider_error,
    server_key,
    sync_client,
)

SPEECH_SAMPLE_RATE = 24_000  # response_format="pcm": 24 kHz mono pcm16
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer")
# Whisper and the chat and speech models all handle these, among others.
LANGUAGES = ("en", "es", "fr", "de", "it", "pt", "nl", "pl", "ru", "ja", "ko", "zh", "hi", "ar")


# What the SDK raises: its own errors, and httpx's when a streamed body breaks off.
PROVIDER_ERRORS = (openai.OpenAIError, httpx2.HTTPError)


def _failed(exc: Exception) -> EngineError:
    return EngineError(*provider_error(exc))


class OpenAIRecognizer:
    def __init__(self, client: openai.OpenAI, model: str) -> None:
        self._client, self._model = client, model

    def transcribe(self, pcm: bytes, language: str = "en") -> Transcript:
        if len(pcm) < INPUT_SAMPLE_RATE // 5:  # under 0.1 s: nothing to hear
            return Transcript("", 0.0)
        try:
            result = self._client.audio.transcriptions.create(
                model=self._model,
                file=("speech.wav", wav_bytes(pcm, INPUT_SAMPLE_RATE)),
                language=language,
                response_format="verbose_json",
            )
        except PROVIDER_ERRORS as exc:
            raise _failed(exc) from exc
        segments = result.segments or []
        # Whisper's mean log-probability per token, as a 0..1 figure; 1.0 when not given.
        logprobs = [segment.avg_logprob for segment in segments]
        confidence = math.exp(sum(logprobs) / len(logprobs)) if logprobs else 1.0
        return Transcript(result.text.strip(), min(1.0, confidence))


class OpenAIChat:
    def __init__(self, client: openai.OpenAI, model: str, context_tokens: int) -> None:
        self._client, self._model = client, model
        self.n_ctx = context_tokens

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]:
        if cancel.is_set():
            return
        try:
            chunks = self._client.chat.completions.create(
                model=self._model,
                messages=cast(list[ChatCompletionMessageParam], messages),
                stream=True,
                max_completion_tokens=max_tokens,
            )
            with chunks:  # closing it ends the request: a barge-in stops the bill too
                for chunk in chunks:
                    if cancel.is_set():
                        return
                    if chunk.choices and (delta := chunk.choices[0].delta.content):
                        yield delta
        except PROVIDER_ERRORS as exc:
            raise _failed(exc) from exc


class OpenAISpeech:
    sample_rate: int = SPEECH_SAMPLE_RATE
    voices: tuple[str, ...] = VOICES

    def __init__(self, client: openai.OpenAI, model: str, voice: str) -> None:
        self._client, self._model, self._voice = client, model, voice

    def synthesize(self, text: str) -> bytes:
        if not text.strip():
            return b""
        try:
            speech = self._client.audio.speech.create(
                model=self._model, voice=self._voice, input=text, response_format="pcm"
            )
        except PROVIDER_ERRORS as exc:
            raise _failed(exc) from exc
        return speech.content


def openai_cascade(settings: OpenAISettings, vad: SileroVad) -> LocalEngine:
    """The cascade on ``settings``' server; the VAD is the local one (it runs here)."""

    def models(api_key: str | None, voice: str) -> LocalModels:
        # Without any key the shared client is never used: for_session refuses first.
        client = sync_client(settings, api_key or server_key(settings) or "unset")
        return LocalModels(
            vad=vad,
            stt=OpenAIRecognizer(client, settings.transcription_model),
            llm=OpenAIChat(client, settings.chat_model, settings.context_tokens),
            tts=OpenAISpeech(client, settings.speech_model, voice),
            names=(
                "silero-vad-v6",
                settings.transcription_model,
                settings.chat_model,
                settings.speech_model,
            ),
            languages=LANGUAGES,
        )

    shared = models(None, settings.voice)

    def for_session(config: EngineConfig) -> LocalModels:
        key = config.credentials.get("openai_api_key")
        if key is None and server_key(settings) is None:
            raise EngineError(
                ErrorCode.UNAUTHORIZED,
                "no OpenAI API key: send openaiApiKey in initialize, or start the server "
                "with OPENAI_API_KEY set",
            )
        if key is None and config.voice in (None, settings.voice):
            return shared
        return models(key, config.voice or settings.voice)

    # Remote calls leave the CPU free: partials as often as the local engine's, but
    # several sessions' requests in flight at once.
    return LocalEngine(
        shared, TurnOptions(), name="openai", workers=settings.workers, session_models=for_session
    )
