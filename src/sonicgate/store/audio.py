"""Where the audio of each turn is kept, as WAV files."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

# The characters the session manager accepts in a session id, none of them a
# path separator; the leading alphanumeric rules out "." and "..".
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class AudioStore(Protocol):
    async def save(self, session_id: str, turn: int, role: str, wav: bytes) -> str:
        """Keep one turn's audio; returns its key."""
        ...

    async def delete_older_than(self, cutoff_epoch_seconds: float) -> int:
        """Delete audio saved before the cutoff; returns how many files went."""
        ...

    async def list_keys(self, session_id: str) -> list[str]: ...


def _check_component(kind: str, value: str) -> str:
    if not _SAFE_COMPONENT.match(value):
        raise ValueError(f"unsafe {kind} for a file name: {value!r}")
    return value


def check_session_id(session_id: str) -> str:
    return _check_component("session id", session_id)


def audio_key(session_id: str, turn: int, role: str) -> str:
    """``<session_id>/<turn:05d>-<role>.wav``, the key layout every audio store uses."""
    check_session_id(session_id)
    _check_component("role", role)
    if turn < 0:
        raise ValueError(f"turn must not be negative: {turn}")
    return f"{session_id}/{turn:05d}-{role}.wav"


class FileAudioStore:
    """Files at ``root/<session_id>/<turn:05d>-<role>.wav``; keys are paths under root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def save(self, session_id: str, turn: int, role: str, wav: bytes) -> str:
        key = audio_key(session_id, turn, role)
        await asyncio.to_thread(self._write, self.root / key, wav)
        return key

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Write a hidden temp file beside the target and rename it over, so
        # readers see the whole file or none of it.
        while True:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
                break
            except FileNotFoundError:
                continue  # a cleanup removed the empty directory in between
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    async def delete_older_than(self, cutoff_epoch_seconds: float) -> int:
        return await asyncio.to_thread(self._delete_older_than, cutoff_epoch_seconds)

    def _delete_older_than(self, cutoff: float) -> int:
        deleted = 0
        for path in self.root.glob("*/*.wav"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    deleted += 1
            except FileNotFoundError:
                continue  # removed meanwhile by someone else
        for directory in self.root.glob("*/"):
            try:
                directory.rmdir()  # only succeeds once the session has no files left
            except OSError:
                continue
        return deleted

    async def list_keys(self, session_id: str) -> list[str]:
        check_session_id(session_id)
        return await asyncio.to_thread(self._list_keys, session_id)

    def _list_keys(self, session_id: str) -> list[str]:
        return sorted(
            f"{session_id}/{path.name}" for path in (self.root / session_id).glob("*.wav")
        )
