"""Prometheus metrics: what the gateway is doing, and how fast.

One ``GatewayMetrics`` per application (its own registry, so several apps in
one process, as in tests, do not mix). Live sessions feed it every engine
event; connections feed it the errors they answer.

``serve --workers`` runs its workers inside ``shared_between_processes``: each
writes its figures to files in one directory (prometheus_client's multiprocess
mode), and whichever worker a scrape reaches renders them all, summed.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from sonicgate.domain import ErrorCode
from sonicgate.events import AudioOut, EngineEvent, Error, Metrics, TurnEnded, Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds from the end of user speech: the interesting range is 0.1 to 3 s.
STAGE_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
# prometheus_client reads it when first imported: set before the processes start.
SHARED_DIR = "PROMETHEUS_MULTIPROC_DIR"
SHARED_PREFIX = "sonicgate-metrics-"  # then the owner's pid: see shared_between_processes


@contextmanager
def shared_between_processes() -> Iterator[None]:
    """The processes started inside write their metrics to one directory (removed
    at the end), and each renders everyone's. Directories left by a caller killed
    outright (named by its pid) are removed first."""
    for stale in Path(tempfile.gettempdir()).glob(f"{SHARED_PREFIX}*"):
        owner = stale.name.removeprefix(SHARED_PREFIX).partition("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    directory = tempfile.mkdtemp(prefix=f"{SHARED_PREFIX}{os.getpid()}-")
    os.environ[SHARED_DIR] = directory
    try:
        yield
    finally:
        del os.environ[SHARED_DIR]
        shutil.rmtree(directory, ignore_errors=True)


def process_ended(pid: int) -> None:
    """A process of ``shared_between_processes`` is gone: its gauges stop counting;
    what its counters counted stays in the totals."""
    mark_process_dead(pid, os.environ[SHARED_DIR])  # type: ignore[no-untyped-call]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._shared = os.environ.get(SHARED_DIR)
        # Gauges summed over the live processes when shared ("livesum").
        self.sessions = Gauge(
            "sonicgate_active_sessions",
            "Live sessions on this node (with --workers, on all of them).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.connections = Gauge(
            "sonicgate_active_connections",
            "Open client WebSockets.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.turns = Counter(
            "sonicgate_turns", "Answered turns.", ["engine", "interrupted"], registry=self.registry
        )
        self.stages = Histogram(
            "sonicgate_turn_stage_seconds",
            "Per-turn stage times from the end of user speech (first_audio: voice to voice).",
            ["engine", "stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "sonicgate_errors", "Errors told to clients, by code.", ["code"], registry=self.registry
        )
        self.fallbacks = Counter(
            "sonicgate_fallbacks",
            "Conversations an engine handed over to its backup, by the engine that failed.",
            ["engine"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "sonicgate_engine_tokens",
            "Tokens cloud engines reported.",
            ["engine", "direction"],
            registry=self.registry,
        )
        self.audio = Counter(
            "sonicgate_audio_seconds",
            "Seconds of audio in from clients and out from engines.",
            ["engine", "direction"],
            registry=self.registry,
        )

    def engine_event(self, engine: str, event: EngineEvent) -> None:
        match event:
            case Metrics(stages=stages):
                for stage, seconds in stages.items():
                    self.stages.labels(engine, stage).observe(seconds)
            case TurnEnded(interrupted=interrupted):
                self.turns.labels(engine, str(interrupted).lower()).inc()
            case Error(code=code):
                self.errors.labels(code).inc()
                if code == ErrorCode.ENGINE_FALLBACK:
                    self.fallbacks.labels(engine).inc()
            case AudioOut(pcm=pcm, sample_rate=rate):
                self._audio(engine, "out").inc(len(pcm) / 2 / rate)

    def usage(self, engine: str, previous: Usage | None, current: Usage) -> None:
        """Usage events carry running totals: count what is new since the last one."""
        before = previous or Usage(0, 0)
        self.tokens.labels(engine, "input").inc(max(0, current.input_tokens - before.input_tokens))
        self.tokens.labels(engine, "output").inc(
            max(0, current.output_tokens - before.output_tokens)
        )

    def audio_in(self, engine: str, seconds: float) -> None:
        self._audio(engine, "in").inc(seconds)

    @functools.cache  # noqa: B019 (one per application: it lives as long as the app)
    def _audio(self, engine: str, direction: str) -> Counter:
        """The counter of one engine and direction, looked up once: it counts every chunk."""
        return self.audio.labels(engine, direction)

    def render(self) -> bytes:
        if self._shared is None:
            return generate_latest(self.registry)
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone, self._shared)  # type: ignore[no-untyped-call]
        return generate_latest(everyone)
