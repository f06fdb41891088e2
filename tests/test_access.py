"""Access control through the real server: credentials, origins, and per-client limits."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from httpx_ws import WebSocketUpgradeError
from starlette.types import Message

from sonicgate.audio.formats import wav_bytes
from sonicgate.config import Settings
from sonicgate.server import app as app_module
from sonicgate.server.access import AccessMiddleware, AccessPolicy
from sonicgate.server.ratelimit import Counters, RateLimiter
from tests.conftest import Client, Connect, ManualClock, RunningServer, ServerFactory
from tests.scripted_engine import ScriptedEngine, tone
from tests.test_bad_input import B64, expect_error, still_works

KEY = "test-api-key-0123456789"
OTHER_KEY = "another-api-key-9876543210"
SECRET = "a-jwt-secret-that-is-32-bytes-long!!"
STATUS = "/api/nova-sonic/status"
CLEANUP = "/api/nova-sonic/cleanup"


async def refused(
    connect: Connect, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Expect the handshake to be refused; its HTTP status and JSON body."""
    with pytest.raises(WebSocketUpgradeError) as caught:
        await connect(url, headers)
    response = caught.value.response
    return response.status_code, response.json()


async def get(
    server: RunningServer,
    path: str,
    token: str | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with server.http() as http:
        return await http.request(method, path, headers={**auth, **(headers or {})})


async def initialize(client: Client) -> dict[str, Any]:
    await client.send({"type": "initialize"})
    return await client.recv()


def hs256(secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": "alice", "exp": time.time() + 60, **claims}, secret, "HS256")


def unsigned(header: dict[str, Any], claims: dict[str, Any], key: bytes | None = None) -> str:
    """A token made by hand, as an attacker would: 'none', or HMAC keyed with anything."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(claims)}"
    signature = b""
    if key is not None:
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.fixture
async def keyed(make_server: ServerFactory, scripted: ScriptedEngine) -> RunningServer:
    server: RunningServer = await make_server({"scripted": scripted}, api_keys=(KEY, OTHER_KEY))
    return server


async def test_without_a_credential_nothing_but_a_refusal(
    keyed: RunningServer, scripted: ScriptedEngine, connect: Connect
) -> None:
    for path in ("/api/nova-sonic/stream", "/api/events"):
        status, body = await refused(connect, keyed.ws(path))
        assert status == 401
        assert body["code"] == "unauthorized"
        assert "Bearer" in body["error"]
    status, body = await refused(connect, keyed.ws() + "?token=wrong")
    assert (status, body["code"]) == (401, "unauthorized")
    for path, method in ((STATUS, "GET"), ("/metrics", "GET"), (CLEANUP, "GET"), (CLEANUP, "POST")):
        response = await get(keyed, path, method=method)
        assert response.status_code == 401, path
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert (await get(keyed, STATUS, "wrong")).status_code == 401
    assert scripted.configs == []  # no session was ever started
    status_body = (await get(keyed, STATUS, KEY)).json()
    assert status_body["activeSessions"] == status_body["activeConnections"] == 0


async def test_the_web_page_stays_public(keyed: RunningServer) -> None:
    # Not the API: no credential asked for.
    assert (await get(keyed, "/")).status_code == 200
    assert (await get(keyed, "/app.js")).status_code == 200
    assert (await get(keyed, "/apiary")).status_code == 404


async def test_api_key_in_the_header_or_the_query(keyed: RunningServer, connect: Connect) -> None:
    client = await connect(keyed.ws(), {"Authorization": f"Bearer {KEY}"})
    assert (await initialize(client))["type"] == "initialized"
    await still_works(client)
    client = await connect(keyed.ws() + f"?token={OTHER_KEY}")
    assert (await initialize(client))["type"] == "initialized"
    await connect(keyed.ws("/api/events") + f"?token={KEY}&sessionId=x")
    assert (await get(keyed, STATUS, KEY)).json()["status"] == "ok"
    assert (await get(keyed, "/metrics", KEY)).status_code == 200
    cleanup = await get(keyed, CLEANUP, KEY, method="POST")
    assert cleanup.json()["status"] == "ok"


async def test_hs256_tokens(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server({"scripted": scripted}, jwt_secret=SECRET)
    client = await connect(server.ws() + f"?token={hs256()}")
    assert (await initialize(client))["type"] == "initialized"
    assert (await get(server, STATUS, hs256())).status_code == 200
    for token, problem in [
        (hs256(exp=time.time() - 5), "expired"),
        (hs256(nbf=time.time() + 300), "not valid yet"),
        (hs256("another-secret-also-32-bytes-long!!"), "invalid"),
        (unsigned({"alg": "none", "typ": "JWT"}, {"sub": "alice"}), "invalid"),
        ("not.a.token", "invalid"),
    ]:
        response = await get(server, STATUS, token)
        assert response.status_code == 401
        assert problem in response.json()["error"]
    status, body = await refused(connect, server.ws() + f"?token={hs256(exp=time.time() - 5)}")
    assert status == 401
    assert "expired" in body["error"]


async def test_jwt_audience(make_server: ServerFactory, scripted: ScriptedEngine) -> None:
    server = await make_server({"scripted": scripted}, jwt_secret=SECRET, jwt_audience="gw")
    assert (await get(server, STATUS, hs256(aud="gw"))).status_code == 200
    assert (await get(server, STATUS, hs256(aud="elsewhere"))).status_code == 401
    assert (await get(server, STATUS, hs256())).status_code == 401


async def test_rs256_tokens(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect, tmp_path: Path
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    server = await make_server({"scripted": scripted}, jwt_public_key_file=tmp_path / "key.pem")
    token = jwt.encode({"sub": "bob", "exp": time.time() + 60}, private, "RS256")
    client = await connect(server.ws() + f"?token={token}")
    assert (await initialize(client))["type"] == "initialized"
    # The classic confusion: HS256 keyed with the public key, which anyone has.
    forged = unsigned({"alg": "HS256", "typ": "JWT"}, {"sub": "bob"}, pem)
    assert (await get(server, STATUS, forged)).status_code == 401
    assert (await get(server, STATUS, hs256())).status_code == 401


def test_settings_weaker_than_asked_for_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        AccessPolicy.from_settings(Settings(jwt_secret="short"))
    with pytest.raises(ValueError, match="empty"):
        AccessPolicy.from_settings(Settings(api_keys=("",)))


async def test_origin_allow_list(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server({"scripted": scripted}, allowed_origins=("https://app.example",))
    status, body = await refused(connect, server.ws(), {"Origin": "https://evil.example"})
    assert (status, body["code"]) == (403, "forbidden_origin")
    response = await get(server, STATUS, headers={"Origin": "https://evil.example"})
    assert (response.status_code, response.json()["code"]) == (403, "forbidden_origin")
    client = await connect(server.ws(), {"Origin": "https://app.example"})
    assert (await initialize(client))["type"] == "initialized"
    client = await connect(server.ws())  # not a browser: no Origin, no check
    assert (await initialize(client))["type"] == "initialized"


async def test_http_rate_limit(make_server: ServerFactory, scripted: ScriptedEngine) -> None:
    server = await make_server({"scripted": scripted}, max_requests_per_second=1)
    codes = [(await get(server, STATUS)).status_code for _ in range(2)]  # the burst
    limited = await get(server, STATUS)
    assert codes == [200, 200]
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1


async def test_failed_attempts_are_rate_limited_by_address(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server({"scripted": scripted}, api_keys=(KEY,), max_requests_per_second=1)
    codes = [(await get(server, STATUS, f"guess-{n}")).status_code for n in range(3)]
    assert codes == [401, 401, 429]
    status, body = await refused(connect, server.ws() + "?token=guess")
    assert (status, body["code"]) == (429, "rate_limited")


@pytest.fixture
def message_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """The clock of the app's rate limits."""
    clock = ManualClock()
    monkeypatch.setattr(app_module, "Counters", functools.partial(Counters, clock=clock))
    return clock


async def test_a_message_flood_is_answered_in_the_typed_dialect(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    message_clock: ManualClock,
) -> None:
    server = await make_server({"scripted": scripted}, max_messages_per_second=5)
    client = await connect(server.ws())
    assert (await initialize(client))["type"] == "initialized"
    for _ in range(30):
        await client.send({"type": "audio_chunk", "audio": B64})
    message_clock.now += 2  # the bucket refills; the session was never lost
    await client.send({"type": "text_message", "text": "still there?"})
    _, before = await client.until("text_response")
    errors = [m for m in before if m["type"] == "error"]
    assert len(errors) == 30 - 10  # all but a burst of 2 s at 5 a second
    assert {e["code"] for e in errors} == {"rate_limited"}


async def test_the_message_limit_does_not_reset_the_request_limit(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    message_clock: ManualClock,
) -> None:
    """The request and message limits count in the app's one ``Counters``. A request
    rate under one per window (here one in 10 s) must hold when the messages' shorter
    window (2 s) is the one whose hit sweeps the emptied windows (once a minute)."""
    server = await make_server({"scripted": scripted}, max_requests_per_second=0.1)
    message_clock.now += 58
    client = await connect(server.ws())  # the handshake: this client's request for 10 s
    message_clock.now += 3  # past the sweep's minute
    assert (await initialize(client))["type"] == "initialized"  # a message: the sweep
    limited = await get(server, STATUS)  # 3 s after the handshake
    assert limited.status_code == 429, limited.json()


async def test_a_message_flood_is_answered_in_the_action_dialect(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    message_clock: ManualClock,
) -> None:
    server = await make_server({"scripted": scripted}, max_messages_per_second=5)
    client = await connect(server.ws())
    start = {"action": "voice_session_start", "data": {"audioFormat": "pcm16"}}
    await client.send(start)
    session_id = (await client.recv())["sessionId"]
    chunk = {"action": "voice_chunk", "sessionId": session_id, "data": {"audioData": B64}}
    for _ in range(30):
        await client.send(chunk)
    message_clock.now += 2
    await client.send({"action": "voice_session_end", "sessionId": session_id})
    ended, before = await client.until("voice_session_ended")
    errors = [m for m in before if m["type"] == "voice_error"]
    assert len(errors) == 30 - 10
    assert {e["data"]["code"] for e in errors} == {"rate_limited"}
    assert ended["data"]["status"] == "COMPLETED"


async def test_sessions_per_client(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server(
        {"scripted": scripted}, api_keys=(KEY, OTHER_KEY), max_sessions_per_client=1
    )
    first = await connect(server.ws() + f"?token={KEY}")
    assert (await initialize(first))["type"] == "initialized"
    second = await connect(server.ws() + f"?token={KEY}")
    await second.send({"action": "voice_session_start", "userId": "u", "data": {}})
    await expect_error(second, "too_many_sessions", "action")
    other = await connect(server.ws() + f"?token={OTHER_KEY}")  # another client
    assert (await initialize(other))["type"] == "initialized"
    await first.send({"type": "end_conversation"})
    await first.until("conversation_ended")
    await second.send({"action": "voice_session_start", "userId": "u", "data": {}})
    assert (await second.recv())["type"] == "voice_session_initialized"


async def test_a_turn_past_its_audio_limit_is_ended(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server({"scripted": scripted}, max_turn_audio_seconds=1.0)
    client = await connect(server.ws())
    assert (await initialize(client))["type"] == "initialized"
    audio = tone(2.0, 16_000)
    for offset in range(0, len(audio), 8000):  # quarter seconds, the turn left open
        chunk = base64.b64encode(audio[offset : offset + 8000]).decode()
        await client.send({"type": "audio_chunk", "audio": chunk})
    _, before = await client.until("text_response")
    assert [m["code"] for m in before if m["type"] == "error"] == ["turn_too_long"]
    assert any(m["type"] == "transcription" and m["isFinal"] for m in before)
    await still_works(client)


async def test_a_recording_past_the_turn_limit_is_dropped(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server({"scripted": scripted}, max_turn_audio_seconds=1.0)
    client = await connect(server.ws())
    await client.send({"action": "voice_session_start", "data": {"audioFormat": "wav"}})
    session_id = (await client.recv())["sessionId"]
    recording = base64.b64encode(wav_bytes(tone(2.0, 16_000), 16_000)).decode()
    data = {"audioData": recording, "audioFormat": "wav"}
    await client.send({"action": "voice_data", "sessionId": session_id, "data": data})
    error = await expect_error(client, "turn_too_long", "action")
    assert "dropped" in str(error["data"])


async def test_a_session_past_its_time_limit_is_ended(
    make_server: ServerFactory, scripted: ScriptedEngine, connect: Connect
) -> None:
    server = await make_server({"scripted": scripted}, max_session_seconds=0.5)
    client = await connect(server.ws())
    assert (await initialize(client))["type"] == "initialized"
    await expect_error(client, "session_too_long")
    ended, _ = await client.until("conversation_ended")
    assert ended["status"] == "COMPLETED"
    assert (await initialize(client))["type"] == "initialized"  # a new one may start


async def test_without_auth_everything_is_open(server: RunningServer, connect: Connect) -> None:
    assert (await get(server, STATUS)).status_code == 200
    assert (await get(server, CLEANUP, method="POST")).status_code == 200
    client = await connect(server.ws())
    assert (await initialize(client))["type"] == "initialized"


async def test_without_auth_a_userid_given_at_the_start_must_be_repeated_to_resume(
    server: RunningServer, connect: Connect
) -> None:
    """README: with access control off, "a userId given at the start must then be
    repeated to resume"; leaving it out is no way around it."""
    alice = await connect(server.ws())
    session_id = (await alice.initialize(userId="alice"))["sessionId"]
    await alice.close()  # detached: resumable
    for claim in ({}, {"userId": "anonymous"}, {"userId": "bob"}):
        intruder = await connect(server.ws())
        await intruder.send({"type": "initialize", "sessionId": session_id, **claim})
        await expect_error(intruder, "forbidden")
    again = await connect(server.ws())
    assert (await again.initialize(sessionId=session_id, userId="alice"))["resumed"] is True


async def nothing_received() -> Message:
    raise AssertionError("the middleware read from the client")


async def nothing_sent(message: Message) -> None:
    raise AssertionError(f"the middleware sent {message}")


async def test_the_token_is_kept_out_of_the_query_string() -> None:
    """Servers log the query string: the token is taken out of it before anything runs."""
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["query_string"])

    scope = {"type": "http", "path": STATUS, "headers": [], "client": ("10.0.0.1", 1)}
    middleware = AccessMiddleware(app, AccessPolicy(api_keys=(KEY,)))
    query = f"sessionId=s1&token={KEY}".encode()
    await middleware({**scope, "query_string": query}, nothing_received, nothing_sent)
    assert seen == [b"sessionId=s1"]


async def test_a_server_without_denial_responses_gets_a_policy_close() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def never(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("a refused client reached the application")

    scope = {"type": "websocket", "path": "/api/events", "query_string": b"", "headers": []}
    await AccessMiddleware(never, AccessPolicy(api_keys=(KEY,)))(scope, nothing_received, send)
    assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 1008)]
    assert sent[0]["reason"].startswith("unauthorized")


async def test_rate_limiter_allows_twice_its_rate_at_once() -> None:
    clock = ManualClock()
    limiter = RateLimiter(2, "test", Counters(clock=clock))
    assert [await limiter.take("a") for _ in range(4)] == [None] * 4  # two seconds' worth
    assert await limiter.take("a") == pytest.approx(2.0)  # until the first hit leaves
    assert await limiter.take("b") is None  # clients are counted apart
    clock.now += 1.0
    assert await limiter.take("a") == pytest.approx(1.0)  # refused hits do not count
    clock.now += 1.01
    assert [await limiter.take("a") for _ in range(5)] == [None] * 4 + [pytest.approx(2.0)]
    assert await RateLimiter(0, "test", Counters()).take("a") is None  # 0: unlimited


async def test_a_rate_under_one_per_window_allows_one_hit_per_period() -> None:
    clock = ManualClock()
    limiter = RateLimiter(0.1, "test", Counters(clock=clock))
    assert await limiter.take("a") is None
    assert await limiter.take("a") == pytest.approx(10.0)
    clock.now += 10.01
    assert await limiter.take("a") is None
