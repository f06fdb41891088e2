"""The Nova Sonic engine, driven through the real AWS SDK against the wire-level emulator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from sonicgate.domain import History, Message, Role
from sonicgate.engines.aws import AwsCredentials
from sonicgate.engines.base import EngineConfig, EngineError
from sonicgate.engines.fallback import FallbackEngine
from sonicgate.engines.nova_sonic import crt_writer, grammar
from sonicgate.engines.nova_sonic import engine as nova_engine
from sonicgate.engines.nova_sonic.client import (
    NovaStreamError,
    crt_transport,
    open_client,
    open_stream,
    receive_events,
    send_event,
)
from sonicgate.engines.nova_sonic.engine import NovaSonicEngine
from sonicgate.engines.nova_sonic.settings import NOVA_SONIC, NovaSettings
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Error,
    ResponseTextDelta,
    ResponseTextFinal,
    TranscriptFinal,
    TurnEnded,
    Usage,
)
from sonicgate.tools import CURRENT_TIME, Tool
from tests.conftest import Connect, ManualClock, ServerFactory, eventually
from tests.contract import Listener, check_grammar, turn_ended
from tests.emulators.nova_sonic import Failure, NovaEmulator, ToolCall, Turn
from tests.scripted_engine import ScriptedEngine

CREDENTIALS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "not-a-secret"}
CHUNK = 1024 * 2  # 32 ms of 16 kHz pcm16


def speech(seconds: float = 0.6) -> bytes:
    """A loud tone: the emulator hears speech by its energy."""
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (np.sin(2 * np.pi * 220 * t) * 9000).astype("<i2").tobytes()


def quiet(seconds: float) -> bytes:
    return bytes(int(seconds * 16_000) * 2)


@pytest.fixture
async def emulator() -> AsyncIterator[NovaEmulator]:
    async with NovaEmulator() as running:
        yield running


def nova(emulator: NovaEmulator, **settings: Any) -> NovaSonicEngine:
    return NovaSonicEngine(
        NovaSettings(endpoint_uri=emulator.endpoint, ca_file=emulator.ca_file, **settings),
        (CURRENT_TIME,),
    )


async def say(session: Any, pcm: bytes) -> None:
    for start in range(0, len(pcm), CHUNK):
        await session.push_audio(pcm[start : start + CHUNK])


async def until(
    events: AsyncIterator[EngineEvent], kind: type, within: float = 10
) -> list[EngineEvent]:
    seen: list[EngineEvent] = []
    async with asyncio.timeout(within):
        async for event in events:
            seen.append(event)
            if isinstance(event, kind):
                return seen
    raise AssertionError(f"the events ended before a {kind.__name__}: {seen}")


def sent(emulator: NovaEmulator, stream: int = 0) -> list[str]:
    return [next(iter(event)) for event in emulator.streams[stream].received]


async def test_a_conversation_follows_the_grammar_and_maps_every_output(
    emulator: NovaEmulator,
) -> None:
    emulator.script = [Turn("What time is it?", "It is noon.")]
    history = History([Message(Role.USER, "Hi"), Message(Role.ASSISTANT, "Hello!")])
    session = await nova(emulator).start(
        EngineConfig(credentials=CREDENTIALS, voice="tiffany", history=history)
    )
    events = session.events()
    await say(session, speech() + quiet(0.6))
    turn = await until(events, TurnEnded)
    usage = await until(events, Usage)
    await session.close()

    assert [type(e) for e in turn if not isinstance(e, AudioOut)] == [
        TranscriptFinal,
        ResponseTextDelta,  # SPECULATIVE text, shown early
        ResponseTextFinal,  # FINAL text, what the history keeps
        TurnEnded,
    ]
    assert isinstance(turn[0], TranscriptFinal) and isinstance(turn[-2], ResponseTextFinal)
    assert turn[0].text == "What time is it?" and turn[-2].text == "It is noon."
    audio = [e for e in turn if isinstance(e, AudioOut)]
    assert audio and all(e.sample_rate == 24_000 for e in audio)
    assert isinstance(usage[-1], Usage) and usage[-1].output_tokens > 0

    order = sent(emulator)
    assert order[:3] == ["sessionStart", "promptStart", "contentStart"]
    assert order[-3:] == ["contentEnd", "promptEnd", "sessionEnd"]
    received = emulator.streams[0].received
    prompt = received[1]["promptStart"]
    assert prompt["audioOutputConfiguration"]["voiceId"] == "tiffany"
    assert prompt["toolConfiguration"]["tools"][0]["toolSpec"]["name"] == "getCurrentTime"
    texts = [e["textInput"]["content"] for e in received if "textInput" in e]
    assert texts[1:] == ["Hi", "Hello!"]  # the history after the system prompt
    nova_2 = emulator.session_configs[0]["turnDetectionConfiguration"]
    assert nova_2 == {"endpointingSensitivity": "MEDIUM"}
    assert emulator.model_ids == ["amazon.nova-2-sonic-v1:0"]


async def test_nova_sonic_v1_gets_no_nova_2_settings(emulator: NovaEmulator) -> None:
    session = await nova(emulator, model_id=NOVA_SONIC).start(EngineConfig(credentials=CREDENTIALS))
    await session.close()
    assert "turnDetectionConfiguration" not in emulator.session_configs[0]
    assert emulator.model_ids == [NOVA_SONIC]


async def test_bad_credentials_are_a_clear_error(emulator: NovaEmulator) -> None:
    wrong = {**CREDENTIALS, "aws_access_key_id": "AKIDWRONG"}
    with pytest.raises(EngineError) as error:
        await nova(emulator).start(EngineConfig(credentials=wrong))
    assert error.value.code == "unauthorized"
    assert "refused the credentials" in error.value.message


async def test_a_tool_runs_and_its_result_goes_back(emulator: NovaEmulator) -> None:
    emulator.script = [
        Turn("What time is it in Paris?", "Here: {tool_result}", ToolCall("getCurrentTime",
             {"timezone": "Europe/Paris"}))
    ]  # fmt: skip
    session = await nova(emulator).start(EngineConfig(credentials=CREDENTIALS))
    events = session.events()
    await say(session, speech() + quiet(0.6))
    turn = await until(events, TurnEnded)
    await session.close()
    reply = next(e.text for e in turn if isinstance(e, ResponseTextFinal))
    assert json.loads(reply.removeprefix("Here: "))["timezone"] == "Europe/Paris"
    [result] = [e for e in emulator.streams[0].received if "toolResult" in e]
    assert "Europe/Paris" in result["toolResult"]["content"]


async def test_a_typed_turn_in_text_only_mode_gets_words_and_no_audio(
    emulator: NovaEmulator,
) -> None:
    emulator.script = [Turn("(typed)", "Typed answer.")]
    session = await nova(emulator).start(EngineConfig(credentials=CREDENTIALS, text_only=True))
    events = session.events()
    await session.push_text("What is new?")
    turn = await until(events, TurnEnded)
    await session.close()
    assert isinstance(turn[0], TranscriptFinal)
    assert turn[0] == TranscriptFinal("What is new?", 1.0, turn[0].reason)
    assert ResponseTextFinal("Typed answer.") in turn
    assert not any(isinstance(e, AudioOut) for e in turn)
    typed = [e for e in emulator.streams[0].received if "contentStart" in e][-1]
    assert typed["contentStart"]["interactive"] and typed["contentStart"]["role"] == "USER"


async def two_turns_with_a_rotation(
    emulator: NovaEmulator, monkeypatch: pytest.MonkeyPatch, upto: type[EngineEvent]
) -> tuple[list[EngineEvent], list[EngineEvent]]:
    """Two spoken turns, the stream old enough to rotate between them: each turn's
    events up to its first ``upto``."""
    emulator.script = [Turn("First question", "First answer."), Turn("Second", "Second answer.")]
    clock = ManualClock()
    monkeypatch.setattr(nova_engine, "time", SimpleNamespace(monotonic=clock))
    session = await nova(emulator, rotate_after=0.5).start(EngineConfig(credentials=CREDENTIALS))
    events = session.events()
    await say(session, speech() + quiet(0.6))
    first = await until(events, upto)
    clock.now += 0.6  # the stream is old enough to rotate
    await say(session, quiet(0.6) + speech() + quiet(0.6))  # quiet first: rotation happens here
    second = await until(events, upto)
    await session.close()
    return first, second


async def test_the_stream_rotates_with_the_history_and_nothing_is_said_twice(
    emulator: NovaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await two_turns_with_a_rotation(emulator, monkeypatch, TurnEnded)

    assert len(emulator.streams) == 2
    seeded = [e["textInput"]["content"] for e in emulator.streams[1].received if "textInput" in e]
    assert seeded[1:] == ["First question", "First answer."]
    finals = [e.text for e in first + second if isinstance(e, ResponseTextFinal)]
    assert finals == ["First answer.", "Second answer."]
    assert sent(emulator, 0)[-2:] == ["promptEnd", "sessionEnd"]  # the old one ended cleanly
    heard = sum(
        len(base64.b64decode(e["audioInput"]["content"]))
        for stream in emulator.streams
        for e in stream.received
        if "audioInput" in e
    )
    assert heard == len(speech() + quiet(0.6)) * 2 + len(quiet(0.6))  # every byte, once


async def test_a_break_mid_reply_continues_on_the_fallback(emulator: NovaEmulator) -> None:
    emulator.script = [
        Turn("First question", "First answer."),
        Turn("Second question", "A long second answer " * 10, fail=Failure(drop_after_chunks=1)),
    ]
    backup = ScriptedEngine()
    session = await FallbackEngine(nova(emulator), backup).start(
        EngineConfig(credentials=CREDENTIALS)
    )
    events = session.events()
    await say(session, speech() + quiet(0.6))
    await until(events, TurnEnded)
    await say(session, speech() + quiet(0.6))
    second = await until(events, TurnEnded)
    await session.close()

    notices = [e for e in second if isinstance(e, Error)]
    assert [n.code for n in notices] == ["engine_fallback"]
    assert second[-2] == ResponseTextFinal(backup.reply)
    [config] = backup.configs
    assert [m.text for m in config.history] == [
        "First question",
        "First answer.",
        "Second question",  # once: the cut turn, answered again by the backup
        backup.reply,
    ]
    assert backup.texts == ["Second question"]


async def test_a_throttled_stream_continues_on_the_fallback(emulator: NovaEmulator) -> None:
    emulator.script = [Turn("Hi", "Hello", fail=Failure(exception="throttlingException"))]
    session = await FallbackEngine(nova(emulator), ScriptedEngine()).start(
        EngineConfig(credentials=CREDENTIALS)
    )
    events = session.events()
    await say(session, speech() + quiet(0.6))
    [notice] = await until(events, Error)
    await session.close()
    assert isinstance(notice, Error)
    assert notice.code == "engine_fallback" and "throttl" in notice.message.lower()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
async def test_a_stream_the_service_ended_leaves_no_traceback(
    emulator: NovaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """awscrt's request writer fails on a stream the service ended first (see
    crt_writer): the client has been told, so it goes to the debug log only."""
    gc.collect()  # what earlier tests left behind is not this test's to judge
    caplog.set_level(logging.DEBUG, logger=crt_writer.__name__)
    emulator.script = [Turn("Hi", "Hello", fail=Failure(exception="throttlingException"))]
    session = await nova(emulator).start(EngineConfig(credentials=CREDENTIALS))
    events = session.events()
    await say(session, speech() + quiet(0.6))
    await until(events, Error)
    await session.close()
    del session, events
    gc.collect()
    assert "request writer ended on a completed stream" in caplog.text
    loud = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not [record for record in loud if crt_writer.WRITER in record.getMessage()], loud


async def test_seed_clients_talk_to_nova_through_sonicgate(
    emulator: NovaEmulator,
    make_server: ServerFactory,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first seed's client sends no credentials: the server's own (standard chain) serve.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret")
    emulator.script = [Turn("Hello Nova", "Hello from Nova."), Turn("Again", "Hi again.")]
    server = await make_server({"nova-sonic": nova(emulator)})

    typed = await connect(server.ws())
    await typed.send(
        {"type": "initialize", "awsAccessKeyId": "AKIDEXAMPLE", "awsSecretAccessKey": "s3cret"}
    )
    assert (await typed.recv())["engine"] == "nova-sonic"
    for start in range(0, len(speech() + quiet(0.6)), 8192):
        chunk = (speech() + quiet(0.6))[start : start + 8192]
        await typed.send({"type": "audio_chunk", "audio": base64.b64encode(chunk).decode()})
    final, before = await typed.until("text_response", within=10)
    while not (final["type"] == "text_response" and final["isFinal"]):
        final = await typed.recv()
        before.append(final)
    assert final["text"] == "Hello from Nova."
    assert any(m["type"] == "transcription" and m["text"] == "Hello Nova" for m in before)
    assert any(m["type"] == "audio_response" and m["sampleRate"] == 24_000 for m in before)

    action = await connect(server.ws())
    await action.send(
        {"action": "voice_session_start", "userId": "u1", "data": {"audioFormat": "pcm16"}}
    )
    session_id = (await action.recv())["sessionId"]
    await action.send(
        {
            "action": "voice_chunk",
            "sessionId": session_id,
            "data": {
                "audioData": base64.b64encode(speech()).decode(),
                "sequenceNumber": 1,
                "isFinal": True,
            },
        }
    )
    response, _ = await action.until("voice_response_triggered", within=10)
    assert response["data"]["aiResponse"] == "Hi again."
    assert response["data"]["audioResponse"].startswith("data:audio/mp3;base64,")


# The emulator checks the grammar like the service --------------------------------


async def raw_stream(emulator: NovaEmulator) -> Any:
    client = await open_client(
        region="us-east-1",
        endpoint_uri=emulator.endpoint,
        credentials=AwsCredentials("AKIDEXAMPLE", "not-a-secret"),
        transport=crt_transport(emulator.ca_file),
    )
    return await open_stream(client, "amazon.nova-2-sonic-v1:0")


async def test_a_refused_setting_never_repeats_the_secret_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's message for a setting it refuses goes to the client: if it quotes what
    it was given, the secret key and session token must not be in it (nor in the
    exception's chain, which a log would print)."""

    async def refuse(**settings: Any) -> None:
        raise ValueError(f"bad settings: {settings}")

    config = "sonicgate.engines.nova_sonic.client.AsyncBedrockRuntimeConfig"
    monkeypatch.setattr(f"{config}.resolve", refuse)
    credentials = AwsCredentials("AKIDEXAMPLE", "the-secret-key", "the-session-token")
    with pytest.raises(NovaStreamError) as refused:
        await open_client(
            region="us-east-1",
            endpoint_uri=None,
            credentials=credentials,
            transport=crt_transport(),
        )
    said = str(refused.value.message) + repr(refused.value.__cause__)
    assert "the-secret-key" not in said and "the-session-token" not in said, said


START = grammar.session_start(max_tokens=100, top_p=0.9, temperature=0.7, endpointing=None)


@pytest.mark.parametrize(
    ("events", "complaint"),
    [
        ([grammar.audio_input("p", "a", b"\0\0")], "before sessionStart"),
        ([START, grammar.audio_start("p", "a")], "unknown promptName"),
        (
            [START, grammar.prompt_start("p", "matthew", []),
             *grammar.text_content("p", "s", "SYSTEM", "Be brief."),
             *grammar.text_content("p", "h", "ASSISTANT", "Hello")],
            "first history message must be USER",
        ),
        (
            [START, grammar.prompt_start("p", "matthew", []),
             *grammar.text_content("p", "s", "SYSTEM", "Be brief."),
             *grammar.text_content("p", "h", "USER", "x" * 1500)],
            "over 1 KB",
        ),
    ],
)  # fmt: skip
async def test_the_emulator_rejects_what_the_service_rejects(
    emulator: NovaEmulator, events: list[dict[str, Any]], complaint: str
) -> None:
    stream = await raw_stream(emulator)
    for event in events:
        await send_event(stream, event)
    with pytest.raises(NovaStreamError) as error:
        async for _ in receive_events(stream):
            pass
    assert error.value.code == "provider_rejected" and complaint in error.value.message


async def test_session_credentials_are_not_logged(
    emulator: NovaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = {**CREDENTIALS, "aws_secret_access_key": "VERY-SECRET-VALUE"}
    session = await nova(emulator).start(EngineConfig(credentials=secret))
    await say(session, speech() + quiet(0.6))
    await until(session.events(), TurnEnded)
    await session.close()
    assert "VERY-SECRET-VALUE" not in caplog.text
    assert "VERY-SECRET-VALUE" not in repr(EngineConfig(credentials=secret))


def test_the_conversation_transport_mirrors_the_sdks_own_init() -> None:
    """It sets what the pinned SDK's constructor sets (checked, as it is mirrored)."""
    from smithy_http.aio.crt import AWSCRTHTTPClient

    ours, theirs = crt_transport(), AWSCRTHTTPClient()
    assert set(vars(ours)) == set(vars(theirs))
    assert crt_transport()._tls_ctx is ours._tls_ctx  # shared, not made per conversation


async def test_the_streams_connection_sends_without_delay(emulator: NovaEmulator) -> None:
    """Nagle's algorithm off on the CRT's socket: a first chunk waits on no delayed ACK."""
    session = await nova(emulator).start(EngineConfig(credentials=CREDENTIALS))
    port = urlsplit(emulator.endpoint).port
    to_emulator = [sock for sock in _tcp_sockets() if _peer_port(sock) == port]
    try:
        assert to_emulator
        assert all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in to_emulator)
    finally:
        for sock in to_emulator:
            sock.close()
        await session.close()


def _tcp_sockets() -> list[socket.socket]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                sock = socket.socket(fileno=os.dup(int(fd)))
                if sock.type == socket.SOCK_STREAM and sock.family == socket.AF_INET:
                    found.append(sock)
                else:
                    sock.close()
    return found


def _peer_port(sock: socket.socket) -> int | None:
    try:
        return int(sock.getpeername()[1])
    except OSError:
        return None


async def test_a_stream_that_cannot_rotate_is_a_fatal_error(
    emulator: NovaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new stream is refused (the session's keys expired or were revoked since it
    began): the client is told, fatally, so a fallback can take over; close still works."""
    emulator.script = [Turn("First question", "First answer.")]
    clock = ManualClock()
    monkeypatch.setattr(nova_engine, "time", SimpleNamespace(monotonic=clock))
    session = await nova(emulator, rotate_after=0.5).start(EngineConfig(credentials=CREDENTIALS))
    events = session.events()
    await say(session, speech() + quiet(0.6))
    await until(events, TurnEnded)
    emulator.allowed_keys.clear()  # the keys no longer open streams
    clock.now += 0.6  # the stream is old enough to rotate
    await say(session, quiet(0.6))  # quiet: the writer rotates here
    failure: list[EngineEvent] = []
    with contextlib.suppress(TimeoutError):
        failure = await until(events, Error, within=3)
    async with asyncio.timeout(5):
        [closing] = await asyncio.gather(session.close(), return_exceptions=True)
    assert failure, "no Error: the writer task died with the refusal, the user is unheard"
    assert isinstance(failure[-1], Error) and failure[-1].fatal
    assert failure[-1].code == "unauthorized"
    assert closing is None, closing  # close ends the session, whatever the stream did


# Rotation must not lose a turn in progress ---------------------------------------

SEED_CHUNK = 8192  # the seed clients' audio chunks: 0.256 s


async def test_a_question_asked_as_the_stream_comes_of_age_is_answered(
    emulator: NovaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream passes ``rotate_after`` while the user speaks. The quiet that ends
    the question must reach the stream that heard it: rotating after the first half
    second of it leaves the speech on the old stream, which never hears the turn end,
    and the new stream hears only silence. The user is never answered."""
    emulator.script = [Turn("A question at the rotation", "Its answer.")]
    clock = ManualClock()
    monkeypatch.setattr(nova_engine, "time", SimpleNamespace(monotonic=clock))
    session = await nova(emulator, rotate_after=0.5).start(EngineConfig(credentials=CREDENTIALS))
    events = session.events()
    await say(session, speech())
    await eventually(lambda: emulator.streams[0].speech >= 0.5, "the speech reached Nova")
    clock.now += 0.6  # the stream comes of age as the user stops speaking
    pause = quiet(1.0)
    for start in range(0, len(pause), SEED_CHUNK):  # the client streams on, in real time
        await session.push_audio(pause[start : start + SEED_CHUNK])
        await asyncio.sleep(0.05)
    turn: list[EngineEvent] = []
    with contextlib.suppress(TimeoutError):
        turn = await until(events, TurnEnded, within=5)
    await session.close()
    assert ResponseTextFinal("Its answer.") in turn, (
        f"unanswered; {len(emulator.streams)} streams, events: {turn}"
    )


def slow_lookup() -> tuple[Tool, asyncio.Event, asyncio.Event]:
    """An order lookup that answers once released: the tool, its start, its release."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def lookup(arguments: dict[str, Any]) -> dict[str, str]:
        started.set()
        await release.wait()
        return {"status": "shipped"}

    tool = Tool("lookupOrder", "An order's status.", {"type": "object"}, lookup)
    return tool, started, release


async def test_a_rotation_while_a_tool_runs_does_not_lose_the_turn(
    emulator: NovaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's turn is in (TranscriptFinal) and Nova waits on a slow tool: no reply
    text or audio yet, the user quiet. That is not between turns: a rotation there
    drops the tool's result (for the old stream) and the reply, and the turn never ends."""
    lookup, started, release = slow_lookup()
    emulator.script = [Turn("Where is my order?", "It is {tool_result}", ToolCall("lookupOrder"))]
    clock = ManualClock()
    monkeypatch.setattr(nova_engine, "time", SimpleNamespace(monotonic=clock))
    engine = NovaSonicEngine(
        NovaSettings(endpoint_uri=emulator.endpoint, ca_file=emulator.ca_file, rotate_after=0.5),
        (lookup,),
    )
    session = await engine.start(EngineConfig(credentials=CREDENTIALS))
    events = session.events()
    await say(session, speech() + quiet(0.6))
    heard = await until(events, TranscriptFinal)
    async with asyncio.timeout(5):
        await started.wait()
    clock.now += 0.6  # the stream comes of age while the tool works
    await say(session, quiet(0.6))  # the client streams on: the user waits, quiet
    await asyncio.sleep(0.3)
    release.set()
    rest: list[EngineEvent] = []
    with contextlib.suppress(TimeoutError):
        rest = await until(events, TurnEnded, within=5)
    await session.close()
    check_grammar(heard + rest)  # the turn opened must end
    assert any(isinstance(e, ResponseTextFinal) and "shipped" in e.text for e in rest), rest


async def test_a_rotation_past_the_grace_period_ends_the_reply_under_way(
    emulator: NovaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``rotate_after`` + ``ROTATION_GRACE`` the stream moves even mid-reply (a
    noisy room never reads as quiet). The reply under way on the old stream is then
    dropped, event by event: its turn must still end, or the next one opens inside it."""
    emulator.realtime_output = True  # the reply takes seconds, as the service's does
    emulator.script = [
        Turn("Tell me a story", "Once upon a time " * 20),
        Turn("And then?", "The end."),
    ]
    clock = ManualClock()
    monkeypatch.setattr(nova_engine, "time", SimpleNamespace(monotonic=clock))
    session = await nova(emulator, rotate_after=0.5).start(EngineConfig(credentials=CREDENTIALS))
    listener = Listener(session)
    await say(session, speech() + quiet(0.6))
    await listener.until(lambda e: isinstance(e, AudioOut))  # the reply is under way
    clock.now += 0.5 + nova_engine.ROTATION_GRACE + 1  # past the grace period
    await say(session, quiet(0.1))  # the client streams on: the writer rotates here
    await eventually(lambda: len(emulator.streams) == 2, "the stream rotated")
    await asyncio.sleep(0.5)
    await say(session, speech() + quiet(0.6))  # the next question, on the new stream
    second = await listener.until(lambda e: isinstance(e, TranscriptFinal), 1)
    end = await listener.until(turn_ended, second)
    await session.close()
    check_grammar(listener.events[: end + 1])


async def test_usage_keeps_counting_the_conversation_across_a_rotation(
    emulator: NovaEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Usage`` carries the conversation's running totals (metrics count what is new
    since the last one). Nova's usageEvent totals are the stream's: a rotated-to
    stream starts again from its own seed, so passed on as they are, the totals fall
    back and the next turns' tokens go uncounted."""
    first, second = await two_turns_with_a_rotation(emulator, monkeypatch, Usage)
    assert len(emulator.streams) == 2
    before, after = first[-1], second[-1]
    assert isinstance(before, Usage) and isinstance(after, Usage)
    # The second turn used tokens of its own: the running totals grow.
    assert after.input_tokens > before.input_tokens, (before, after)
    assert after.output_tokens > before.output_tokens, (before, after)


async def test_stop_while_a_tool_runs_ends_the_turn_and_nothing_of_the_reply_follows(
    emulator: NovaEmulator,
) -> None:
    """The client presses stop after the user's turn is in, while Nova waits on a slow
    tool: no reply text or audio has come yet, but the reply is under way. Stop must
    end it (``interrupt`` ends a reply as a barge-in does); it is ignored instead, and
    the whole reply is spoken once the tool answers."""
    lookup, started, release = slow_lookup()
    emulator.script = [Turn("Where is my order?", "It is {tool_result}", ToolCall("lookupOrder"))]
    engine = NovaSonicEngine(
        NovaSettings(endpoint_uri=emulator.endpoint, ca_file=emulator.ca_file), (lookup,)
    )
    session = await engine.start(EngineConfig(credentials=CREDENTIALS))
    listener = Listener(session)
    await say(session, speech() + quiet(0.6))
    await listener.until(lambda e: isinstance(e, TranscriptFinal))
    async with asyncio.timeout(5):
        await started.wait()
    await session.interrupt()  # the client pressed stop
    release.set()
    await asyncio.sleep(1.0)  # the tool's answer reaches Nova, and Nova replies
    await session.close()
    check_grammar(listener.events)
    names = [type(e).__name__ for e in listener.events]
    assert TurnEnded(interrupted=True) in listener.events, f"stop ignored: {names}"
    assert not [e for e in listener.events if isinstance(e, AudioOut | ResponseTextDelta)], names
