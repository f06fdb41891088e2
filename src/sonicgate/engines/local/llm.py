"""A small chat model through llama.cpp, streamed and cancellable."""

from __future__ import annotations

import codecs
import ctypes
import re
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from llama_cpp import (
    Llama,
    llama_get_logits_ith,
    llama_set_n_threads,
    llama_state_get_data,
    llama_state_get_size,
    llama_state_set_data,
    llama_vocab_is_eog,
)
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from numpy.typing import NDArray

from sonicgate.engines.local.cpu import CpuError, load_llama_kernels, read_cpu
from sonicgate.engines.local.threads import Speed, Threads
from sonicgate.models import ModelError

PORTABLE_FIX = "reinstall it with the portable build: `rm -rf .venv && make run`"

# Greedy: the small models answer facts and sums right more often when they take their
# likeliest word (bench/answers.py: 0.5B 77 -> 81 %, 1.5B 93 -> 97 % right, from 0.6).
# ``ChatModel.stream`` always takes it; peers in the benchmarks are given this setting.
TEMPERATURE = 0.0
CHARS_PER_TOKEN = 4  # about, in English: remote models' tokenizers are not here
# Text for timing the model (~60 tokens): its first tokens are decoded one by one.
PROBE = (
    "The quick brown fox jumps over the lazy dog near the river bank, while "
    "seven small birds sing in the old oak tree and a farmer walks his cows "
    "home across the green hills before the evening rain begins to fall."
)
DECODE_PROBE_TOKENS = 12
# The conversations' saved model states (the 0.5B's: 12 KB a token of context, a few MB a
# conversation), the least recently used dropped beyond this.
CONVERSATION_STATES_BYTES = 512 << 20
SENTENCE_ENDS = (".", "?", "!")  # a token that starts with one of these ends the sentence
TRAILING = re.compile(r"[\s.?!,;:\u2026]+$")  # Whisper's punctuation after the last word
LAST_WORD = re.compile(r"\s*\S+\s*$")  # and the last word itself, with what follows it


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


@runtime_checkable
class SentenceReader(Protocol):
    """A chat model that can also tell whether the user's words form a whole sentence."""

    def sentence_end(self, messages: list[dict[str, str]]) -> float | None:
        """The probability that the last (user's) message, its final punctuation
        taken off, ends a sentence where it stops; None if it cannot tell."""
        ...


@runtime_checkable
class ReadsAhead(Protocol):
    """A chat model that can read a reply's prompt while the user is still speaking."""

    def read_ahead(self, messages: list[dict[str, str]]) -> None:
        """Read the prompt of a reply to the user's words so far (the last message) up
        to their last word, which may yet change: the reply then reads what follows."""
        ...


class ChatModel:
    """One caller at a time (llama.cpp is not re-entrant): give it one worker thread."""

    def __init__(self, path: Path, n_ctx: int = 2048, threads: Threads | None = None) -> None:
        """``threads``: by default one to decode, all cores for the prompt (until
        ``use_threads`` sets measured ones: ``threads.tune``)."""
        load_llama_kernels()
        self.threads = threads or Threads(decode=1, prompt=read_cpu().cores)
        self._llama = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=self.threads.decode,
            n_threads_batch=self.threads.prompt,
            # Prompts are read in batches of this many tokens; a new turn brings ~20.
            # llama.cpp keeps room for a batch's logits, 600 KB a token.
            n_batch=64,
            verbose=False,
        )
        # Conversations take turns on one model, and its context holds the last one's
        # tokens: without saved states each turn of another conversation re-read its
        # whole history (1.4 s by the seventh turn of two, against 0.2 s with them).
        self._states = SavedStates(CONVERSATION_STATES_BYTES)
        self.n_ctx = n_ctx
        self._template = _template(self._llama, path)
        self._ends: NDArray[np.bool_] | None = None  # see _sentence_ends
        # The logits after the context's last token, while the context is as _eval left it.
        self._next: NDArray[np.float32] | None = None

    def use_threads(self, threads: Threads) -> None:
        llama_set_n_threads(self._llama.ctx, threads.decode, threads.prompt)
        self.threads = threads

    def speed(self, threads: int) -> Speed:
        """Tokens per second on ``threads`` threads, reading a prompt and decoding.
        Leaves the cache empty and the thread counts as they were."""
        kept = self.threads
        tokens = self._llama.tokenize(PROBE.encode("utf-8"))
        self.use_threads(Threads(threads, threads))
        self._llama.reset()  # type: ignore[no-untyped-call]
        try:
            prompt = _rate(len(tokens), self._llama.eval, tokens)
            decode = _rate(DECODE_PROBE_TOKENS, self._decode_one_by_one, tokens)
        finally:
            self._llama.reset()  # type: ignore[no-untyped-call]
            self._next = None
            self.use_threads(kept)
        return Speed(decode=decode, prompt=prompt)

    def _decode_one_by_one(self, tokens: list[int]) -> None:
        for token in tokens[:DECODE_PROBE_TOKENS]:
            self._llama.eval([token])

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False))

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]:
        """Text deltas of the reply, a token each; stops at the next token once
        ``cancel`` is set.

        The GGUF's own chat template frames the turns; the caller's system message
        sets the spoken style. Greedy (see ``TEMPERATURE``), so the loop is ours: the first
        token comes from the logits after the prompt's last token, which the words'
        reading (``sentence_end``) has read already on most turns, and each token is
        handed on before the model reads it for the next.
        """
        if cancel.is_set():
            return  # cancelled while queued: skip the prompt evaluation too
        llama = self._llama
        logits = self._read(self._prompt_tokens(messages))
        # A character may span tokens: the text of those before its last waits.
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for _ in range(min(max_tokens, self.n_ctx - llama.n_tokens)):
            token = int(np.argmax(logits))
            if llama_vocab_is_eog(llama._model.vocab, token):
                break
            if delta := text.decode(llama.detokenize([token])):
                yield delta
            if cancel.is_set():
                return
            position = llama.n_tokens
            logits = self._eval([token], position, keep=())[position]
        self._save()

    def sentence_end(self, messages: list[dict[str, str]]) -> float | None:
        """See ``SentenceReader``. Whisper punctuates what it hears, cut-off phrases too
        ("Can you play some music by?"), so the words are read bare: how likely a
        full stop, question or exclamation mark (or the message's end) comes next.

        It reads the reply's own prompt, as the reply would (``_read``), keeping the
        logits at the end of the bare words too: the reply then reads nothing more,
        and its first token comes at once.
        """
        found = self._words_in_prompt(messages)
        if found is None:
            return None
        prompt, begins, add_bos = found
        words_end = begins + len(TRAILING.sub("", messages[-1]["content"]))
        tokens = self._tokens(prompt, add_bos)
        words = self._tokens(prompt[:words_end], add_bos)
        if words_end == begins or tokens[: len(words)] != words:
            return None  # no words, or they do not end on a token boundary
        logits = self._read(tokens, at=len(words) - 1)
        chances = np.exp(logits - logits.max())
        return float(chances[self._sentence_ends()].sum() / chances.sum())

    def read_ahead(self, messages: list[dict[str, str]]) -> None:
        """See ``ReadsAhead``. The prompt is cut where a word begins, and the tokens
        of a word carry the space before it: the cut falls on a token boundary of the
        whole prompt too, whatever words come after."""
        found = self._words_in_prompt(messages)
        if found is None:
            return
        prompt, begins, add_bos = found
        settled = LAST_WORD.sub("", messages[-1]["content"])
        if settled:
            self._read(self._tokens(prompt[: begins + len(settled)], add_bos))

    def _words_in_prompt(self, messages: list[dict[str, str]]) -> tuple[str, int, bool] | None:
        """The reply's prompt (the GGUF's template over ``messages``), where the user's
        words (the last message) begin in it, and whether its tokens need a BOS first;
        None without messages or words found."""
        if not messages:
            return None
        prompt, add_bos = self._render(messages)
        begins = prompt.rfind(messages[-1]["content"])
        return None if begins < 0 else (prompt, begins, add_bos)

    def _render(self, messages: list[dict[str, str]]) -> tuple[str, bool]:
        """The reply's prompt, and whether its tokens need a BOS first."""
        rendered = self._template(messages=messages)  # type: ignore[arg-type]
        return rendered.prompt, not rendered.added_special

    def _tokens(self, text: str, add_bos: bool) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        return self._tokens(*self._render(messages))

    def _sentence_ends(self) -> NDArray[np.bool_]:
        """Which tokens end a sentence (see ``SENTENCE_ENDS``), the end of text too."""
        if self._ends is None:
            llama = self._llama
            texts = (llama._model.token_get_text(token) for token in range(llama.n_vocab()))
            self._ends = np.fromiter(
                (text.lstrip().startswith(SENTENCE_ENDS) for text in texts), dtype=np.bool_
            )
            self._ends[llama.token_eos()] = True
        return self._ends

    def _read(self, tokens: list[int], at: int | None = None) -> NDArray[np.float32]:
        """Evaluate prompt ``tokens``: from the conversation's saved state if it holds
        more of them than the context does, then only what is new. Returns the logits
        after token ``at`` (the last by default). Those after the last are kept: the
        reply to this prompt, read again, then reads nothing."""
        llama = self._llama
        held = llama.longest_token_prefix(llama.input_ids[: llama.n_tokens].tolist(), tokens)
        saved = self._states.nearest(tokens)
        if saved is not None and llama.longest_token_prefix(saved[0], tokens) > held:
            self._restore(*saved)
            held = llama.longest_token_prefix(saved[0], tokens)
        if at is None and held == len(tokens) == llama.n_tokens and self._next is not None:
            return self._next  # the context holds the prompt, and its logits were kept
        wanted = len(tokens) - 1 if at is None else at
        past = min(held, wanted)
        return self._eval(tokens[past:], past, keep=(wanted,))[wanted]

    def _save(self) -> None:
        """The context's state (its tokens' KV cache), for the conversation's next
        turn if another conversation's comes between."""
        llama = self._llama
        size = llama_state_get_size(llama.ctx)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_state_get_data(llama.ctx, buffer, size)
        tokens = tuple(llama.input_ids[: llama.n_tokens].tolist())
        self._states.keep(tokens, bytes(memoryview(buffer)[:written]))

    def _restore(self, tokens: tuple[int, ...], state: bytes) -> None:
        llama = self._llama
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_state_set_data(llama.ctx, buffer, len(state)) != len(state):
            raise RuntimeError("llama.cpp did not take a saved conversation state")
        llama.input_ids[: len(tokens)] = tokens
        llama.n_tokens = len(tokens)
        self._next = None

    def _eval(
        self, tokens: list[int], past: int, keep: tuple[int, ...]
    ) -> dict[int, NDArray[np.float32]]:
        """Read ``tokens`` into the context from position ``past`` on (what it held
        from there is dropped), in batches. llama.cpp computes the logits after the
        positions in ``keep`` and after the last token (kept in ``_next``) only;
        returns them by position."""
        llama = self._llama
        self._next = None
        llama._ctx.kv_cache_seq_rm(-1, past, -1)
        llama.n_tokens = past
        end = past + len(tokens)
        wanted = {*keep, end - 1}
        found: dict[int, NDArray[np.float32]] = {}
        for start in range(past, end, llama.n_batch):
            batch = tokens[start - past : start - past + llama.n_batch]
            llama._batch.set_batch(batch=batch, n_past=start, logits_all=False)
            rows = [row for row in range(len(batch)) if start + row in wanted]
            for row in range(len(batch)):
                llama._batch.batch.logits[row] = row in rows
            llama._ctx.decode(llama._batch)
            for row in rows:
                logits = llama_get_logits_ith(llama.ctx, row)
                found[start + row] = np.ctypeslib.as_array(logits, shape=(llama.n_vocab(),)).copy()
            llama.input_ids[start : start + len(batch)] = batch
            llama.n_tokens = start + len(batch)
        self._next = found[end - 1]
        return found


class SavedStates:
    """Conversations' model states, each under the tokens its context held; beyond
    ``capacity`` bytes, the least recently used are dropped."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()

    def nearest(self, tokens: list[int]) -> tuple[tuple[int, ...], bytes] | None:
        """The state whose tokens begin the most of ``tokens``, if any begin them."""
        shared = {key: Llama.longest_token_prefix(key, tokens) for key in self._states}
        best = max(shared, key=shared.__getitem__, default=None)
        if best is None or not shared[best]:
            return None
        self._states.move_to_end(best)
        return best, self._states[best]

    def keep(self, tokens: tuple[int, ...], state: bytes) -> None:
        self._states[tokens] = state
        self._states.move_to_end(tokens)
        while len(self._states) > 1 and sum(map(len, self._states.values())) > self.capacity:
            self._states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()


def _template(llama: Llama, path: Path) -> Jinja2ChatFormatter:
    """The GGUF's own chat template, as create_chat_completion would use it."""
    if llama.chat_format != "chat_template.default":
        raise ModelError(f"{path}: the model carries no chat template of its own")

    def text(token: int) -> str:
        return llama._model.token_get_text(token) if token != -1 else ""

    return Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=text(llama.token_eos()),
        bos_token=text(llama.token_bos()),
        stop_token_ids=[llama.token_eos()],
    )


class RunCheck:
    """Loads the model and decodes in a child process, so that a llama.cpp build this
    CPU cannot run kills the child (SIGILL), not the caller. It runs while the caller
    loads the other models; ``result`` raises ``ModelError`` with one clear line."""

    def __init__(self, path: Path) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__, str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result(self, timeout: float = 120.0) -> None:
        try:
            _, errors = self._child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
            raise ModelError(
                f"the local LLM did not answer a test prompt in {timeout:.0f} s"
            ) from None
        status = self._child.returncode
        if status == -signal.SIGILL:
            raise ModelError(
                f"the local LLM library (llama-cpp-python) cannot run on this CPU "
                f"({read_cpu().model}): it was compiled for another one; {PORTABLE_FIX}"
            )
        if status != 0:
            last = (errors.strip().splitlines() or [f"exit status {status}"])[-1]
            raise ModelError(f"the local LLM failed a test prompt: {last}")


def _rate(tokens: int, work: Callable[[list[int]], object], argument: list[int]) -> float:
    started = time.perf_counter()
    work(argument)
    return tokens / (time.perf_counter() - started)


def check_runs(path: Path) -> None:
    RunCheck(path).result()


def _decode_once(path: Path) -> None:
    try:
        model = ChatModel(path, n_ctx=256)
    except CpuError as exc:
        sys.exit(f"{exc}; {PORTABLE_FIX}")
    for _ in model.stream([{"role": "user", "content": "Hi"}], threading.Event(), 2):
        pass


if __name__ == "__main__":
    _decode_once(Path(sys.argv[1]))
