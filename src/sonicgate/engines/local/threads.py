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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from sonicgate.engines.local.cpu import load_llama_kernels, read_cpu
from sonicgate.models import ModelError

log = logging.getLogger(__name__)

OVERRIDE = "SONICGATE_LLM_THREADS"
KIND = "llm"  # its cache: ~/.cache/sonicgate/llm-threads.v3.json
# Decoding on more threads must beat one by this much to be chosen: see ``choose``. In
# the conversation (bench.local_latency, p50), the 0.5B on two real cores: timed 1.33x as
# fast on two threads (46 against 61 tok/s), one thread was a little faster (0.49 against
# 0.52 s); timed 1.31-1.83x at start-ups of another machine (noisy: 20-31 tok/s on one
# thread), two were much faster (0.59 against 0.70 s, runs taking turns). A wrong second
# thread costs less than a wrong single one: the bar sits low, above hyperthreads' gain.
DECODE_SPEEDUP = 1.25
# In the cache file's name: raised when the figures kept before cannot be trusted. 2:
# before, numpy's BLAS threads spun beside the timed model (``one_blas_thread``) and
# slowed the one-thread timings (the LLM 33 against 46 tokens/s, and chose two threads).
# 3: timings taken beside other processes were kept (``OtherWork``).
CACHE_VERSION = 3
QUIET_RATIO = 0.8  # see ``busy``
# Other processes (or the hypervisor) taking more than this share of a core while a
# count is timed: the figures are not this machine's own (see ``OtherWork``).
OTHER_WORK_CORES = 0.25
PROC_STAT = Path("/proc/stat")
MIN_WINDOW = 0.5  # seconds: see ``OtherWork``
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


class OtherWork:
    """How many cores other processes took while the ``with`` block ran: the busy time
    of the cores we may run on (``/proc/stat``: stolen by the hypervisor included) less
    this process's own CPU time. A timing taken beside a test suite or another server's
    start looked quiet by its own figures (the 1.5B decoding 1.14x as fast on two
    threads as on one, against 1.7x alone) and chose one thread for good."""

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        own: Callable[[], float] = time.process_time,
    ) -> None:
        self._clock, self._own = clock, own
        self.cores = 0.0  # set when the block ends

    def __enter__(self) -> OtherWork:
        self._started = (self._clock(), busy_seconds(), self._own())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        started, busy, own = self._started
        elapsed = self._clock() - started
        others = busy_seconds() - busy - (self._own() - own)
        # /proc/stat counts in ticks (10 ms) per core: a shorter block cannot tell.
        self.cores = max(0.0, others) / elapsed if elapsed >= MIN_WINDOW else 0.0


def busy_seconds() -> float:
    """CPU seconds spent on the cores we may run on since boot (by any process, or
    stolen by the hypervisor); 0 where ``/proc/stat`` cannot be read."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return 0.0
    ours = os.sched_getaffinity(0)
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in ours:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


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
    by ``DECODE_SPEEDUP``, as two real cores do (1.3-2x). Two hyperthreads of one core
    share its caches and memory bandwidth (10-30 % more), and on a busy machine a
    second thread stalls every step, which waits for the slowest thread: one then.
    """
    prompt = max(speeds, key=lambda n: speeds[n].prompt)
    single = speeds[1].decode
    faster = [n for n in speeds if speeds[n].decode >= single * DECODE_SPEEDUP]
    decode = max(faster, key=lambda n: speeds[n].decode, default=1)
    return Threads(decode, prompt)


@dataclass(frozen=True, slots=True)
class Timing:
    speeds: dict[int, Speed]  # each count's best
    other_cores: float  # the most that other work took in a round (``OtherWork``)


def fastest(
    model: Timed, thread_counts: list[int], watch: Callable[[], OtherWork] = OtherWork
) -> Timing:
    """Each count's best of ``ROUNDS``, the counts taking turns: a burst of other work
    slows one round, not all of one count's (the first also warms caches). A busy
    machine gets one round: it is slow there, and its figures are not kept anyway."""
    best = {n: Speed(decode=0.0, prompt=0.0) for n in thread_counts}
    others = 0.0
    for _ in range(ROUNDS):
        with watch() as other:
            for n in thread_counts:
                speed = model.speed(n)
                best[n] = Speed(
                    max(best[n].decode, speed.decode), max(best[n].prompt, speed.prompt)
                )
        others = max(others, other.cores)
        if busy(Timing(best, others)):
            break
    return Timing(best, others)


def busy(timing: Timing) -> bool:
    """Whether other work ran while the model was timed (reading a prompt is batched)."""
    prompt = {n: speed.prompt for n, speed in timing.speeds.items()}
    return disturbed(prompt, timing.other_cores)


def disturbed(rates: dict[int, float], other_cores: float) -> bool:
    """Whether other work ran during a timing: it took cores (``OtherWork``), or more
    threads did batched, compute-bound work (``rates``, by thread count) clearly slower
    than one, as they do when they wait for cores taken by others."""
    slowed = any(rate < rates[1] * QUIET_RATIO for rate in rates.values())
    return slowed or other_cores > OTHER_WORK_CORES


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
        timing = fastest(model, counts(read_cpu().cores))
        quiet = not busy(timing)
        source = "measured" if quiet else "measured on a busy machine"
        choice = ThreadChoice(choose(timing.speeds), timing.speeds, source)
        if quiet:
            keep(KIND, cache_key(path), choice.describe())
        else:
            log.warning(
                "llm threads: other work took %.2f of a core during the timing; "
                "timed again at the next start",
                timing.other_cores,
            )
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
