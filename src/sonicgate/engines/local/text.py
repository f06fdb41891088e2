"""Cuts streamed LLM text into speakable pieces as early as sense allows."""

from __future__ import annotations

import re

# A sentence ends at . ! ? followed by whitespace or the end of what has
# streamed so far (the model often stops right after its last "."), unless the
# word is a short abbreviation (Mr., e.g.) or the dot may be part of a number.
SENTENCE_END = re.compile(
    r"(?<!\b[A-Z][a-z])(?<!\be\.g)(?<!\bi\.e)(?:[!?]+|(?<!\d)\.+)[\"')\]]*(?:\s|$)"
)
CLAUSE_END = re.compile(r"[,;:]\s")
MIN_CLAUSE_WORDS = 4
# The first piece decides when audio starts: cut it sooner, at a short clause
# or, failing punctuation, after a few words.
FIRST_CLAUSE_WORDS = 2
FIRST_PIECE_WORDS = 7
MARKUP = re.compile(r"[*#`_]+")


class SentenceSplitter:
    def __init__(self) -> None:
        self._pending = ""
        self._first = True

    def push(self, delta: str) -> list[str]:
        self._pending += MARKUP.sub("", delta)
        pieces: list[str] = []
        while True:
            match = SENTENCE_END.search(self._pending)
            clause_words = FIRST_CLAUSE_WORDS if self._first else MIN_CLAUSE_WORDS
            clause = next(
                (
                    found
                    for found in CLAUSE_END.finditer(self._pending)
                    if len(self._pending[: found.end()].split()) >= clause_words
                ),
                None,
            )
            if clause and (not match or clause.start() < match.start()):
                match = clause
            if match is None and self._first:
                match = _after_words(self._pending, FIRST_PIECE_WORDS)
            if match is None:
                return pieces
            self._first = False
            piece, self._pending = self._pending[: match.end()], self._pending[match.end() :]
            if piece.strip():
                pieces.append(piece.strip())

    def flush(self) -> list[str]:
        piece, self._pending = self._pending.strip(), ""
        return [piece] if piece else []


def _after_words(text: str, count: int) -> re.Match[str] | None:
    """The whitespace after the ``count``-th complete word, if there is one."""
    return re.match(rf"\s*(?:\S+\s+){{{count}}}", text)
