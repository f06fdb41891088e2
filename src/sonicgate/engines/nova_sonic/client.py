"""The Bedrock bidirectional stream through the smithy SDK, reduced to what we use.

``open_client`` builds an SDK client on the CRT HTTP/2 transport (the default
aiohttp transport cannot carry a duplex stream); ``open_stream`` starts
``InvokeModelWithBidirectionalStream``; events go in and out as the JSON of
Nova's grammar. Every failure the SDK or the service reports comes out as one
``NovaStreamError`` with a stable ``code``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

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
from smithy_http.aio.crt import AWSCRTHTTPClient

from sonicgate.domain import ErrorCode
from sonicgate.engines.aws import AwsCredentials, service_error

Stream = Any  # the SDK's DuplexEventStream, generic over its event shapes


class NovaStreamError(Exception):
    """The service refused, throttled or broke the stream; ``code`` says which."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _TrustingCRTClient(AWSCRTHTTPClient):
    """The CRT client verifying servers with a given CA bundle (it builds its TLS
    context in ``__init__``, with no option for one)."""

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        options = crt_io.TlsContextOptions()
        options.override_default_trust_store_from_path(ca_filepath=ca_file)
        self._tls_ctx = crt_io.ClientTlsContext(options)


def crt_transport(ca_file: str | None = None) -> AWSCRTHTTPClient:
    """The HTTP/2 transport; one serves every conversation (its connections are pooled)."""
    return _TrustingCRTClient(ca_file) if ca_file else AWSCRTHTTPClient()


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
        raise NovaStreamError(ErrorCode.ENGINE_UNAVAILABLE, str(exc)) from exc
    return AsyncBedrockRuntimeClient(config=config)


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
        value=BidirectionalInputPayloadPart(bytes_=json.dumps(event).encode())
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
                payload = json.loads(item.value.bytes_ or b"{}")
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
