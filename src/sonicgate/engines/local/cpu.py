"""What the CPU at hand offers, and the llama.cpp kernels chosen by it.

The llama.cpp build made by setup (scripts/llama_wheel.py) carries one module of
kernels per x86 CPU generation (``libggml-cpu-<variant>.so``). llama.cpp's own
loader picks one by CPUID alone, which says what the chip has, not what the OS
has enabled; ``/proc/cpuinfo`` lists only what the kernel let through. So the
variant is chosen here, from those flags, and loaded before llama.cpp looks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
OVERRIDE = "SONICGATE_LLAMA_CPU"  # a variant name, to compare kernels in benchmarks

_BASE = ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2")
_AVX512 = (*_BASE, "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
# ggml's x86 variants (ggml/src/CMakeLists.txt) and the /proc/cpuinfo flags each
# needs. The AMX one is absent on purpose: it is never built, never loaded.
VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("sse4_2",),
    "sandybridge": ("sse4_2", "avx"),
    "ivybridge": ("sse4_2", "avx", "f16c"),
    "piledriver": ("sse4_2", "avx", "f16c", "fma"),
    "haswell": _BASE,
    "alderlake": (*_BASE, "avx_vnni"),
    "skylakex": _AVX512,
    "cannonlake": (*_AVX512, "avx512vbmi"),
    "cascadelake": (*_AVX512, "avx512_vnni"),
    "icelake": (*_AVX512, "avx512vbmi", "avx512_vnni"),
    "cooperlake": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "zen4": (*_AVX512, "avx512vbmi", "avx512_vnni", "avx512_bf16"),
}
# ggml's own ranking of features (cpu-feats.cpp): the variant with the highest sum wins.
_WEIGHT = {
    "fma": 1, "f16c": 2, "sse4_2": 4, "bmi2": 8, "avx": 16, "avx2": 32, "avx_vnni": 64,
    "avx512f": 128, "avx512vbmi": 256, "avx512_bf16": 512, "avx512_vnni": 1024,
}  # fmt: skip


class CpuError(RuntimeError):
    pass


CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct"))


@dataclass(frozen=True, slots=True)
class Cpu:
    model: str
    cores: int
    flags: frozenset[str]

    def describe(self) -> dict[str, object]:
        """For benchmark files and logs: which machine a figure came from."""
        return {"model": self.model, "cores": self.cores, "machine": platform.machine()}


def read_cpu(cpuinfo: str | None = None) -> Cpu:
    text = cpuinfo if cpuinfo is not None else CPUINFO.read_text()
    model, flags = "unknown", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    cores = len(os.sched_getaffinity(0))
    return Cpu(model, min(cores, quota_cores() or cores), flags)


def quota_cores() -> int | None:
    """How many CPUs' time the process's cgroup allows (docker --cpus, a Kubernetes
    limit), rounded up; None when uncapped. Threads beyond it only wait for the quota."""
    try:  # cgroup v2: "QUOTA PERIOD", or "max PERIOD"
        limit, period = CGROUP_V2_MAX.read_text().split()[:2]
        return None if limit == "max" else _cpus(int(limit), int(period))
    except (OSError, ValueError):
        pass
    for directory in CGROUP_V1_CPU:  # v1: a quota of -1 is none
        try:
            quota = int((directory / "cpu.cfs_quota_us").read_text())
            length = int((directory / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return _cpus(quota, length) if quota > 0 else None
    return None


def _cpus(quota: int, period: int) -> int:
    return max(1, -(-quota // max(period, 1)))


def choose_variant(available: Iterable[str], flags: frozenset[str]) -> str | None:
    """The best of ``available`` whose every feature the OS enabled; None if none runs."""
    runnable = [
        name
        for name in available
        if name in VARIANTS and all(flag in flags for flag in VARIANTS[name])
    ]
    return max(runnable, key=_score, default=None)


def _score(variant: str) -> int:
    return sum(_WEIGHT.get(flag, 0) for flag in VARIANTS[variant])


def library_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def installed_variants(directory: Path) -> dict[str, Path]:
    prefix, suffix = "libggml-cpu-", ".so"
    return {
        path.name.removeprefix(prefix).removesuffix(suffix): path
        for path in directory.glob(f"{prefix}*{suffix}")
    }


@cache
def load_llama_kernels() -> str:
    """Load the kernels for this CPU into llama.cpp (once); returns the variant's name.

    "built-in" is a build without variants (its kernels are compiled in: whether
    they run here is what ``llm.check_runs`` finds out).
    """
    directory = library_dir()
    variants = installed_variants(directory)
    if not variants:
        return "built-in"
    cpu = read_cpu()
    wanted = os.environ.get(OVERRIDE)
    if wanted:
        if wanted not in variants or choose_variant([wanted], cpu.flags) is None:
            raise CpuError(f"{OVERRIDE}={wanted}: not installed or not runnable on this CPU")
        chosen: str | None = wanted
    else:
        chosen = choose_variant(variants, cpu.flags)
    if chosen is None:
        raise CpuError(
            f"no llama.cpp kernels in {directory} run on this CPU ({cpu.model}); "
            "it needs at least SSE2"
        )
    # The copy libllama links (by its soname), not the libggml.so beside it: a wheel holds
    # no symlinks, and a second copy would have a registry of its own.
    ggml = ctypes.CDLL(str(directory / "libggml.so.0"))
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    if not ggml.ggml_backend_load(str(variants[chosen]).encode()):
        raise CpuError(f"llama.cpp could not load its kernels {variants[chosen]}")
    log.info("llama.cpp kernels: %s, for %s", chosen, cpu.model)
    return chosen
