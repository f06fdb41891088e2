"""Bedrock's ConverseStream as the chat model of the local cascade.

``bedrock_cascade`` is the local pipeline (Silero VAD endpointing, Whisper,
sentence-by-sentence synthesis, barge-in) on this machine's models, with the
reply written by a Bedrock model (Claude 3 Haiku by default) through boto3's
``bedrock-runtime`` client. It is how Nova Sonic conversations fall back "to
Claude models": with the same AWS credentials, per session or the server's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from sonicgate.domain import ErrorCode
from sonicgate.engines.aws import AwsCredentials, service_error, session_credentials, session_region
from sonicgate.engines.base import EngineConfig, EngineError
from sonicgate.engines.bedrock_settings import BedrockSettings
from sonicgate.engines.local.engine import LocalEngine, LocalModels
from sonicgate.engines.local.llm import estimate_tokens

Client = Any  # boto3's bedrock-runtime client (no stubs for it are installed)


def converse_request(
    messages: list[dict[str, str]],
) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """(system, messages) as Converse takes them: system prompts apart, the
    conversation opening with the user, one role after the other (neighbours of one
    role become one message of several blocks), and no empty text (all refused)."""
    system = [{"text": m["content"]} for m in messages if m["role"] == "system"]
    turns: list[dict[str, Any]] = []
    for message in messages:
        role, text = message["role"], message["content"]
        if role == "system" or not text.strip() or (not turns and role != "user"):
            continue  # a history trimmed to fit may start with an answer
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].append({"text": text})
        else:
            turns.append({"role": role, "content": [{"text": text}]})
    return [block for block in system if block["text"].strip()], turns


def bedrock_error(exc: Exception) -> EngineError:
    """The failure as an error a client can act on."""
    match exc:
        case NoCredentialsError() | PartialCredentialsError():
            code, message = (
                ErrorCode.UNAUTHORIZED,
                "no AWS credentials: send awsAccessKeyId and awsSecretAccessKey in "
                "initialize, or give the server some (environment, profile, role)",
            )
        case ClientError(response=response):
            error, metadata = response.get("Error", {}), response.get("ResponseMetadata", {})
            message = error.get("Message") or str(exc)
            found = service_error(error.get("Code", ""), metadata.get("HTTPStatusCode"), message)
            code, message = found or (ErrorCode.PROVIDER_ERROR, message)
        case EndpointConnectionError() | ReadTimeoutError() | urllib3.exceptions.TimeoutError():
            code, message = ErrorCode.PROVIDER_UNREACHABLE, f"no answer: {exc}"
        case ConnectionClosedError() | urllib3.exceptions.HTTPError():
            code, message = ErrorCode.PROVIDER_ERROR, f"the reply broke off: {exc}"
        case _:
            code, message = ErrorCode.PROVIDER_ERROR, f"{type(exc).__name__}: {exc}"
    return EngineError(code, f"Bedrock: {message}")


class BedrockChat:
    """A Bedrock model through ConverseStream; its client is made at the first reply,
    in the worker thread (resolving the AWS chain may wait on the network)."""

    def __init__(self, connect: Callable[[], Client], settings: BedrockSettings) -> None:
        self._connect = connect
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._model = settings.model_id
        self.n_ctx = settings.context_tokens

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def _runtime(self) -> Client:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def stream(
        self, messages: list[dict[str, str]], cancel: threading.Event, max_tokens: int = 160
    ) -> Iterator[str]:
        if cancel.is_set():
            return
        system, turns = converse_request(messages)
        try:
            response = self._runtime().converse_stream(
                modelId=self._model,
                system=system,
                messages=turns,
                inferenceConfig={"maxTokens": max_tokens},
            )
            events = response["stream"]
            try:
                for event in events:
                    if cancel.is_set():
                        return  # a barge-in: closing the stream ends the reply (and its bill)
                    if text := event.get("contentBlockDelta", {}).get("delta", {}).get("text"):
                        yield text
            finally:
                events.close()
        except (BotoCoreError, ClientError, urllib3.exceptions.HTTPError) as exc:
            raise bedrock_error(exc) from exc


class Runtimes:
    """Makes boto3 ``bedrock-runtime`` clients for ``settings``, from any thread."""

    def __init__(self, settings: BedrockSettings) -> None:
        self._settings = settings
        self._boto = boto3.session.Session()
        self._lock = threading.Lock()  # a boto3 Session makes one client at a time safely
        self._config = Config(
            connect_timeout=settings.timeout,
            read_timeout=settings.timeout,
            # A fallback is quicker than a retry, and the reply streams from its first word.
            retries={"mode": "standard", "total_max_attempts": 1},
        )

    def client(self, region: str, credentials: AwsCredentials | None) -> Client:
        """``credentials`` None: the standard AWS chain."""
        keys: dict[str, Any] = {}
        if credentials is not None:
            keys = {
                "aws_access_key_id": credentials.access_key_id,
                "aws_secret_access_key": credentials.secret_access_key,
                "aws_session_token": credentials.session_token,
            }
        with self._lock:
            return self._boto.client(
                "bedrock-runtime",
                region_name=region,
                endpoint_url=self._settings.endpoint_url,
                verify=self._settings.ca_file or True,
                config=self._config,
                **keys,
            )


def bedrock_cascade(settings: BedrockSettings, local: LocalEngine) -> LocalEngine:
    """The cascade with Bedrock writing the replies; VAD, recognition and synthesis are
    ``local``'s models, run on its threads."""
    # botocore logs each request's headers at DEBUG, the access key and any session
    # token among them: never below INFO.
    botocore_log = logging.getLogger("botocore")
    if botocore_log.getEffectiveLevel() < logging.INFO:
        botocore_log.setLevel(logging.INFO)
    runtimes = Runtimes(settings)

    def models(region: str, credentials: AwsCredentials | None) -> LocalModels:
        chat = BedrockChat(partial(runtimes.client, region, credentials), settings)
        vad, stt, _, tts = local.models.names
        return replace(local.models, llm=chat, names=(vad, stt, settings.model_id, tts))

    shared = models(settings.region, None)

    def for_session(config: EngineConfig) -> LocalModels:
        credentials = session_credentials(config)
        region = session_region(config, settings.region)
        if credentials is None and region == settings.region:
            return shared
        return models(region, credentials)

    return LocalEngine(
        shared,
        local.options,  # its turn-taking too: the same VAD and turn detector
        name="bedrock",
        workers=settings.workers,
        session_models=for_session,
        beside=local,
    )
