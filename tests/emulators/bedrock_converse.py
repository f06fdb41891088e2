"""A wire-level emulator of Bedrock's ConverseStream for the real boto3 client.

HTTP/1.1 on 127.0.0.1: ``POST /model/{modelId}/converse-stream`` with a JSON
body, answered as ``application/vnd.amazon.eventstream`` frames (messageStart,
contentBlockDelta a few words at a time, contentBlockStop, messageStop,
metadata). Like the service it wants a SigV4 ``Authorization`` header from a
known access key, and a conversation that opens with the user, alternates
roles and has no blank text (a 400 ``ValidationException`` otherwise). Errors
are JSON bodies named by ``x-amzn-ErrorType``, as AWS's JSON protocols send
them. It fails on demand: an HTTP status with the service's error, or a
connection dropped in the middle of a reply.

The reply depends on the request, so tests see what got through: it counts the
user messages and repeats the last one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port
from tests.emulators.http import Served
from tests.emulators.nova_sonic import frame
from tests.emulators.openai_api import DroppedConnection

ERRORS = {
    403: ("AccessDeniedException", "You don't have access to the model with this model ID."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error."),
}


def reply_to(messages: list[dict[str, Any]]) -> str:
    """What the emulated model answers: how many user messages it got, and the last."""
    users = [m for m in messages if m["role"] == "user"]
    last = " ".join(block["text"] for block in users[-1]["content"])
    return f"I got {len(users)} user messages. You said: {last}"


def event(kind: str, payload: dict[str, Any]) -> bytes:
    headers = {
        ":message-type": "event",
        ":event-type": kind,
        ":content-type": "application/json",
    }
    return frame(headers, json.dumps(payload).encode())


def error(status: int, kind: str, message: str) -> Response:
    # The suffix after ':' is what the service sends; botocore keeps the part before.
    headers = {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def invalid(body: dict[str, Any]) -> str | None:
    """What the service's validation would say about the request, if anything."""
    if any(not str(block.get("text", "")).strip() for block in body.get("system", [])):
        return "The text field in a SystemContentBlock is blank."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "A conversation must start with a user message."
    previous = None
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if index == 0 and role != "user":
            return "A conversation must start with a user message. Try again with a conversation that starts with a user message."  # noqa: E501
        if role not in ("user", "assistant"):
            return f"messages.{index}.role: must be user or assistant"
        if role == previous:
            return "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again."  # noqa: E501
        if not isinstance(content, list) or not content:
            return f"messages.{index}.content: the content field is empty"
        for place, block in enumerate(content):
            if not str(block.get("text", "")).strip():
                return f"The text field in the ContentBlock object at messages.{index}.content.{place} is blank. Add text to the text field, and try again."  # noqa: E501
        previous = role
    return None


@dataclass
class BedrockEmulator(Served):
    allowed_keys: set[str] = field(default_factory=lambda: {"AKIDEXAMPLE"})
    fail: int | None = None  # answer every request with this status (403, 429, 500)
    drop_after_frames: int | None = None  # cut the connection after this many deltas
    words_per_frame: int = 3
    frame_delay: float = 0.01
    requests: list[dict[str, Any]] = field(default_factory=list)  # the valid bodies
    keys_seen: list[str] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    # Set when a reply stops before its end (the client closed it, or it was dropped).
    cut_short: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = field(default_factory=free_port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/model/{model_id}/converse-stream", self.converse_stream, methods=["POST"])
            ]
        )

    async def converse_stream(self, request: Request) -> Response:
        authorization = request.headers.get("authorization", "")
        credential = authorization.partition("Credential=")[2]
        if not authorization.startswith("AWS4-HMAC-SHA256 ") or "Signature=" not in authorization:
            return error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        key = credential.split("/")[0]
        self.keys_seen.append(key)
        if key not in self.allowed_keys:
            return error(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        if self.fail is not None:
            return error(self.fail, *ERRORS[self.fail])
        body = await request.json()
        problem = invalid(body)
        if problem is not None:
            return error(400, "ValidationException", problem)
        self.model_ids.append(request.path_params["model_id"])
        self.requests.append(body)
        words = reply_to(body["messages"]).split(" ")
        return StreamingResponse(
            self.frames(words), media_type="application/vnd.amazon.eventstream"
        )

    async def frames(self, words: list[str]) -> AsyncIterator[bytes]:
        finished = False
        try:
            yield event("messageStart", {"role": "assistant"})
            for count, start in enumerate(range(0, len(words), self.words_per_frame)):
                if count == self.drop_after_frames:
                    raise DroppedConnection
                text = " ".join(words[start : start + self.words_per_frame])
                delta = {"contentBlockIndex": 0, "delta": {"text": (" " if start else "") + text}}
                yield event("contentBlockDelta", delta)
                await asyncio.sleep(self.frame_delay)
            yield event("contentBlockStop", {"contentBlockIndex": 0})
            yield event("messageStop", {"stopReason": "end_turn"})
            usage = {"inputTokens": 20, "outputTokens": len(words), "totalTokens": 20 + len(words)}
            yield event("metadata", {"usage": usage, "metrics": {"latencyMs": 50}})
            finished = True
        finally:
            if not finished:
                self.cut_short.set()
