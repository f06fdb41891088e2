"""A small chat model through llama.cpp, streamed and cancellable."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from llama_cpp import Llama

CHARS_PER_TOKEN = 4  # about, in English: remote models' tokenizers are not here


def estimate_tokens(text: str) -> int:
    """A remote model's token count, near enough for trimming history."""
    return len(text) // CHARS_PER_TOKEN + 1


class Chat(Protocol):
    """A chat model whose reply streams as text deltas and can be cut short."""

    n_ctx: int  # context size, in tokens

    def count_tokens(self, text: str) -> int: ...

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]: ...


class ChatModel:
    """One caller at a time (llama.cpp is not re-entrant): give it one worker thread."""

    def __init__(self, path: Path, n_ctx: int = 2048, threads: int = 1) -> None:
        # Decoding on one thread beat two: TTS needs the other core at the same time.
        # The prompt is read on both: nothing else runs between transcript and first token.
        self._llama = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=2,
            verbose=False,
        )
        self.n_ctx = n_ctx

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False))

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]:
        """Text deltas of the reply; stops at the next token once ``cancel`` is set.

        The GGUF's own chat template frames the turns; the caller's system
        message sets the spoken style.
        """
        if cancel.is_set():
            return  # cancelled while queued: skip the prompt evaluation too
        chunks: Any = self._llama.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            max_tokens=max_tokens,
            temperature=0.6,
            top_p=0.9,
        )
        try:
            for chunk in chunks:
                if cancel.is_set():
                    return
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta
        finally:
            chunks.close()  # ends llama.cpp's generation now, not when collected
