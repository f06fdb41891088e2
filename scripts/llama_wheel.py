"""Build llama-cpp-python once, portably, into sonicgate's own wheel cache; print the wheel.

llama-cpp-python ships only an sdist, and llama.cpp compiles for the building CPU
by default (-march=native): such a wheel dies with SIGILL on another CPU, or on an
Intel CPU whose AMX the OS has not enabled. pip's own wheel cache does not key on
CMAKE_ARGS, so a native wheel once cached comes back. Hence this build:

- every x86 CPU variant of ggml's kernels (GGML_CPU_ALL_VARIANTS), each a module that
  sonicgate loads by what the CPU and OS at hand offer (engines/local/cpu.py);
- the AMX variant left out: AMX needs the OS's per-process permission, and the other
  variants are as fast at decoding;
- built with pip's cache off, kept in a directory keyed by version, flags and
  compiler, and installed from there only (setup.sh: --only-binary).

SONICGATE_LLAMA_CMAKE_ARGS replaces the flags (a native build for this machine alone:
see the README). Usage: python scripts/llama_wheel.py VERSION
"""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PORTABLE_FLAGS = (
    "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON "
    # The variant modules go beside libggml in the package (a STRING: CMake would
    # turn a relative PATH into the build tree's absolute one).
    "-DCMAKE_INSTALL_BINDIR:STRING=llama_cpp/lib "
    # Vision models (mtmd) are not used: six minutes less to build.
    "-DLLAVA_BUILD=OFF"
)
# Never shipped: tile instructions fault unless the process asked the OS for them.
LEFT_OUT = ("libggml-cpu-sapphirerapids.so",)


def cache_dir(version: str, flags: str) -> Path:
    compiler = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(f"{version}\n{flags}\n{compiler}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sonicgate" / "llama-cpp-python" / f"{version}-{key}"


def build(version: str, flags: str, target: Path) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        env = os.environ | {"CMAKE_ARGS": flags, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count())}
        command = [
            sys.executable, "-m", "pip", "wheel", "--verbose", "--no-cache-dir", "--no-deps",
            "--no-binary", "llama-cpp-python", "--wheel-dir", scratch,
            f"llama-cpp-python=={version}",
        ]  # fmt: skip
        compile_with_progress(command, env)
        (built,) = Path(scratch).glob("*.whl")
        target.mkdir(parents=True, exist_ok=True)
        wheel = target / built.name
        without(built, wheel, LEFT_OUT)
    return wheel


def compile_with_progress(command: list[str], env: dict[str, str]) -> None:
    """Run the build showing only ninja's step counter (every tenth in a log, not a
    terminal); the output's tail if it fails."""
    tail: collections.deque[str] = collections.deque(maxlen=60)
    redraw, shown = sys.stderr.isatty(), -1
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as build:
        assert build.stdout is not None
        for line in build.stdout:
            tail.append(line)
            if not (step := re.match(r"\s*\[(\d+)/(\d+)\]", line)):
                continue
            done, total = int(step[1]), int(step[2])
            if redraw:
                sys.stderr.write(f"\rcompiling llama.cpp: {done}/{total}")
            elif done * 10 // total > shown:
                shown = done * 10 // total
                sys.stderr.write(f"compiling llama.cpp: {done}/{total}\n")
            sys.stderr.flush()
    if redraw:
        sys.stderr.write("\n")
    if build.returncode != 0:
        sys.stderr.writelines(tail)
        sys.exit(f"error: building llama-cpp-python failed (exit status {build.returncode})")


def without(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy a wheel leaving out files by name, its RECORD rewritten to match."""
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as new:
        kept = [item for item in old.infolist() if Path(item.filename).name not in names]
        record = next(item for item in kept if item.filename.endswith(".dist-info/RECORD"))
        lines = []
        for item in kept:
            if item is record:
                continue
            data = old.read(item)
            new.writestr(item, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            lines.append(f"{item.filename},sha256={digest.decode()},{len(data)}")
        lines.append(f"{record.filename},,")
        new.writestr(record, "\n".join(lines) + "\n")
    partial.replace(target)


def main() -> int:
    (version,) = sys.argv[1:]
    flags = os.environ.get("SONICGATE_LLAMA_CMAKE_ARGS") or PORTABLE_FLAGS
    directory = cache_dir(version, flags)
    wheels = sorted(directory.glob("*.whl"))
    if not wheels:
        print(
            f"building llama-cpp-python {version} (about 9 minutes on 2 cores, once; "
            f"kept in {directory})",
            file=sys.stderr,
        )
        shutil.rmtree(directory, ignore_errors=True)
        wheels = [build(version, flags, directory)]
    print(wheels[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
