"""The command line refuses bad values as it parses, before any model loads."""

from __future__ import annotations

import pytest

from sonicgate.cli import build_parser


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
