"""Cutting streamed reply text into speakable pieces."""

from __future__ import annotations

from sonicgate.engines.local.text import SentenceSplitter


def split(*deltas: str) -> list[str]:
    splitter = SentenceSplitter()
    pieces = [piece for delta in deltas for piece in splitter.push(delta)]
    return pieces + splitter.flush()


def test_sentences_come_out_as_soon_as_they_end() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("The capital") == []
    assert splitter.push(" of France is Paris.") == ["The capital of France is Paris."]
    assert splitter.push(" It is lovely") == []
    assert splitter.flush() == ["It is lovely"]


def test_numbers_and_abbreviations_do_not_end_sentences() -> None:
    assert split("Hello there. It costs 3.", "5 euros today. Mr.", " Smith agrees!") == [
        "Hello there.",
        "It costs 3.5 euros today.",
        "Mr. Smith agrees!",
    ]


def test_the_first_piece_is_cut_early_later_ones_at_clauses() -> None:
    text = "The moon is a beautiful celestial body with a radius, as you know, of many miles."
    pieces = split(*(word + " " for word in text.split()))
    assert pieces[0] == "The moon is a beautiful celestial body"
    assert pieces[1:] == ["with a radius, as you know,", "of many miles."]


def test_markdown_is_not_read_aloud() -> None:
    assert split("**Paris** is the `capital`.") == ["Paris is the capital."]
