"""The LLM's thread counts: chosen from measured speeds, kept per machine, or set by hand."""

from __future__ import annotations

import builtins
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sonicgate.engines.local import threads
from sonicgate.engines.local.cpu import read_cpu
from sonicgate.engines.local.threads import Speed, Threads, Timing, choose
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
    assert not threads.busy(Timing(quiet, 0.0)) and threads.busy(Timing(shared, 0.0))
    assert choose(shared) == Threads(decode=1, prompt=1)


def test_a_busy_machine_is_told_by_the_cores_others_took() -> None:
    # measured beside the test suite: two threads 1.14x as fast as one, not 1.7x
    looks_quiet = {1: Speed(decode=17.3, prompt=37), 2: Speed(decode=19.7, prompt=60)}
    assert threads.busy(Timing(looks_quiet, other_cores=0.6))
    assert not threads.busy(Timing(looks_quiet, other_cores=0.1))


def write_stat(path: Path, busy_ticks: int) -> None:
    """A /proc/stat whose every core we may run on has been busy ``busy_ticks`` (half in
    user time, half stolen by the hypervisor), beside a core we may not run on."""
    total = f"cpu  {busy_ticks * len(CORES)} 0 0 0 0 0 0 0 0 0"
    ours = [f"cpu{n} {busy_ticks // 2} 0 0 900 7 0 0 {busy_ticks // 2} 0 0" for n in CORES]
    not_ours = f"cpu{max(CORES) + 1} {busy_ticks * 7} 0 0 0 0 0 0 0 0 0"
    path.write_text("\n".join([total, *ours, not_ours, "intr 1 2 3"]))


CORES = sorted(os.sched_getaffinity(0))
HZ = os.sysconf("SC_CLK_TCK")


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "stat"
    write_stat(path, 0)
    monkeypatch.setattr(threads, "PROC_STAT", path)
    return path


def test_other_work_is_the_busy_time_of_our_cores_less_our_own(stat: Path) -> None:
    clock, own = VirtualClock(), VirtualClock()
    with threads.OtherWork(clock, own) as other:
        write_stat(stat, busy_ticks=HZ)  # each of our cores busy for a second
        clock.now, own.now = 2.0, 0.5  # of which half a second was ours
    assert other.cores == pytest.approx((len(CORES) - 0.5) / 2.0)


def test_a_block_too_short_to_tell_counts_no_other_work(stat: Path) -> None:
    clock = VirtualClock()
    with threads.OtherWork(clock, VirtualClock()) as other:
        write_stat(stat, busy_ticks=HZ)
        clock.now = threads.MIN_WINDOW / 2
    assert other.cores == 0.0


def test_without_proc_stat_no_other_work_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "absent")
    clock = VirtualClock()
    with threads.OtherWork(clock, VirtualClock()) as other:
        clock.now = 2.0
    assert other.cores == 0.0


def test_counts_timed_are_one_two_and_all() -> None:
    assert threads.counts(1) == [1]
    assert threads.counts(2) == [1, 2]
    assert threads.counts(8) == [1, 2, 8]


# A container given one CPU by quota (docker --cpus=1, a Kubernetes limit of 1) on a
# 64-core host: cgroup v2's cpu.max (and v1's files, for either reader).
CGROUP_FILES = {
    "/proc/self/cgroup": "0::/\n",
    "/sys/fs/cgroup/cpu.max": "100000 100000\n",
    "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000\n",
    "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
    "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
    "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
}


def test_a_cpu_quota_below_the_cores_bounds_the_thread_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Affinity gives the process 64 cores, its cgroup's quota one CPU's time: llama.cpp
    and Whisper get one core's worth of threads. Before, 64 were timed (and taken for
    the prompt before the timing), each stalled by throttling; the timing looked busy,
    so it was never kept and ran again at every start."""
    real_open: Callable[..., Any] = io.open

    def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if str(file) in CGROUP_FILES and "r" in mode:
            return io.StringIO(CGROUP_FILES[str(file)])
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", opened)
    monkeypatch.setattr(io, "open", opened)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    cores = read_cpu("model name\t: Big Host CPU\nflags\t\t: sse4_2 avx avx2\n").cores
    assert cores == 1
    assert threads.counts(cores) == [1]


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
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "absent")  # no other work seen
    monkeypatch.delenv(threads.OVERRIDE, raising=False)
    monkeypatch.setattr(threads, "cache_key", lambda model: f"test cpu | {model.name}")
    monkeypatch.setattr(threads, "counts", lambda cores: [1, 2])
    return tmp_path / "sonicgate" / "llm-threads.v3.json"


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


class Crowding(Clock):
    """A model whose speeds look quiet, timed while another process takes a core."""

    def __init__(self, stat: Path, clock: VirtualClock) -> None:
        super().__init__()
        self.stat, self.clock = stat, clock

    def speed(self, threads: int) -> Speed:
        self.clock.now += 1.0
        write_stat(self.stat, busy_ticks=int(self.clock.now * HZ))  # the other process
        return super().speed(threads)


def test_a_timing_beside_other_work_is_busy_however_its_speeds_look(stat: Path) -> None:
    clock = VirtualClock()
    model = Crowding(stat, clock)
    timing = threads.fastest(model, [1, 2], lambda: threads.OtherWork(clock, VirtualClock()))
    assert timing.other_cores >= 0.9 and threads.busy(timing)
    assert model.timed == [1, 2]  # one round tells


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
