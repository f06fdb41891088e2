"""The Bedrock bidirectional stream through the smithy SDK, reduced to what we use.

``open_client`` builds an SDK client on the CRT HTTP/2 transport (the default
aiohttp transport cannot carry a duplex stream); ``open_stream`` starts
``InvokeModelWithBidirectionalStream``; events go in and out as the JSON of
Nova's grammar. Every failure the SDK or the service reports comes out as one
``NovaStreamError`` with a stable ``code``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aws_sdk_bedrock_runtime.client import AsyncBedrockRuntimeClient
from aws_sdk_bedrock_runtime.config import AsyncBedrockRuntimeConfig
from aws_sdk_bedrock_runtime.models import (
    BidirectionalInputPayloadPart,
    InvokeModelWithBidirectionalStreamInputChunk,
    InvokeModelWithBidirectionalStreamOperationInput,
    InvokeModelWithBidirectionalStreamOutputChunk,
    InvokeModelWithBidirectionalStreamOutputUnknown,
)
from awscrt import io as crt_io
from smithy_core.exceptions import CallError, SmithyError
from smithy_http.aio.crt import (
    AWSCRTHTTPClient,
    AWSCRTHTTPClientConfig,
    ConnectionPoolDict,
    _AWSCRTEventLoop,
)

from sonicgate.domain import ErrorCode
from sonicgate.engines.aws import AwsCredentials, service_error

Stream = Any  # the SDK's DuplexEventStream, generic over its event shapes


class NovaStreamError(Exception):
    """The service refused, throttled or broke the stream; ``code`` says which."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _ConversationTransport(AWSCRTHTTPClient):
    """A conversation's own HTTP/2 connection (one shared by all queued every
    session's audio behind the others': p50 2.4 ms -> 23 ms at 10 sessions), on the
    TLS context and CRT event loop that every conversation shares.

    The base class builds both anew for each client: a TLS context costs milliseconds
    of CPU (the system's trust store is read), an event loop starts threads. Its
    ``__init__`` (smithy-http 0.6.0, pinned) is mirrored here with the shared ones;
    tests/test_nova_sonic.py checks the attributes still match the base's.
    """

    def __init__(self, tls: crt_io.ClientTlsContext) -> None:
        self._config = AWSCRTHTTPClientConfig()
        self._eventloop = _shared_eventloop()
        self._client_bootstrap = self._eventloop.bootstrap
        self._tls_ctx = tls
        self._socket_options = crt_io.SocketOptions()
        self._connections: ConnectionPoolDict = {}
        self._closed = False


@functools.cache
def _shared_eventloop() -> _AWSCRTEventLoop:
    return _AWSCRTEventLoop()


@functools.cache
def _tls_context(ca_file: str | None) -> crt_io.ClientTlsContext:
    """Verifying servers with ``ca_file``, or with the system's trust store."""
    options = crt_io.TlsContextOptions()
    if ca_file:
        options.override_default_trust_store_from_path(ca_filepath=ca_file)
    return crt_io.ClientTlsContext(options)


def crt_transport(ca_file: str | None = None) -> AWSCRTHTTPClient:
    """A conversation's HTTP/2 transport (see ``_ConversationTransport``)."""
    return _ConversationTransport(_tls_context(ca_file))


async def open_client(
    *,
    region: str,
    endpoint_uri: str | None,
    credentials: AwsCredentials | None,
    transport: AWSCRTHTTPClient,
) -> AsyncBedrockRuntimeClient:
    """A client for one conversation; ``credentials`` None means the standard AWS chain."""
    overrides: dict[str, Any] = {"region": region, "transport": transport}
    if endpoint_uri:
        overrides["endpoint_uri"] = endpoint_uri
    if credentials is not None:
        overrides["aws_access_key_id"] = credentials.access_key_id
        overrides["aws_secret_access_key"] = credentials.secret_access_key
        if credentials.session_token:
            overrides["aws_session_token"] = credentials.session_token
    try:
        config = await AsyncBedrockRuntimeConfig.resolve(**overrides)
    except (SmithyError, ValueError) as exc:
        message = _without_secrets(str(exc), credentials)
        raise NovaStreamError(ErrorCode.ENGINE_UNAVAILABLE, message) from None
    return AsyncBedrockRuntimeClient(config=config)


def _without_secrets(message: str, credentials: AwsCredentials | None) -> str:
    """The SDK's words for a setting it refused, which the client is told: a message
    that repeats a value it was given must not repeat a key."""
    if credentials is not None:
        for secret in (credentials.secret_access_key, credentials.session_token):
            if secret:
                message = message.replace(secret, "***")
    return message


async def open_stream(client: AsyncBedrockRuntimeClient, model_id: str) -> Stream:
    try:
        return await client.invoke_model_with_bidirectional_stream(
            InvokeModelWithBidirectionalStreamOperationInput(model_id=model_id)
        )
    except Exception as exc:
        raise _stream_error(exc) from exc


async def await_response(stream: Stream, within: float) -> None:
    """Wait for the service to accept the stream: a refusal (bad credentials, no
    access to the model, throttling) is raised here, not at the first event."""
    try:
        await asyncio.wait_for(stream.await_output(), within)
    except TimeoutError as exc:
        raise NovaStreamError(
            ErrorCode.PROVIDER_UNREACHABLE, f"no answer within {within:.0f} s"
        ) from exc
    except Exception as exc:
        raise _stream_error(exc) from exc


async def send_event(stream: Stream, event: dict[str, Any]) -> None:
    chunk = InvokeModelWithBidirectionalStreamInputChunk(
        value=BidirectionalInputPayloadPart(bytes_=orjson.dumps(event))
    )
    try:
        await stream.input_stream.send(chunk)
    except Exception as exc:
        raise _stream_error(exc) from exc


async def receive_events(stream: Stream) -> AsyncIterator[dict[str, Any]]:
    """The ``event`` object of each output chunk, until the service ends the stream."""
    try:
        _, output = await stream.await_output()
        async for item in output:
            if isinstance(item, InvokeModelWithBidirectionalStreamOutputChunk):
                payload = orjson.loads(item.value.bytes_ or b"{}")
                if isinstance(payload, dict) and isinstance(payload.get("event"), dict):
                    yield payload["event"]
            elif isinstance(item, InvokeModelWithBidirectionalStreamOutputUnknown):
                continue  # a newer event type than this SDK knows
            else:  # a modelled exception event: its value is the error
                raise _stream_error(item.value)
    except NovaStreamError:
        raise
    except Exception as exc:
        raise _stream_error(exc) from exc


async def close_stream(stream: Stream) -> None:
    """End our side; the service then finishes its output and ends the stream."""
    try:
        await stream.input_stream.close()
    except Exception as exc:
        raise _stream_error(exc) from exc


def _stream_error(error: BaseException) -> NovaStreamError:
    if isinstance(error, NovaStreamError):
        return error
    message = getattr(error, "message", "") or str(error) or type(error).__name__
    name = type(error).__name__
    status = getattr(getattr(error, "response_metadata", None), "http_status_code", None)
    # The SDK's own flags say what the name may not: as the status would.
    if getattr(error, "is_throttling_error", False):
        status = 429
    elif isinstance(error, CallError) and error.fault == "server":
        status = status or 500
    if (known := service_error(name, status, message)) is not None:
        return NovaStreamError(*known)
    if isinstance(error, OSError | ConnectionError) or "Connection" in name or "Socket" in name:
        return NovaStreamError(ErrorCode.PROVIDER_UNREACHABLE, message)
    return NovaStreamError(ErrorCode.PROVIDER_ERROR, f"{name}: {message}")
