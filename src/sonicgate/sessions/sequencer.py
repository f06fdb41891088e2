"""Puts numbered audio chunks back in order within a small window.

Late or repeated chunks are dropped and reported; a gap that the window cannot
close is reported and skipped so audio keeps flowing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sonicgate.domain import ErrorCode


@dataclass(frozen=True, slots=True)
class Notice:
    code: ErrorCode  # DUPLICATE_CHUNK or SEQUENCE_GAP
    message: str


class Sequencer[T]:
    def __init__(self, window: int = 8, next_expected: int | None = None) -> None:
        self.window = window
        self.next_expected = next_expected
        self._pending: dict[int, T] = {}

    @property
    def last_released(self) -> int | None:
        return None if self.next_expected is None else self.next_expected - 1

    def accept(self, sequence: int | None, item: T) -> tuple[list[T], list[Notice]]:
        """Returns the items now in order, and what went wrong."""
        if sequence is None:
            return [item], []
        if self.next_expected is None:
            # Clients count from 0 or 1; a later first number means earlier ones are late.
            self.next_expected = min(sequence, 1)
        if sequence < self.next_expected or sequence in self._pending:
            return [], [Notice(ErrorCode.DUPLICATE_CHUNK, f"chunk {sequence} was already received")]
        self._pending[sequence] = item
        released = self._release()
        notices: list[Notice] = []
        if len(self._pending) > self.window:
            notices.append(self._skip_gap())
            released += self._release()
        return released, notices

    def drain(self) -> tuple[list[T], list[Notice]]:
        """Everything still held, in order (at the end of a turn or session)."""
        released: list[T] = []
        notices: list[Notice] = []
        while self._pending:
            notices.append(self._skip_gap())
            released += self._release()
        return released, notices

    def _release(self) -> list[T]:
        released: list[T] = []
        assert self.next_expected is not None
        while self.next_expected in self._pending:
            released.append(self._pending.pop(self.next_expected))
            self.next_expected += 1
        return released

    def _skip_gap(self) -> Notice:
        assert self.next_expected is not None
        first_held = min(self._pending)
        missing = (
            f"{self.next_expected}"
            if first_held - 1 == self.next_expected
            else f"{self.next_expected}-{first_held - 1}"
        )
        self.next_expected = first_held
        return Notice(
            ErrorCode.SEQUENCE_GAP, f"chunks {missing} never arrived; continuing without them"
        )
