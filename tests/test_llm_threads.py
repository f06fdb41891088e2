"""The LLM's thread counts: chosen from measured speeds, kept per machine, or set by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from sonicgate.engines.local import threads
from sonicgate.engines.local.threads import Speed, Threads, choose
from sonicgate.models import ModelError


def test_two_real_cores_decode_on_both() -> None:
    speeds = {1: Speed(decode=10.6, prompt=150), 2: Speed(decode=22.0, prompt=290)}
    assert choose(speeds) == Threads(decode=2, prompt=2)


def test_hyperthreads_of_one_core_leave_the_other_to_the_tts() -> None:
    speeds = {1: Speed(decode=20.0, prompt=200), 2: Speed(decode=23.0, prompt=260)}
    assert choose(speeds) == Threads(decode=1, prompt=2)


def test_the_prompt_goes_to_the_fastest_count() -> None:
    speeds = {1: Speed(decode=20.0, prompt=200), 2: Speed(decode=19.0, prompt=180)}
    assert choose(speeds) == Threads(decode=1, prompt=1)


def test_a_busy_machine_is_told_by_its_prompt_speeds() -> None:
    quiet = {1: Speed(decode=13.4, prompt=150), 2: Speed(decode=24.0, prompt=280)}
    shared = {1: Speed(decode=13.5, prompt=49), 2: Speed(decode=1.0, prompt=5)}  # measured so
    assert not threads.busy(quiet) and threads.busy(shared)
    assert choose(shared) == Threads(decode=1, prompt=1)


def test_counts_timed_are_one_two_and_all() -> None:
    assert threads.counts(1) == [1]
    assert threads.counts(2) == [1, 2]
    assert threads.counts(8) == [1, 2, 8]


class Clock:
    """A model whose speed is known, counting how often it is timed."""

    def __init__(self) -> None:
        self.timed: list[int] = []

    def speed(self, threads: int) -> Speed:
        self.timed.append(threads)
        return Speed(decode=10.0 * threads, prompt=100.0 * threads)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(threads.OVERRIDE, raising=False)
    monkeypatch.setattr(threads, "cache_key", lambda model: f"test cpu | {model.name}")
    monkeypatch.setattr(threads, "counts", lambda cores: [1, 2])
    return tmp_path / "sonicgate" / "llm-threads.v2.json"


def test_measured_once_then_read_from_the_cache(cache: Path) -> None:
    model = Clock()
    first = threads.tune(model, Path("model.gguf"))
    assert first.source == "measured" and first.threads == Threads(2, 2)
    again = threads.tune(model, Path("model.gguf"))
    assert again.source == "cached" and again.threads == first.threads
    assert again.speeds == first.speeds
    assert model.timed == [1, 2] * threads.ROUNDS  # taking turns; not measured again
    threads.tune(model, Path("other.gguf"))  # another model is measured for itself
    assert model.timed == [1, 2] * threads.ROUNDS * 2


class Crowded(Clock):
    """A model on a machine whose other work slows more threads more."""

    def speed(self, threads: int) -> Speed:
        self.timed.append(threads)
        return Speed(decode=10.0 / threads, prompt=100.0 / threads)


def test_figures_from_a_busy_machine_are_not_kept(cache: Path) -> None:
    model = Crowded()
    choice = threads.tune(model, Path("model.gguf"))
    assert choice.threads == Threads(1, 1) and choice.source == "measured on a busy machine"
    assert model.timed == [1, 2]  # one round tells
    assert not cache.exists()


def test_a_damaged_cache_is_measured_again(cache: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert threads.tune(Clock(), Path("model.gguf")).source == "measured"


def test_set_by_hand_measures_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.OVERRIDE, "1,2")
    model = Clock()
    choice = threads.tune(model, Path("model.gguf"))
    assert choice.threads == Threads(decode=1, prompt=2) and choice.source == "set by hand"
    assert model.timed == []


@pytest.mark.parametrize("value", ["2", "a,b", "0,2", "1,2,3"])
def test_a_wrong_setting_is_named(value: str) -> None:
    with pytest.raises(ModelError, match=threads.OVERRIDE):
        threads.by_hand(value)
