"""How many threads llama.cpp gets (and Whisper: ``stt.tuned``), measured on the CPU at hand.

The first start on a machine times the model on one thread and on more (a few
seconds); the figures are kept in the user's cache per CPU, llama.cpp build and
model, so later starts read them instead. ``SONICGATE_LLM_THREADS=decode,prompt``
(e.g. ``1,2``) sets the counts by hand and measures nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from sonicgate.engines.local.cpu import load_llama_kernels, read_cpu
from sonicgate.models import ModelError

log = logging.getLogger(__name__)

OVERRIDE = "SONICGATE_LLM_THREADS"
KIND = "llm"  # its cache: ~/.cache/sonicgate/llm-threads.v2.json
# Decoding on more threads must beat one by this much to be chosen: see ``choose``.
DECODE_SPEEDUP = 1.5
# In the cache file's name: raised when the figures kept before cannot be trusted. 2:
# before, numpy's BLAS threads spun beside the timed model (``one_blas_thread``) and
# slowed the one-thread timings (the LLM 33 against 46 tokens/s, and chose two threads).
CACHE_VERSION = 2
QUIET_RATIO = 0.8  # see ``busy``
ROUNDS = 3  # timings of each thread count, the best kept


@dataclass(frozen=True, slots=True)
class Threads:
    decode: int  # generating the reply, one token at a time
    prompt: int  # reading the prompt, in batches


@dataclass(frozen=True, slots=True)
class Speed:
    """Tokens per second on some number of threads."""

    decode: float
    prompt: float


class Timed(Protocol):
    def speed(self, threads: int) -> Speed: ...


@dataclass(frozen=True, slots=True)
class ThreadChoice:
    threads: Threads
    speeds: dict[int, Speed]  # by thread count; empty when set by hand
    source: str  # "measured" (on a busy machine), "cached" or "set by hand"

    def describe(self) -> dict[str, Any]:
        """For logs and benchmark files."""
        return {
            "threads": asdict(self.threads),
            "tokens_per_second": {str(n): asdict(speed) for n, speed in self.speeds.items()},
            "source": self.source,
        }


def one_blas_thread() -> None:
    """numpy's OpenBLAS on one thread, for the whole process. Its matrix products here
    are small (the mel filters of Whisper's and the turn detector's features), and
    after each its idle threads spin for a while: on 2 cores, as the user spoke, they
    took a core from llama.cpp (a quarter of the process's CPU samples, in perf), and
    the LLM read a prompt at half its speed."""
    threadpool_limits(1, user_api="blas")


def choose(speeds: dict[int, Speed]) -> Threads:
    """The thread counts for the measured ``speeds`` (measured with the TTS idle).

    A prompt is read between the transcript and the first token, with the other
    models idle: the fastest count reads it. Decoding goes on while the TTS speaks
    the pieces already cut, but hibari synthesizes ~100x faster than real time: it
    needs a core for tens of milliseconds a piece, and the first piece, which
    decides when audio starts, is decoded before the TTS has any work. So a second
    decode thread is worth its short clashes with the TTS when it clearly helps:
    by ``DECODE_SPEEDUP``, as two real cores do (~2x). Two hyperthreads of one core
    share its caches and memory bandwidth (10-30 % more), and on a busy machine a
    second thread stalls every step, which waits for the slowest thread: one then.
    """
    prompt = max(speeds, key=lambda n: speeds[n].prompt)
    single = speeds[1].decode
    faster = [n for n in speeds if speeds[n].decode >= single * DECODE_SPEEDUP]
    decode = max(faster, key=lambda n: speeds[n].decode, default=1)
    return Threads(decode, prompt)


def fastest(model: Timed, thread_counts: list[int]) -> dict[int, Speed]:
    """Each count's best of ``ROUNDS``, the counts taking turns: a burst of other work
    slows one round, not all of one count's (the first also warms caches). A busy
    machine gets one round: it is slow there, and its figures are not kept anyway."""
    best = {n: Speed(decode=0.0, prompt=0.0) for n in thread_counts}
    for _ in range(ROUNDS):
        for n in thread_counts:
            speed = model.speed(n)
            best[n] = Speed(max(best[n].decode, speed.decode), max(best[n].prompt, speed.prompt))
        if busy(best):
            break
    return best


def busy(speeds: dict[int, Speed]) -> bool:
    """Whether other work ran during the measurement: on a quiet CPU more threads read
    a prompt (batched, compute-bound) at least about as fast as one; when they wait
    for cores taken by other processes, they read it several times slower."""
    return any(speed.prompt < speeds[1].prompt * QUIET_RATIO for speed in speeds.values())


def counts(cores: int) -> list[int]:
    """The thread counts worth timing: one, two and all cores."""
    return sorted({1, min(2, cores), cores})


def by_hand(value: str) -> Threads:
    try:
        decode, prompt = (int(part) for part in value.split(","))
    except ValueError:
        raise ModelError(f"{OVERRIDE}={value!r}: expected two counts, e.g. '1,2'") from None
    if decode < 1 or prompt < 1:
        raise ModelError(f"{OVERRIDE}={value!r}: thread counts start at 1")
    return Threads(decode, prompt)


def cache_file(kind: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sonicgate" / f"{kind}-threads.v{CACHE_VERSION}.json"


def cache_key(model: Path) -> str:
    """What the figures depend on: CPU, cores given to us, llama.cpp build and kernels, model."""
    build = f"llama-cpp-python {version('llama-cpp-python')} {load_llama_kernels()}"
    return machine_key(build, model)


def machine_key(build: str, model: Path) -> str:
    cpu = read_cpu()
    return f"{cpu.model} | {cpu.cores} cores | {build} | {model.parent.name}/{model.name}"


def read_kept(kind: str, key: str) -> Any:
    """The entry kept under ``key`` in ``kind``'s cache; None if there is none."""
    try:
        return json.loads(cache_file(kind).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def keep(kind: str, key: str, entry: Any) -> None:
    path = cache_file(kind)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    entries[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    written = path.with_suffix(f".{os.getpid()}")  # then renamed: a reader never sees half
    written.write_text(json.dumps(entries, indent=2) + "\n")
    written.replace(path)


def cached(model: Path) -> ThreadChoice | None:
    """The figures kept for this machine and model, if measured before."""
    try:
        entry = read_kept(KIND, cache_key(model))
        speeds = {int(n): Speed(**speed) for n, speed in entry["tokens_per_second"].items()}
    except (KeyError, TypeError):
        return None
    return ThreadChoice(choose(speeds), speeds, "cached")


def known(model: Path) -> ThreadChoice | None:
    """The counts set by hand or measured before (with the speeds, if measured);
    None if this machine has yet to time the model."""
    kept = cached(model)
    wanted = os.environ.get(OVERRIDE)
    if wanted:
        return ThreadChoice(by_hand(wanted), kept.speeds if kept else {}, "set by hand")
    return kept


def tune(model: Timed, path: Path) -> ThreadChoice:
    """The thread counts for ``model`` (loaded from ``path``), logged."""
    choice = known(path)
    if choice is None:
        speeds = fastest(model, counts(read_cpu().cores))
        if busy(speeds):
            log.warning("llm threads: other work slowed the timing; timed again at the next start")
            choice = ThreadChoice(choose(speeds), speeds, "measured on a busy machine")
        else:
            choice = ThreadChoice(choose(speeds), speeds, "measured")
            keep(KIND, cache_key(path), choice.describe())
    rates = ", ".join(
        f"{n} thread{'s' * (n > 1)}: decode {s.decode:.1f} tok/s, prompt {s.prompt:.0f} tok/s"
        for n, s in choice.speeds.items()
    )
    log.info(
        "llm threads: %d decoding, %d reading the prompt (%s%s)",
        choice.threads.decode,
        choice.threads.prompt,
        choice.source,
        f"; {rates}" if rates else "",
    )
    return choice
