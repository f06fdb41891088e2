"""The llama.cpp build runs on any x86-64-v3 CPU, and its kernels are chosen by what
the CPU and OS at hand allow: a native build fails here on every machine."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sonicgate import cli, logs
from sonicgate.engines.local.cpu import (
    VARIANTS,
    choose_variant,
    installed_variants,
    library_dir,
    read_cpu,
)
from sonicgate.engines.local.llm import check_runs
from sonicgate.models import ModelError

# Beyond x86-64-v3: AMX tiles, and AVX-512's zmm registers (and its mask registers).
AMX = re.compile(r"\t(tile\w+|ldtilecfg|sttilecfg|tdp\w+)\s|%tmm\d")
AVX512 = re.compile(r"%zmm\d|%k[1-7]\b")
ALWAYS_LOADED = ("libggml-base.so", "libggml.so", "libllama.so")


def disassembly(path: Path) -> str:
    if shutil.which("objdump") is None:
        pytest.fail("objdump (binutils) is missing: scripts/setup.sh --test installs it")
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_the_build_has_kernels_per_cpu_and_no_native_ones() -> None:
    variants = installed_variants(library_dir())
    assert "haswell" in variants, "no x86-64-v3 kernels: not the portable build (setup.sh)"
    assert not (library_dir() / "libggml-cpu.so").exists(), "a single native kernel library"
    assert set(variants) <= set(VARIANTS), f"unknown or AMX kernels: {sorted(variants)}"


@pytest.mark.parametrize("name", ALWAYS_LOADED)
def test_what_always_loads_stays_within_x86_64_v3(name: str) -> None:
    code = disassembly(library_dir() / name)
    assert not AMX.search(code) and not AVX512.search(code), name


def test_no_kernels_use_amx_and_only_avx512_ones_use_zmm() -> None:
    for name, path in installed_variants(library_dir()).items():
        code = disassembly(path)
        assert not AMX.search(code), f"{name} holds AMX instructions"
        if "avx512f" not in VARIANTS[name]:
            assert not AVX512.search(code), f"{name} holds AVX-512 instructions"


SAPPHIRE_RAPIDS = frozenset(
    VARIANTS["zen4"] + ("avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "avx512_fp16")
)


def test_the_choice_follows_what_the_os_enabled() -> None:
    everything = list(VARIANTS)
    assert choose_variant(everything, SAPPHIRE_RAPIDS) == "zen4"  # never AMX
    assert choose_variant(everything, frozenset(VARIANTS["haswell"])) == "haswell"
    # AVX-512 in the chip but not enabled by the OS: /proc/cpuinfo drops its flags.
    no_avx512 = frozenset(f for f in SAPPHIRE_RAPIDS if not f.startswith("avx512"))
    assert choose_variant(everything, no_avx512) == "alderlake"
    assert choose_variant(["haswell"], frozenset({"sse4_2", "avx"})) is None
    assert choose_variant(["haswell", "x64"], frozenset({"sse4_2", "avx"})) == "x64"


def test_cpuinfo_is_read() -> None:
    cpu = read_cpu("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 fma\n")
    assert cpu.model == "Some CPU"
    assert cpu.flags == {"fpu", "avx2", "fma"}
    assert cpu.cores >= 1


@pytest.fixture
def dies_of_sigill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child that tries the LLM is killed by an illegal instruction."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nkill -{signal.SIGILL.name.removeprefix('SIG')} $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))


@pytest.mark.usefixtures("dies_of_sigill")
def test_a_cpu_the_build_cannot_run_on_gets_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"cannot run on this CPU .*portable build"):
        check_runs(tmp_path / "model.gguf")


@pytest.mark.usefixtures("dies_of_sigill")
def test_models_check_says_it_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "check"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot run on this CPU" in error, error


@pytest.mark.usefixtures("dies_of_sigill")
def test_serve_says_it_in_one_line_instead_of_crashing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "configure", lambda *args: None)  # leave pytest's logging be
    assert cli.main(["serve", "--port", "0", "--log-level", "error"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "cannot run on this CPU" in error, error
