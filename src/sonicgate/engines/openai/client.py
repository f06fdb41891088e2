"""What both OpenAI engines share: settings, clients, and the provider's errors
turned into ones a client can act on."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from sonicgate.domain import ErrorCode

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True, slots=True)
class OpenAISettings:
    base_url: str = DEFAULT_BASE_URL  # any OpenAI-compatible server: vLLM, llama.cpp, ...
    api_key: str | None = field(default=None, repr=False)  # else OPENAI_API_KEY
    transcription_model: str = "whisper-1"
    chat_model: str = "gpt-4o-mini"
    speech_model: str = "tts-1"
    voice: str = "alloy"
    realtime_model: str = "gpt-realtime"
    context_tokens: int = 16_000
    timeout: float = 30.0
    # Concurrent requests per stage across all sessions.
    workers: int = 8


def server_key(settings: OpenAISettings) -> str | None:
    """The server's own key: configured, or the SDK's usual environment variable."""
    return settings.api_key or os.environ.get("OPENAI_API_KEY")


def sync_client(settings: OpenAISettings, api_key: str | None = None) -> openai.OpenAI:
    """``api_key``: a session's own key, used for that session only."""
    return openai.OpenAI(**_options(settings, api_key))


def async_client(settings: OpenAISettings, api_key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(**_options(settings, api_key))


def _options(settings: OpenAISettings, api_key: str | None) -> dict[str, Any]:
    return {
        "api_key": api_key or settings.api_key,
        "base_url": settings.base_url,
        "timeout": settings.timeout,
        "max_retries": 1,  # a fallback engine is quicker than a second try
    }


def provider_error(exc: Exception) -> tuple[ErrorCode, str]:
    """(code, message) for the client: what went wrong at the provider, in its terms."""
    match exc:
        case httpx2.HTTPError():  # a streamed body broke off: the SDK lets it through
            return ErrorCode.PROVIDER_UNREACHABLE, f"the connection to OpenAI broke: {exc!r}"
        case openai.AuthenticationError() | openai.PermissionDeniedError():
            return ErrorCode.UNAUTHORIZED, "OpenAI refused the API key"
        case openai.RateLimitError():
            return ErrorCode.THROTTLED, "OpenAI is rate-limiting this key; try again shortly"
        case openai.APITimeoutError():
            return ErrorCode.PROVIDER_UNREACHABLE, "OpenAI did not answer in time"
        case openai.APIConnectionError():
            return ErrorCode.PROVIDER_UNREACHABLE, f"cannot reach OpenAI: {exc}"
        case openai.APIStatusError(status_code=status):
            return ErrorCode.PROVIDER_ERROR, f"OpenAI answered HTTP {status}: {exc.message}"
    return ErrorCode.PROVIDER_ERROR, f"OpenAI failed: {exc}"
