"""Cuts streamed LLM text into speakable pieces as early as sense allows."""

from __future__ import annotations

import re

# . ! ? (maybe closing quotes or brackets) then whitespace, or the end of what
# has streamed so far (the model often stops right after its last ".").
# ``_ends_sentence`` then rules out abbreviations and numbers.
SENTENCE_END = re.compile(r"(?P<word>\S*?)(?P<stop>[.!?]+)[\"')\]]*(?P<space>\s|$)")
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "e.g", "i.e"})
CLAUSE_END = re.compile(r"[,;:]\s")
MIN_CLAUSE_WORDS = 4
# The first piece decides when audio starts: cut it sooner, at a short clause
# or, failing punctuation, after a few words.
FIRST_CLAUSE_WORDS = 2
FIRST_PIECE_WORDS = 7
MARKUP = re.compile(r"[*#`_]+")
# Where those symbols are words: "C#" (a capital letter's sharp), and a lone star after
# a number ("5 * 3"); bold after a number ("**Step 1**") has no space before its stars.
SPOKEN_SYMBOLS = (
    (re.compile(r"(?<=\b[A-Z])#"), " sharp"),
    (re.compile(r"(?<=\d) \*(?!\*)"), " times"),
)
CODE_FENCE = "```"


def before_code(so_far: str, delta: str) -> tuple[str, bool]:
    """The part of ``delta`` before a code block opens, and whether one did.

    Code is not speakable: a voice reply ends where a fence opens.
    """
    fence = (so_far + delta).find(CODE_FENCE)
    if fence < 0:
        return delta, False
    return delta[: max(fence - len(so_far), 0)], True


class SentenceSplitter:
    def __init__(self) -> None:
        self._pending = ""
        self._first = True

    def push(self, delta: str) -> list[str]:
        self._pending += _speakable(self._pending[-1:], delta)
        pieces: list[str] = []
        while True:
            match = _sentence_end(self._pending)
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


def _sentence_end(text: str) -> re.Match[str] | None:
    return next((m for m in SENTENCE_END.finditer(text) if _ends_sentence(text, m)), None)


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    if match["stop"] != ".":
        return True  # ! ? and an ellipsis always end a piece
    word = match["word"].lstrip("\"'([").lower()
    if word in ABBREVIATIONS:
        return False  # "Mr. Smith", "e.g. this"
    if word[-1:].isdigit():
        if not match["space"]:
            return False  # "3." may yet become "3.5"
        line_start = text.rfind("\n", 0, match.start()) + 1
        return bool(text[line_start : match.start()].strip())  # "1." opening a list item
    return True


def _after_words(text: str, count: int) -> re.Match[str] | None:
    """The whitespace after the ``count``-th complete word, if there is one."""
    return re.match(rf"\s*(?:\S+\s+){{{count}}}", text)


def _speakable(before: str, delta: str) -> str:
    """``delta`` without markdown's symbols, but with those that are words said; the
    character ``before`` it (already cleaned) is the context a token split leaves."""
    text = before + delta
    for symbol, word in SPOKEN_SYMBOLS:
        text = symbol.sub(word, text)
    return MARKUP.sub("", text)[len(before) :]
