"""Cuts streamed LLM text into speakable pieces as early as sense allows."""

from __future__ import annotations

import re

# A sentence ends at . ! ? followed by whitespace, unless the word is a short
# abbreviation (e.g., Mr., Dr.) or the dot is inside a number (3.5).
SENTENCE_END = re.compile(r"(?<!\b[A-Z][a-z])(?<!\be\.g)(?<!\bi\.e)[.!?]+[\"')\]]*\s")
CLAUSE_END = re.compile(r"[,;:]\s")
MIN_CLAUSE_WORDS = 4
MARKUP = re.compile(r"[*#`_]+")


class SentenceSplitter:
    def __init__(self) -> None:
        self._pending = ""

    def push(self, delta: str) -> list[str]:
        self._pending += MARKUP.sub("", delta)
        pieces: list[str] = []
        while True:
            match = SENTENCE_END.search(self._pending)
            clause = CLAUSE_END.search(self._pending)
            if (
                clause
                and (not match or clause.start() < match.start())
                and len(self._pending[: clause.end()].split()) >= MIN_CLAUSE_WORDS
            ):
                match = clause
            if match is None:
                return pieces
            piece, self._pending = self._pending[: match.end()], self._pending[match.end() :]
            if piece.strip():
                pieces.append(piece.strip())

    def flush(self) -> list[str]:
        piece, self._pending = self._pending.strip(), ""
        return [piece] if piece else []
