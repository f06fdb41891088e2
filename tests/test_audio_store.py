"""FileAudioStore: layout, atomic writes, listing, retention and unsafe ids."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sonicgate.store.audio import AudioStore, FileAudioStore


def test_file_audio_store_satisfies_the_protocol(tmp_path: Path) -> None:
    typed: AudioStore = FileAudioStore(tmp_path)
    assert typed is not None


async def test_save_writes_the_documented_layout(tmp_path: Path) -> None:
    audio = FileAudioStore(tmp_path / "audio")
    key = await audio.save("s1", 3, "user", b"RIFF-user")
    assert key == "s1/00003-user.wav"
    assert (tmp_path / "audio" / "s1" / "00003-user.wav").read_bytes() == b"RIFF-user"
    # Only the final file is left: the temp file was renamed over it.
    assert os.listdir(tmp_path / "audio" / "s1") == ["00003-user.wav"]


async def test_save_replaces_an_existing_turn(tmp_path: Path) -> None:
    audio = FileAudioStore(tmp_path)
    await audio.save("s1", 1, "assistant", b"old")
    key = await audio.save("s1", 1, "assistant", b"new")
    assert (tmp_path / key).read_bytes() == b"new"


async def test_list_keys_is_per_session_and_sorted(tmp_path: Path) -> None:
    audio = FileAudioStore(tmp_path)
    await audio.save("s1", 2, "user", b"c")
    await audio.save("s1", 1, "assistant", b"b")
    await audio.save("s1", 1, "user", b"a")
    await audio.save("s2", 1, "user", b"x")
    assert await audio.list_keys("s1") == [
        "s1/00001-assistant.wav",
        "s1/00001-user.wav",
        "s1/00002-user.wav",
    ]
    assert await audio.list_keys("nobody") == []


async def test_delete_older_than_removes_only_old_files(tmp_path: Path) -> None:
    audio = FileAudioStore(tmp_path)
    old = await audio.save("old", 1, "user", b"a")
    old_reply = await audio.save("mixed", 1, "assistant", b"b")
    await audio.save("mixed", 2, "user", b"c")
    long_ago = time.time() - 3600
    for key in (old, old_reply):
        os.utime(tmp_path / key, (long_ago, long_ago))

    assert await audio.delete_older_than(time.time() - 60) == 2
    assert await audio.list_keys("old") == []
    assert await audio.list_keys("mixed") == ["mixed/00002-user.wav"]
    assert not (tmp_path / "old").exists()  # emptied session folders go too
    assert await audio.delete_older_than(time.time() - 60) == 0


async def test_delete_on_a_missing_root_deletes_nothing(tmp_path: Path) -> None:
    assert await FileAudioStore(tmp_path / "absent").delete_older_than(time.time()) == 0


@pytest.mark.parametrize("session_id", ["", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden"])
async def test_unsafe_session_ids_are_refused(tmp_path: Path, session_id: str) -> None:
    audio = FileAudioStore(tmp_path / "audio")
    with pytest.raises(ValueError):
        await audio.save(session_id, 1, "user", b"x")
    with pytest.raises(ValueError):
        await audio.list_keys(session_id)
    assert not (tmp_path / "audio").exists()


async def test_unsafe_role_and_negative_turn_are_refused(tmp_path: Path) -> None:
    audio = FileAudioStore(tmp_path)
    with pytest.raises(ValueError):
        await audio.save("s1", 1, "../user", b"x")
    with pytest.raises(ValueError):
        await audio.save("s1", -1, "user", b"x")
