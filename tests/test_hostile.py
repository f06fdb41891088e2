"""A hostile client, authenticated, against a real `sonicgate serve` in a process of its
own: every way it once reached another user's session or the server's memory is
answered with an error in its dialect, and the server's peak RSS growth under each
attack is measured (``/proc/PID/clear_refs`` resets the peak) and held to 100 MB.

The figures land in tests/artifacts/hostile_rss.json.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import av
import httpx
import jwt
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sonicgate.config import default_data_dir
from tests.conftest import Client, ServerFactory
from tests.scripted_engine import ScriptedEngine

SECRET = "the-hostile-suite-secret-32-bytes-long!"
ISSUER = "sonicgate-tests"
OPERATOR_KEY = "operator-key-for-the-hostile-suite"
MAX_GROWTH_MB = 100
IDLE_SECONDS = 6
MAX_CONNECTIONS = 40
TURN_LIMIT_SECONDS = 90  # over a minute: the limit once never fired on streamed audio
ARTIFACT = Path(__file__).parent / "artifacts" / "hostile_rss.json"


def token(subject: str, **claims: Any) -> str:
    payload = {"sub": subject, "exp": time.time() + 3600, "iss": ISSUER, **claims}
    return jwt.encode(payload, SECRET, "HS256")


ALICE, BOB, OPERATOR = token("alice"), token("bob"), token("ops", role="operator")


def _kib(pid: int, field_name: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found[1])


@dataclass
class Gateway:
    """The server under attack."""

    pid: int
    port: int
    log: Path
    data: Path
    growth: dict[str, float] = field(default_factory=dict)

    def url(self, path: str, scheme: str = "ws", **params: str) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"{scheme}://127.0.0.1:{self.port}{path}{query}"

    async def connect(
        self, credential: str = ALICE, path: str = "/api/nova-sonic/stream", **params: str
    ) -> Client:
        url = self.url(path, token=credential, **params)
        return Client(await websockets.connect(url, max_size=2**26, compression=None))

    @contextlib.asynccontextmanager
    async def attack(self, name: str) -> AsyncIterator[None]:
        """Measures the server's peak RSS growth over the block."""
        before = self._reset_peak()
        yield
        await asyncio.sleep(0.3)  # what the attack set off runs out
        grown = (_kib(self.pid, "VmHWM") - before) / 1024
        self.growth[name] = round(grown, 1)
        assert grown <= MAX_GROWTH_MB, f"{name}: the server grew by {grown:.0f} MB"

    def _reset_peak(self) -> int:
        """The peak starts again from now; returns the RSS now, in KiB."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return _kib(self.pid, "VmRSS")

    def kept_turn_audio(self, session_id: str) -> tuple[int, int]:
        """Rows and bytes of turn audio the store keeps for a session."""
        with contextlib.closing(sqlite3.connect(self.data / "sonicgate.db")) as db:
            rows, size = db.execute(
                "SELECT count(*), coalesce(sum(length(pcm)), 0) FROM turn_audio "
                "WHERE sessionId = ?",
                (session_id,),
            ).fetchone()
        return int(rows), int(size)


LISTENING = re.compile(r"running on http://127\.0\.0\.1:(\d+)")


@pytest.fixture(scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    data = tmp_path_factory.mktemp("hostile")
    (data / "models").symlink_to(default_data_dir() / "models")  # joined once, shared
    log = data / "serve.log"
    options = {
        "--engine": "echo",
        "--port": "0",
        "--data-dir": str(data),
        "--jwt-secret": SECRET,
        "--jwt-issuer": ISSUER,
        "--operator-key": OPERATOR_KEY,
        "--max-turn-audio-seconds": str(TURN_LIMIT_SECONDS),
        "--idle-timeout": str(IDLE_SECONDS),
        "--max-connections": str(MAX_CONNECTIONS),
        "--stale-after": "1",
        # The floods must reach the server whole: the limits that would thin them are off.
        "--max-messages-per-second": "0",
        "--max-requests-per-second": "0",
        "--max-sessions-per-client": "0",
    }
    arguments = [item for pair in options.items() for item in pair]
    with log.open("w") as output:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sonicgate", "serve", *arguments, stderr=output
        )
    try:
        async with asyncio.timeout(120):
            while not (
                found := re.search(r"running on http://127\.0\.0\.1:(\d+)", log.read_text())
            ):
                assert server.returncode is None, log.read_text()[-3000:]
                await asyncio.sleep(0.2)
        gateway = Gateway(server.pid, int(found[1]), log, data)
        yield gateway
        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.write_text(json.dumps(gateway.growth, indent=2) + "\n")
    finally:
        if server.returncode is None:
            server.terminate()
        await server.wait()


async def expect(client: Client, code: str) -> dict[str, Any]:
    """The next error (skipping anything else), in whichever dialect."""
    while True:
        message = await client.recv(within=30)
        if message["type"] == "error":
            assert message["code"] == code, message
            return message
        if message["type"] == "voice_error":
            assert message["data"]["code"] == code, message
            return message


async def answers(client: Client) -> None:
    """The connection and its session still serve."""
    await client.send({"type": "text_message", "text": "still there?"})
    reply, _ = await client.final_reply()
    assert reply["text"] == "still there?"


def pcm(seconds: float) -> bytes:
    return bytes(int(seconds * 16_000) * 2)


def chunk(audio: bytes, **fields: Any) -> dict[str, Any]:
    return {"type": "audio_chunk", "audio": base64.b64encode(audio).decode(), **fields}


def encoded(codec: str, container: str, seconds: int, rate: int) -> bytes:
    """Digital silence, encoded: the raw stuff of decompression bombs."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        if codec == "libopus":
            stream.bit_rate = 6000
        second = np.zeros((1, rate), dtype=np.int16)
        for index in range(seconds):
            frame = av.AudioFrame.from_ndarray(second, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, index * rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def riff_around(payload: bytes, format_tag: int) -> bytes:
    """A WAV file whose format tag names another codec (0xF1AC: FLAC)."""
    fmt = struct.pack("<HHIIHH", format_tag, 1, 16_000, 32_000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


# 1. Sessions belong to their owner -----------------------------------------------------


async def test_another_user_cannot_take_over_a_session(gateway: Gateway) -> None:
    alice = await gateway.connect(ALICE)
    session = (await alice.initialize(userId="alice", engine="echo"))["sessionId"]
    await alice.send({"type": "text_message", "text": "my secret code word is pineapple"})
    await alice.final_reply()
    async with gateway.attack("takeover"):
        bob = await gateway.connect(BOB)
        for claim in ({}, {"userId": "alice"}):
            await bob.send({"type": "initialize", "sessionId": session, **claim})
            await expect(bob, "forbidden")
        bob_action = await gateway.connect(BOB)
        await bob_action.send(
            {"action": "voice_session_start", "sessionId": session, "userId": "alice"}
        )
        await expect(bob_action, "forbidden")
        await bob.send({"type": "text_message", "text": "what is the code word?"})
        await expect(bob, "no_session")
    await answers(alice)  # untouched, and not told anything


async def test_taking_over_ones_own_session_tells_the_old_connection(gateway: Gateway) -> None:
    first = await gateway.connect(ALICE)
    session = (await first.initialize(engine="echo"))["sessionId"]
    second = await gateway.connect(ALICE)
    ready = await second.initialize(sessionId=session, engine="echo")
    assert ready["resumed"] is True
    moved = await expect(first, "session_moved")
    assert moved["sessionId"] == session
    await first.send({"type": "text_message", "text": "hello?"})
    await expect(first, "no_session")
    await answers(second)


async def test_cleanup_by_a_user_touches_only_its_own_sessions(gateway: Gateway) -> None:
    alice = await gateway.connect(ALICE)
    session = (await alice.initialize(engine="echo"))["sessionId"]
    await alice.connection.close()  # detached: resumable, and stale after a second
    await asyncio.sleep(1.5)
    async with httpx.AsyncClient() as http:
        url = gateway.url("/api/nova-sonic/cleanup", scheme="http")
        by_bob = (await http.post(url, headers={"Authorization": f"Bearer {BOB}"})).json()
        assert by_bob["deletedAudioFiles"] == 0
        again = await gateway.connect(ALICE)
        await again.initialize(sessionId=session, engine="echo")  # still ACTIVE, hers
        await again.connection.close()
        await asyncio.sleep(1.5)
        by_alice = (await http.post(url, headers={"Authorization": f"Bearer {ALICE}"})).json()
    assert by_alice["endedSessions"] >= 1


# 2. Events are scoped -------------------------------------------------------------------


async def test_events_reach_their_owner_and_operators_only(gateway: Gateway) -> None:
    alice = await gateway.connect(ALICE)
    session = (await alice.initialize(userId="alice", engine="echo"))["sessionId"]
    bob = await gateway.connect(BOB)
    await bob.initialize(userId="bob", engine="echo")
    path = "/api/events"
    snoops = [  # unfiltered, by the victim's label, by the victim's session
        await gateway.connect(BOB, path),
        await gateway.connect(BOB, path, userId="alice"),
        await gateway.connect(BOB, path, sessionId=session),
    ]
    own = await gateway.connect(ALICE, path)
    operator = await gateway.connect(OPERATOR_KEY, path)
    await asyncio.sleep(0.2)  # subscribed
    await alice.send({"type": "text_message", "text": "private words"})
    await alice.final_reply()
    await bob.send({"type": "text_message", "text": "bob's own words"})
    await bob.final_reply()
    for watcher in (own, operator):
        event = await watcher.recv()
        while event["type"] != "voice_transcription_event":
            event = await watcher.recv()
        assert event["data"]["text"] == "private words"
    for snoop in snoops:
        with contextlib.suppress(TimeoutError):
            while True:
                event = await snoop.recv(within=1.0)
                assert event["sessionId"] != session, event
                assert "private" not in json.dumps(event), event


# 3. Decoding is bounded -------------------------------------------------------------------


async def test_a_flac_bomb_is_refused_before_it_decodes(gateway: Gateway) -> None:
    bomb = encoded("flac", "flac", 3600, 16_000)  # an hour of silence: 115 MB as pcm16
    assert len(bomb) < 1_000_000
    client = await gateway.connect()
    await client.send({"action": "voice_session_start", "data": {"engine": "echo"}})
    await client.recv()
    async with gateway.attack("flac_voice_data"):
        audio = base64.b64encode(bomb).decode()
        await client.send({"action": "voice_data", "data": {"audioData": audio}})
        refusal = await expect(client, "audio_format")
    assert "flac" in refusal["data"]["message"]


async def test_flac_dressed_as_wav_is_refused(gateway: Gateway) -> None:
    bomb = riff_around(encoded("flac", "flac", 3600, 16_000), 0xF1AC)
    client = await gateway.connect()
    await client.initialize(engine="echo", audioFormat="wav")
    async with gateway.attack("flac_in_wav_chunk"):
        await client.send(chunk(bomb))
        await expect(client, "audio_format")
    await answers(client)


async def test_an_allowed_codec_cannot_expand_past_its_ratio(gateway: Gateway) -> None:
    # 80 s of 6 kb/s silence, under the turn's limit: only its expansion gives it away.
    quiet = encoded("libopus", "ogg", 80, 48_000)
    client = await gateway.connect()
    await client.send({"action": "voice_session_start", "data": {"engine": "echo"}})
    await client.recv()
    async with gateway.attack("opus_voice_data"):
        audio = base64.b64encode(quiet).decode()
        await client.send({"action": "voice_data", "data": {"audioData": audio}})
        await expect(client, "audio_format")


# 4. Every buffer has a byte bound ----------------------------------------------------------


async def test_a_client_that_never_reads_is_cut_off_by_bytes(gateway: Gateway) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", gateway.port))
    url = gateway.url("/api/nova-sonic/stream", token=ALICE)
    big = chunk(pcm(190))  # about 6 MB a message, echoed back whole
    stalls = websockets.connect(url, sock=sock, max_queue=1, max_size=2**26, compression=None)
    async with gateway.attack("never_reads"), stalls as stalled:
        await stalled.send(json.dumps({"type": "initialize", "engine": "echo"}))
        with pytest.raises(ConnectionClosed) as closed:
            text = json.dumps(big)
            for _ in range(150):
                await stalled.send(text)
            while True:
                await asyncio.wait_for(stalled.recv(), 30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_the_action_dialect_on_echo_replies_and_keeps_little(gateway: Gateway) -> None:
    client = await gateway.connect()
    await client.send(
        {"action": "voice_session_start", "data": {"engine": "echo", "audioFormat": "pcm16"}}
    )
    await client.recv()
    audio = base64.b64encode(pcm(32)).decode()  # a MiB a message
    async with gateway.attack("action_echo_flood"):
        for sequence in range(200):
            data = {"audioData": audio, "sequenceNumber": sequence}
            await client.send({"action": "voice_chunk", "data": data})
        last = {"audioData": "", "sequenceNumber": 200, "isFinal": True}
        await client.send({"action": "voice_chunk", "data": last})
        reply, _ = await client.until("voice_response_triggered", within=120)
    assert reply["data"]["audioResponse"].startswith("data:audio/mp3;base64,")


async def test_audio_kept_for_a_resume_is_bounded_and_cleared(gateway: Gateway) -> None:
    client = await gateway.connect()
    session = (await client.initialize(engine="echo"))["sessionId"]
    async with gateway.attack("numbered_silence"):
        for sequence in range(470):  # two minutes of 256 ms chunks
            await client.send(chunk(pcm(0.256), sequenceNumber=sequence))
        await client.send(chunk(b"", sequenceNumber=470, isComplete=True))
        await client.until("transcription")  # echo ends the turn: nothing heard in words
    await asyncio.sleep(0.3)
    assert gateway.kept_turn_audio(session) == (0, 0)  # the turn ended: nothing kept

    for sequence in range(471, 941):  # again, and then the client leaves mid-turn
        await client.send(chunk(pcm(0.256), sequenceNumber=sequence))
    await client.recv()  # an echoed chunk: the server has them
    rows, size = gateway.kept_turn_audio(session)
    assert 0 < size <= 60 * 32_000, (rows, size)  # a minute at most
    await client.connection.close()
    await asyncio.sleep(1.5)  # stale
    async with httpx.AsyncClient() as http:
        url = gateway.url("/api/nova-sonic/cleanup", scheme="http")
        await http.post(url, headers={"Authorization": f"Bearer {ALICE}"})
    assert gateway.kept_turn_audio(session) == (0, 0)


async def test_a_turn_limit_over_a_minute_holds_on_streamed_audio(gateway: Gateway) -> None:
    client = await gateway.connect()
    await client.initialize(engine="echo", textOnly=True)
    for _ in range(TURN_LIMIT_SECONDS + 5):
        await client.send(chunk(pcm(1.0)))
    await expect(client, "turn_too_long")


async def test_a_message_far_past_the_size_limit_is_never_buffered(gateway: Gateway) -> None:
    client = await gateway.connect()
    await client.initialize(engine="echo")
    await client.send({"type": "audio_chunk", "audio": "A" * 8 * 1024 * 1024})  # just over
    await expect(client, "frame_too_large")
    async with gateway.attack("oversize_message"):
        with pytest.raises(ConnectionClosed) as closed:
            await client.send("x" * (64 * 1024 * 1024))
            await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# 5. No input kills a connection or an engine ----------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        '{"type": "audio_chunk", "audio": "", "n": 1' + "0" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
        '{"type": "text_message", "text": "\\udc00"}',
        '{"type": "initialize", "userId": "\\udc00"}',
        '{"type": "initialize", "language": "en-\\udc00"}',
        '{"type": "audio_chunk", "audio": "", "sequenceNumber": 9223372036854775808}',
        '{"type": "initialize", "sessionId": "abc\\n"}',
    ],
    ids=[
        "huge_number",
        "deep_nesting",
        "surrogate_text",
        "surrogate_user",
        "surrogate_language",
        "sequence_2_63",
        "session_id_newline",
    ],
)
async def test_inputs_that_once_dropped_the_connection(gateway: Gateway, message: str) -> None:
    client = await gateway.connect()
    await client.initialize(engine="echo")
    await client.send(message)
    error = await client.recv()
    assert error["type"] == "error", error
    assert error["code"] in ("malformed_json", "invalid_text", "invalid_field", "session_active")
    await answers(client)


async def test_the_registry_forgets_closed_connections(gateway: Gateway) -> None:
    async def connections() -> int:
        async with httpx.AsyncClient() as http:
            url = gateway.url("/api/nova-sonic/status", scheme="http")
            status = (await http.get(url, headers={"Authorization": f"Bearer {ALICE}"})).json()
        return int(status["activeConnections"])

    before = await connections()
    for message in ('{"type": "text_message", "text": "\\udc00"}', "{not json", "[" * 5000):
        client = await gateway.connect()
        await client.initialize(engine="echo")
        await client.send(message)
        await client.recv()
        await client.connection.close()
    await asyncio.sleep(0.3)
    assert await connections() == before


# 6. Operational hygiene ------------------------------------------------------------------


async def test_tokens_never_reach_the_log(gateway: Gateway) -> None:
    secrets = [f"leak-me-{n}" for n in range(3)]
    async with httpx.AsyncClient() as http:
        await http.get(gateway.url("/", scheme="http", token=secrets[0]))
        await http.get(gateway.url("/missing", scheme="http", token=secrets[1]))
    with pytest.raises(InvalidStatus):
        await gateway.connect(secrets[2])
    await asyncio.sleep(0.3)
    log = gateway.log.read_text()
    assert not any(secret in log for secret in secrets)
    assert ALICE not in log


async def test_refused_handshakes_log_at_info(gateway: Gateway) -> None:
    start = len(gateway.log.read_text())
    for credential in ("wrong", token("bob", exp=time.time() - 10)):
        with pytest.raises(InvalidStatus) as refused:
            await gateway.connect(credential)
        assert refused.value.response.status_code == 401
    await asyncio.sleep(0.3)
    assert " ERROR " not in gateway.log.read_text()[start:]


async def test_tokens_need_exp_and_the_issuer(gateway: Gateway) -> None:
    no_exp = jwt.encode({"sub": "alice", "iss": ISSUER}, SECRET, "HS256")
    elsewhere = token("alice", iss="someone-else")
    for credential, problem in ((no_exp, "exp"), (elsewhere, "issuer")):
        with pytest.raises(InvalidStatus) as refused:
            await gateway.connect(credential)
        body = json.loads(refused.value.response.body or b"{}")
        assert refused.value.response.status_code == 401 and problem in body["error"]


async def test_idle_connections_time_out(gateway: Gateway) -> None:
    client = await gateway.connect()
    await client.initialize(engine="echo")
    started = time.monotonic()
    await expect(client, "idle_timeout")
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv(within=5)
    assert IDLE_SECONDS - 0.5 < time.monotonic() - started < IDLE_SECONDS + 3
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_connections_per_node_are_capped(gateway: Gateway) -> None:
    opened: list[Client] = []
    try:
        with pytest.raises(InvalidStatus) as refused:
            for _ in range(MAX_CONNECTIONS + 1):
                opened.append(await gateway.connect())
        assert refused.value.response.status_code == 503
        assert len(opened) <= MAX_CONNECTIONS
    finally:
        for client in opened:
            await client.connection.close()


async def test_forwarded_for_from_loopback_is_not_believed(
    make_uvicorn: ServerFactory, scripted: ScriptedEngine
) -> None:
    server = await make_uvicorn(  # uvicorn reads the proxy headers
        {"scripted": scripted}, api_keys=("right-key-0123456789",), max_requests_per_second=5
    )
    statuses = []
    async with server.http() as http:
        for n in range(30):  # a fresh address each time, as a rotating attacker claims
            headers = {"X-Forwarded-For": f"10.0.{n}.1", "Authorization": "Bearer wrong"}
            statuses.append((await http.get("/api/nova-sonic/status", headers=headers)).status_code)
    assert 429 in statuses  # every failed attempt counted against the one real address


def test_rss_figures_are_written(gateway: Gateway) -> None:
    assert gateway.growth, "the attacks above measured nothing"
