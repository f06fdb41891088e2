"""The audio store contract, run on FileAudioStore and on S3AudioStore over HTTP against
moto's S3 server; what each keeps beside it; choosing one; a server recording into S3."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import os
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from sonicgate.config import Settings
from sonicgate.store import make_audio_store, parse_audio_store
from sonicgate.store.audio import AudioStore, FileAudioStore
from sonicgate.store.s3 import S3AudioStore
from tests.conftest import Connect, ServerFactory, free_port
from tests.scripted_engine import ScriptedEngine

PREFIX = "recordings"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free local port: the store talks real S3 HTTP to it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass
class Bucket:
    endpoint: str
    name: str
    client: Any  # boto3's S3 client, to look at the bucket from outside the store

    def object_keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def read(self, key: str) -> bytes:
        data: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return data


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A new bucket; moto takes any credentials, the standard chain finds these."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = f"audio-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(s3_endpoint, name, client)


@dataclass
class Backend:
    """An audio store, and a look at what it holds from outside it."""

    store: AudioStore
    read: Callable[[str], bytes]  # a recording's bytes by its key
    stored: Callable[[], list[str]]  # everything held, relative to the store's root


@pytest.fixture(params=["file", "s3"])
def audio(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        root = tmp_path / "audio"
        return Backend(
            FileAudioStore(root),
            lambda key: (root / key).read_bytes(),
            # From root's parent, so a file written outside root would show too.
            lambda: sorted(
                os.path.relpath(path, root) for path in tmp_path.rglob("*") if path.is_file()
            ),
        )
    s3: Bucket = request.getfixturevalue("bucket")
    return Backend(
        S3AudioStore(s3.name, PREFIX, endpoint_url=s3.endpoint),
        lambda key: s3.read(f"{PREFIX}/{key}"),
        lambda: [key.removeprefix(f"{PREFIX}/") for key in s3.object_keys()],
    )


def test_file_audio_store_satisfies_the_protocol(tmp_path: Path) -> None:
    typed: AudioStore = FileAudioStore(tmp_path)
    assert typed is not None


async def test_save_writes_the_documented_layout(audio: Backend) -> None:
    key = await audio.store.save("s1", 3, "user", b"RIFF-user")
    assert key == "s1/00003-user.wav"
    assert audio.read(key) == b"RIFF-user"
    # Only the recording is left: no temp file beside it.
    assert audio.stored() == [key]


async def test_save_replaces_an_existing_turn(audio: Backend) -> None:
    await audio.store.save("s1", 1, "assistant", b"old")
    key = await audio.store.save("s1", 1, "assistant", b"new")
    assert audio.read(key) == b"new"
    assert audio.stored() == [key]


async def test_list_keys_is_per_session_and_sorted(audio: Backend) -> None:
    await audio.store.save("s1", 2, "user", b"c")
    await audio.store.save("s1", 1, "assistant", b"b")
    await audio.store.save("s1", 1, "user", b"a")
    await audio.store.save("s2", 1, "user", b"x")
    assert await audio.store.list_keys("s1") == [
        "s1/00001-assistant.wav",
        "s1/00001-user.wav",
        "s1/00002-user.wav",
    ]
    assert await audio.store.list_keys("nobody") == []


async def test_delete_older_than_removes_only_old_audio(audio: Backend) -> None:
    await audio.store.save("old", 1, "user", b"a")
    await audio.store.save("mixed", 1, "assistant", b"b")
    # S3 keeps LastModified to the second: a cutoff on a whole second, passed before
    # the last save, parts old from new on either store.
    cutoff = math.floor(time.time()) + 1
    await asyncio.sleep(cutoff - time.time() + 0.01)
    await audio.store.save("mixed", 2, "user", b"c")

    assert await audio.store.delete_older_than(cutoff) == 2
    assert await audio.store.list_keys("old") == []
    assert await audio.store.list_keys("mixed") == ["mixed/00002-user.wav"]
    assert audio.stored() == ["mixed/00002-user.wav"]
    assert await audio.store.delete_older_than(cutoff) == 0


async def test_delete_on_an_empty_store_deletes_nothing(audio: Backend) -> None:
    assert await audio.store.delete_older_than(time.time()) == 0


@pytest.mark.parametrize("session_id", ["", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden"])
async def test_unsafe_session_ids_are_refused(audio: Backend, session_id: str) -> None:
    with pytest.raises(ValueError):
        await audio.store.save(session_id, 1, "user", b"x")
    with pytest.raises(ValueError):
        await audio.store.list_keys(session_id)
    assert audio.stored() == []


async def test_unsafe_role_and_negative_turn_are_refused(audio: Backend) -> None:
    with pytest.raises(ValueError):
        await audio.store.save("s1", 1, "../user", b"x")
    with pytest.raises(ValueError):
        await audio.store.save("s1", -1, "user", b"x")
    assert audio.stored() == []


async def test_file_retention_removes_emptied_session_folders(tmp_path: Path) -> None:
    audio = FileAudioStore(tmp_path)
    await audio.save("old", 1, "user", b"a")
    assert await audio.delete_older_than(time.time() + 60) == 1
    assert not (tmp_path / "old").exists()


async def test_s3_leaves_other_objects_in_the_bucket_alone(bucket: Bucket) -> None:
    """A shared bucket: only ``<prefix>/<session>/<name>.wav`` is the store's."""
    others = [f"{PREFIX}/s1/notes.txt", f"{PREFIX}/s1/deeper/00001-user.wav", "s1/00001-user.wav"]
    for key in others:
        bucket.client.put_object(Bucket=bucket.name, Key=key, Body=b"theirs")
    audio = S3AudioStore(bucket.name, f"/{PREFIX}/", endpoint_url=bucket.endpoint)
    await audio.save("s1", 1, "user", b"ours")

    assert await audio.list_keys("s1") == ["s1/00001-user.wav"]
    assert await audio.delete_older_than(time.time() + 60) == 1
    assert bucket.object_keys() == sorted(others)


async def test_s3_retention_deletes_past_one_listing_page(bucket: Bucket) -> None:
    """S3 lists and deletes 1000 objects at most per request."""
    audio = S3AudioStore(bucket.name, endpoint_url=bucket.endpoint)
    await asyncio.gather(*(audio.save("s1", turn, "user", b"") for turn in range(1005)))
    assert await audio.delete_older_than(time.time() + 60) == 1005
    assert bucket.object_keys() == []


@pytest.mark.parametrize("url", ["", "File", "s3://", "s3:///prefix", "gs://b", "s3://b?x=1"])
def test_an_unknown_audio_store_names_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"use 'file' .* or s3://BUCKET\[/PREFIX\]"):
        parse_audio_store(url)


def test_the_audio_store_url_picks_the_store(tmp_path: Path, bucket: Bucket) -> None:
    assert isinstance(make_audio_store(Settings(data_dir=tmp_path)), FileAudioStore)
    s3 = Settings(audio_store=f"s3://{bucket.name}/a/b/", s3_endpoint_url=bucket.endpoint)
    audio = make_audio_store(s3)
    assert isinstance(audio, S3AudioStore)
    assert (audio.bucket, audio.prefix) == (bucket.name, "a/b/")


async def test_a_server_records_turns_into_the_bucket(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, bucket: Bucket
) -> None:
    server = await make_server(
        {"scripted": scripted},
        audio_store=f"s3://{bucket.name}/{PREFIX}",
        s3_endpoint_url=bucket.endpoint,
    )
    client = await connect(server.ws())
    session_id = (await client.initialize())["sessionId"]
    second = base64.b64encode(bytes(32_000)).decode()  # 1 s of 16 kHz pcm16
    await client.send({"type": "audio_chunk", "audio": second, "isComplete": True})
    await client.until("text_response")

    recording = bucket.read(f"{PREFIX}/{session_id}/00001-user.wav")
    with wave.open(io.BytesIO(recording)) as wav:
        assert (wav.getframerate(), wav.getnframes()) == (16_000, 16_000)
    assert not (server.settings.audio_dir / session_id).exists()
