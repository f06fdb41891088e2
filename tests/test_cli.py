"""The command line refuses bad values as it parses, before any model loads."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sonicgate.cli import build_parser
from sonicgate.config import default_data_dir
from sonicgate.engines.local import LocalModels


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--store", "mysql://db", "unsupported store: use 'sqlite'"),
        ("--store", "sqlite:///", "unsupported store"),
        ("--store", "postgresq://u:hunter2@h/db", "unsupported store"),
        ("--bus", "rediss:/u:hunter2@h", "unsupported bus URL"),
        ("--bus", "kafka://broker", "redis://"),
        ("--audio-store", "gs://bucket", "s3://BUCKET"),
        ("--node-id", "two words", "node id"),
    ],
)
def test_bad_serve_values_are_refused_with_the_accepted_forms(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", flag, value])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert says in error
    assert "hunter2" not in error  # a URL's password is never echoed


@pytest.mark.parametrize(
    "value", ["sqlite", "sqlite:///tmp/s.db", "postgresql://u@h:5432/db", "postgres://h/db"]
)
def test_store_forms_are_accepted(value: str) -> None:
    assert build_parser().parse_args(["serve", "--store", value]).store == value


def test_serve_help_names_every_store_form(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "sqlite:///PATH" in help_text and "postgresql://" in help_text


@pytest.mark.models
def test_ctrl_c_stops_the_server_gracefully_and_without_a_traceback(
    local_models: LocalModels, tmp_path: Path
) -> None:
    (tmp_path / "models").symlink_to(default_data_dir() / "models")
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "sonicgate", "serve", "--port", "0"]
    with log.open("w") as output:
        server = subprocess.Popen([*command, "--data-dir", str(tmp_path)], stderr=output)
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 128 + signal.SIGINT
    finally:
        server.kill()
    said = log.read_text()
    assert "Application shutdown complete" in said and "Traceback" not in said, said
