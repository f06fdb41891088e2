"""bench.stt_window's word errors: what its figures count."""

from __future__ import annotations

import pytest

from bench.stt_window import errors


@pytest.mark.parametrize(
    ("said", "heard", "count"),
    [
        ("What is two plus two?", "What is 2 plus 2?", 0),  # digits are words
        ("What is your favourite colour?", "What is your favorite color?", 0),
        ("How do plants make food?", "How do plans make food?", 1),  # substituted
        ("Sure, go ahead.", "Go ahead.", 1),  # dropped
        ("Tell me a joke.", "Tell me a joke. Tell me", 2),  # added
        ("Name a famous painter.", "", 4),
    ],
)
def test_word_errors_count_substitutions_drops_and_additions(
    said: str, heard: str, count: int
) -> None:
    assert errors(said, heard) == count
