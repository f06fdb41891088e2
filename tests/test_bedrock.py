"""The Bedrock engine, with the real boto3 client against the ConverseStream emulator:
the chat model alone, then through sonicgate as an engine and as Nova Sonic's fallback."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sonicgate.engines.aws import AwsCredentials
from sonicgate.engines.base import EngineError
from sonicgate.engines.bedrock import BedrockChat, Runtimes, bedrock_cascade, converse_request
from sonicgate.engines.bedrock_settings import BedrockSettings
from sonicgate.engines.fallback import FallbackEngine
from sonicgate.engines.local import LocalEngine, LocalModels
from tests.conftest import Client, Connect, RunningServer, ServerFactory, free_port
from tests.emulators.bedrock_converse import BedrockEmulator, reply_to
from tests.emulators.nova_sonic import Failure, NovaEmulator, Turn
from tests.test_nova_sonic import nova

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEYS = {"awsAccessKeyId": "AKIDEXAMPLE", "awsSecretAccessKey": SECRET}
SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture
async def emulator() -> AsyncIterator[BedrockEmulator]:
    async with BedrockEmulator() as running:
        yield running


@pytest.fixture
async def nova_emulator() -> AsyncIterator[NovaEmulator]:
    async with NovaEmulator() as running:
        yield running


def runtime(endpoint: str, key: str = "AKIDEXAMPLE") -> Any:
    """The engine's own boto3 client: no retries, as in the engine."""
    runtimes = Runtimes(BedrockSettings(endpoint_url=endpoint))
    return runtimes.client("us-east-1", AwsCredentials(key, SECRET))


def chat(endpoint: str, key: str = "AKIDEXAMPLE") -> BedrockChat:
    return BedrockChat(partial(runtime, endpoint, key), BedrockSettings())


async def reply(model: BedrockChat, messages: list[dict[str, str]]) -> list[str]:
    return await asyncio.to_thread(lambda: list(model.stream(messages, threading.Event())))


# Messages as Converse takes them --------------------------------------------------


def test_the_system_prompt_goes_apart() -> None:
    system, turns = converse_request([SYSTEM, {"role": "user", "content": "Hi"}])
    assert system == [{"text": "Be brief."}]
    assert turns == [{"role": "user", "content": [{"text": "Hi"}]}]


def test_neighbours_of_one_role_merge_and_the_user_opens() -> None:
    system, turns = converse_request(
        [
            SYSTEM,
            {"role": "assistant", "content": "A reply whose question was trimmed away."},
            {"role": "user", "content": "First"},
            {"role": "user", "content": "  "},  # blank text: refused by Bedrock
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": "Answer"},
            {"role": "assistant", "content": "More"},
            {"role": "user", "content": "Last"},
        ]
    )
    assert system == [{"text": "Be brief."}]
    assert turns == [
        {"role": "user", "content": [{"text": "First"}, {"text": "second"}]},
        {"role": "assistant", "content": [{"text": "Answer"}, {"text": "More"}]},
        {"role": "user", "content": [{"text": "Last"}]},
    ]


def test_a_blank_system_prompt_is_left_out() -> None:
    system, _ = converse_request(
        [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]
    )
    assert system == []


# The chat model against the emulator ----------------------------------------------


async def test_the_reply_streams_in_deltas(emulator: BedrockEmulator) -> None:
    messages = [
        SYSTEM,
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    deltas = await reply(chat(emulator.endpoint), messages)
    [request] = emulator.requests
    assert "".join(deltas) == reply_to(request["messages"])
    assert "".join(deltas) == "I got 2 user messages. You said: What is my name?"
    assert len(deltas) > 1
    assert request["system"] == [{"text": "Be brief."}]
    assert request["inferenceConfig"] == {"maxTokens": 160}
    assert emulator.model_ids == ["anthropic.claude-3-haiku-20240307-v1:0"]
    assert emulator.keys_seen == ["AKIDEXAMPLE"]


async def test_a_cancel_stops_reading_and_closes_the_stream(emulator: BedrockEmulator) -> None:
    emulator.frame_delay = 0.2
    model, cancel = chat(emulator.endpoint), threading.Event()

    def first_delta() -> list[str]:
        deltas = []
        for delta in model.stream([{"role": "user", "content": "Tell me a story"}], cancel):
            deltas.append(delta)
            cancel.set()  # the user barged in
        return deltas

    assert len(await asyncio.to_thread(first_delta)) == 1
    await asyncio.wait_for(emulator.cut_short.wait(), 5)  # the server saw it closed


@pytest.mark.parametrize(
    ("fail", "code"), [(403, "unauthorized"), (429, "throttled"), (500, "provider_unreachable")]
)
async def test_service_errors_have_the_nova_engine_codes(
    emulator: BedrockEmulator, fail: int, code: str
) -> None:
    emulator.fail = fail
    with pytest.raises(EngineError) as error:
        await reply(chat(emulator.endpoint), [{"role": "user", "content": "Hi"}])
    assert error.value.code == code


async def test_unknown_credentials_are_refused_clearly(emulator: BedrockEmulator) -> None:
    with pytest.raises(EngineError) as error:
        await reply(chat(emulator.endpoint, "AKIDWRONG"), [{"role": "user", "content": "Hi"}])
    assert error.value.code == "unauthorized"
    assert "refused the credentials" in error.value.message
    assert emulator.keys_seen == ["AKIDWRONG"]


async def test_a_connection_dropped_mid_reply_is_a_stream_error(emulator: BedrockEmulator) -> None:
    emulator.drop_after_frames = 1
    with pytest.raises(EngineError) as error:
        await reply(chat(emulator.endpoint), [{"role": "user", "content": "Hi"}])
    assert error.value.code == "provider_error"


async def test_an_unreachable_endpoint_is_unreachable() -> None:
    with pytest.raises(EngineError) as error:
        await reply(chat(f"http://127.0.0.1:{free_port()}"), [{"role": "user", "content": "Hi"}])
    assert error.value.code == "provider_unreachable"


@pytest.mark.parametrize(
    ("messages", "complaint"),
    [
        ([{"role": "assistant", "content": [{"text": "Hi"}]}], "start with a user message"),
        (
            [
                {"role": "user", "content": [{"text": "Hi"}]},
                {"role": "user", "content": [{"text": "again"}]},
            ],
            "alternate between user and assistant",
        ),
        ([{"role": "user", "content": [{"text": " "}]}], "is blank"),
    ],
)
async def test_the_emulator_rejects_what_the_service_rejects(
    emulator: BedrockEmulator, messages: list[dict[str, Any]], complaint: str
) -> None:
    client = runtime(emulator.endpoint)
    with pytest.raises(ClientError) as error:
        await asyncio.to_thread(
            client.converse_stream, modelId="anthropic.claude-3-haiku", messages=messages
        )
    assert error.value.response["Error"]["Code"] == "ValidationException"
    assert complaint in error.value.response["Error"]["Message"]


# Through sonicgate -------------------------------------------------------------


def bedrock(emulator: BedrockEmulator, local: LocalEngine) -> LocalEngine:
    return bedrock_cascade(BedrockSettings(endpoint_url=emulator.endpoint), local)


async def say(client: Client, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    await client.send({"type": "text_message", "text": text})
    return await client.final_reply(within=60)


@pytest.mark.models
async def test_a_typed_message_gets_a_streamed_reply_and_local_speech(
    emulator: BedrockEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
) -> None:
    local = LocalEngine(local_models)
    server = await make_server({"bedrock": bedrock(emulator, local)})
    client: Client = await connect(server.ws())
    ready = await client.initialize(engine="bedrock", **KEYS)
    assert ready["engine"] == "bedrock"
    final, before = await say(client, "My name is Ada.")
    assert final["text"] == "I got 1 user messages. You said: My name is Ada."
    deltas = [m["text"] for m in before if m["type"] == "text_response"]
    assert len(deltas) > 1 and "".join(deltas).strip() == final["text"]
    audio = [m for m in before if m["type"] == "audio_response"]
    assert audio and all(m["sampleRate"] == local_models.tts.sample_rate for m in audio)
    final, _ = await say(client, "What is my name?")
    assert final["text"] == "I got 2 user messages. You said: What is my name?"
    history = emulator.requests[-1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[0]["content"] == [{"text": "My name is Ada."}]


@pytest.mark.models
async def test_nova_failing_mid_conversation_continues_on_bedrock_with_the_history(
    emulator: BedrockEmulator,
    nova_emulator: NovaEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
) -> None:
    nova_emulator.script = [
        Turn("(typed)", "Hello Ada."),
        Turn("(typed)", "You are " * 20, fail=Failure(drop_after_chunks=1)),
    ]
    local = LocalEngine(local_models)
    engine = FallbackEngine(nova(nova_emulator), FallbackEngine(bedrock(emulator, local), local))
    server = await make_server({"nova-sonic": engine})
    client: Client = await connect(server.ws())
    await client.initialize(engine="nova-sonic", textOnly=True, **KEYS)
    first, _ = await say(client, "My name is Ada.")
    assert first["text"] == "Hello Ada."
    answer, before = await say(client, "What is my name?")
    notices = [m["code"] for m in before if m["type"] == "error"]
    assert notices == ["engine_fallback"]
    assert answer["text"] == "I got 2 user messages. You said: What is my name?"
    [request] = emulator.requests
    assert request["messages"][:2] == [
        {"role": "user", "content": [{"text": "My name is Ada."}]},
        {"role": "assistant", "content": [{"text": "Hello Ada."}]},
    ]
    assert emulator.keys_seen == ["AKIDEXAMPLE"]  # the session's own credentials


@pytest.mark.models
@pytest.mark.parametrize(
    ("failure", "said"), [("throttled", "too many requests"), ("dropped", "broke off")]
)
async def test_when_bedrock_fails_the_local_engine_answers(
    emulator: BedrockEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
    failure: str,
    said: str,
) -> None:
    local = LocalEngine(local_models)
    server = await make_server({"bedrock": FallbackEngine(bedrock(emulator, local), local)})
    client: Client = await connect(server.ws())
    await client.initialize(engine="bedrock", textOnly=True, **KEYS)
    await say(client, "My name is Ada.")
    if failure == "throttled":
        emulator.fail = 429
    else:
        emulator.drop_after_frames = 1
    answer, before = await say(client, "What is my name? Answer with the name only.")
    [notice] = [m for m in before if m["type"] == "error"]
    assert notice["code"] == "engine_fallback" and "bedrock" in notice["message"]
    assert said in notice["message"].lower()
    assert "ada" in answer["text"].lower()  # the local engine got the history


@pytest.mark.models
async def test_refused_credentials_are_a_clear_error_and_the_session_stays(
    emulator: BedrockEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
) -> None:
    server = await make_server({"bedrock": bedrock(emulator, LocalEngine(local_models))})
    client: Client = await connect(server.ws())
    await client.initialize(engine="bedrock", **{**KEYS, "awsAccessKeyId": "AKIDWRONG"})
    await client.send({"type": "text_message", "text": "Hello"})
    error, _ = await client.until("error", within=30)
    assert error["code"] == "unauthorized" and "credentials" in error["message"]
    emulator.allowed_keys.add("AKIDWRONG")  # access granted: the same session goes on
    answer, _ = await say(client, "Hello again")
    assert answer["sessionId"] == error["sessionId"]


@pytest.mark.models
async def test_session_credentials_reach_bedrock_and_are_never_logged_or_stored(
    emulator: BedrockEmulator,
    local_models: LocalModels,
    make_server: ServerFactory,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server's own credentials (the standard chain) serve sessions without any.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSERVER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret")
    emulator.allowed_keys = {"AKIDSERVER", "AKIDSESSIONONLY"}
    caplog.set_level(logging.DEBUG)
    server: RunningServer = await make_server(
        {"bedrock": bedrock(emulator, LocalEngine(local_models))}
    )
    client: Client = await connect(server.ws())
    await client.initialize(
        engine="bedrock",
        textOnly=True,
        awsAccessKeyId="AKIDSESSIONONLY",
        awsSecretAccessKey=SECRET,
        awsSessionToken="TOKEN-" + SECRET,
    )
    await say(client, "Hello")
    other: Client = await connect(server.ws())
    await other.initialize(engine="bedrock", textOnly=True)
    await say(other, "Hello")
    assert emulator.keys_seen == ["AKIDSESSIONONLY", "AKIDSERVER"]

    await client.send({"type": "end_conversation"})
    await client.until("conversation_ended")
    for secret in (SECRET, "AKIDSESSIONONLY"):
        assert secret not in caplog.text
        for path in server.settings.data_dir.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
