"""Nova Sonic's event grammar: input events built, output events mapped to ours.

The wire dialect of the engine side, kept as thin as the client dialects:
builders return the JSON of one input event (``{"event": {...}}``), and
``OutputMapper`` turns the service's output events into internal events.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pybase64

from sonicgate.domain import Message, Role
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Interrupted,
    ResponseTextDelta,
    ResponseTextFinal,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
    Usage,
)
from sonicgate.tools import Tool

NovaEvent = dict[str, Any]
OUTPUT_SAMPLE_RATE = 24_000
MAX_HISTORY_BYTES = 40_000  # the service's limits on seeded history
MAX_MESSAGE_BYTES = 1_000
INTERRUPTED = '{ "interrupted" : true }'

_LPCM = {"mediaType": "audio/lpcm", "sampleSizeBits": 16, "channelCount": 1}
_TEXT = {"mediaType": "text/plain"}


def _event(name: str, body: dict[str, Any]) -> NovaEvent:
    return {"event": {name: body}}


def session_start(
    *, max_tokens: int, top_p: float, temperature: float, endpointing: str | None
) -> NovaEvent:
    body: dict[str, Any] = {
        "inferenceConfiguration": {
            "maxTokens": max_tokens,
            "topP": top_p,
            "temperature": temperature,
        }
    }
    if endpointing is not None:  # Nova 2 only
        body["turnDetectionConfiguration"] = {"endpointingSensitivity": endpointing}
    return _event("sessionStart", body)


def prompt_start(prompt: str, voice: str, tools: Sequence[Tool]) -> NovaEvent:
    body: dict[str, Any] = {
        "promptName": prompt,
        "textOutputConfiguration": _TEXT,
        "audioOutputConfiguration": {
            **_LPCM,
            "sampleRateHertz": OUTPUT_SAMPLE_RATE,
            "voiceId": voice,
            "encoding": "base64",
            "audioType": "SPEECH",
        },
    }
    if tools:
        body["toolUseOutputConfiguration"] = {"mediaType": "application/json"}
        body["toolConfiguration"] = {
            "tools": [
                {
                    "toolSpec": {
                        "name": tool.name,
                        "description": tool.description,
                        "inputSchema": {"json": json.dumps(tool.input_schema)},
                    }
                }
                for tool in tools
            ]
        }
    return _event("promptStart", body)


def text_content(
    prompt: str, content: str, role: str, text: str, *, interactive: bool = False
) -> list[NovaEvent]:
    """A whole text block: system prompt, a history message, or a typed turn (Nova 2)."""
    return [
        _event(
            "contentStart",
            {
                "promptName": prompt,
                "contentName": content,
                "type": "TEXT",
                "interactive": interactive,
                "role": role,
                "textInputConfiguration": _TEXT,
            },
        ),
        _event("textInput", {"promptName": prompt, "contentName": content, "content": text}),
        content_end(prompt, content),
    ]


def audio_start(prompt: str, content: str) -> NovaEvent:
    return _event(
        "contentStart",
        {
            "promptName": prompt,
            "contentName": content,
            "type": "AUDIO",
            "interactive": True,
            "role": "USER",
            "audioInputConfiguration": {
                **_LPCM,
                "sampleRateHertz": 16_000,
                "audioType": "SPEECH",
                "encoding": "base64",
            },
        },
    )


def audio_input(prompt: str, content: str, pcm: bytes) -> NovaEvent:
    return _event(
        "audioInput",
        {
            "promptName": prompt,
            "contentName": content,
            "content": pybase64.b64encode_as_string(pcm),
        },
    )


def tool_result(prompt: str, content: str, tool_use_id: str, result: str) -> list[NovaEvent]:
    return [
        _event(
            "contentStart",
            {
                "promptName": prompt,
                "contentName": content,
                "interactive": False,
                "type": "TOOL",
                "role": "TOOL",
                "toolResultInputConfiguration": {
                    "toolUseId": tool_use_id,
                    "type": "TEXT",
                    "textInputConfiguration": _TEXT,
                },
            },
        ),
        _event("toolResult", {"promptName": prompt, "contentName": content, "content": result}),
        content_end(prompt, content),
    ]


def content_end(prompt: str, content: str) -> NovaEvent:
    return _event("contentEnd", {"promptName": prompt, "contentName": content})


def prompt_end(prompt: str) -> NovaEvent:
    return _event("promptEnd", {"promptName": prompt})


def session_end() -> NovaEvent:
    return _event("sessionEnd", {})


def fit_history(history: Sequence[Message]) -> list[Message]:
    """The most recent history within Nova's limits, starting with a user message.

    Each message is cut to 1 KB (on a character boundary), and the oldest are
    dropped until the whole is under 40 KB.
    """
    kept: list[Message] = []
    total = 0
    for message in reversed(history):
        text = message.text.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore")
        if total + len(text.encode()) > MAX_HISTORY_BYTES:
            break
        total += len(text.encode())
        kept.append(Message(message.role, text))
    kept.reverse()
    while kept and kept[0].role is not Role.USER:
        kept.pop(0)
    return kept


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The model asks for a tool to run; the engine answers with ``tool_result``."""

    name: str
    tool_use_id: str
    arguments: str


@dataclass(slots=True)
class _Content:
    role: str
    kind: str
    final: bool  # generationStage FINAL (or none given): text kept in history


class OutputMapper:
    """Maps one stream's output events to internal events, turn by turn."""

    def __init__(self) -> None:
        self._contents: dict[str, _Content] = {}
        self._current: _Content | None = None
        self._final_text: list[str] = []
        self._in_turn = False  # an assistant reply is under way
        self._cut = False  # the user barged in: the rest of this reply is dropped

    @property
    def replying(self) -> bool:
        return self._in_turn

    def map(self, event: NovaEvent) -> list[EngineEvent | ToolUse]:
        [(name, body)] = event.items()
        match name:
            case "contentStart":
                return self._content_start(body)
            case "textOutput":
                return self._text(body)
            case "audioOutput":
                if self._cut:
                    return []
                self._in_turn = True
                pcm = pybase64.b64decode(body.get("content", ""))
                return [AudioOut(pcm, OUTPUT_SAMPLE_RATE)] if pcm else []
            case "toolUse":
                return [
                    ToolUse(
                        str(body.get("toolName", "")),
                        str(body.get("toolUseId", "")),
                        str(body.get("content", "")),
                    )
                ]
            case "contentEnd":
                return self._content_end(body)
            case "usageEvent":
                return [
                    Usage(
                        int(body.get("totalInputTokens", 0)),
                        int(body.get("totalOutputTokens", 0)),
                    )
                ]
        return []  # completionStart/End and anything newer: nothing to tell

    def _content_start(self, body: dict[str, Any]) -> list[EngineEvent | ToolUse]:
        stage = "FINAL"
        fields = body.get("additionalModelFields")
        if isinstance(fields, str) and fields:
            stage = str(json.loads(fields).get("generationStage", "FINAL"))
        content = _Content(str(body.get("role", "")), str(body.get("type", "")), stage == "FINAL")
        self._contents[str(body.get("contentId", ""))] = content
        self._current = content
        return []

    def _content_of(self, body: dict[str, Any]) -> _Content | None:
        return self._contents.get(str(body.get("contentId", ""))) or self._current

    def _text(self, body: dict[str, Any]) -> list[EngineEvent | ToolUse]:
        text = str(body.get("content", ""))
        content = self._content_of(body)
        role = str(body.get("role", content.role if content else ""))
        if role == "USER":
            # A new user turn: Nova endpoints by itself (no confidence is reported).
            self._cut = False
            return [TranscriptFinal(text.strip(), 1.0, TriggerReason.SILENCE)]
        if role != "ASSISTANT" or self._cut:
            return []
        if text.replace(" ", "") == INTERRUPTED.replace(" ", ""):
            return self._interrupted()
        self._in_turn = True
        if content is not None and content.final:
            self._final_text.append(text.strip())
            return []
        return [ResponseTextDelta(text)]

    def _content_end(self, body: dict[str, Any]) -> list[EngineEvent | ToolUse]:
        content = self._content_of(body)
        reason = body.get("stopReason")
        if reason == "INTERRUPTED" and not self._cut:
            return self._interrupted()
        if (
            reason == "END_TURN"
            and content is not None
            and content.role == "ASSISTANT"
            and content.kind == "TEXT"
            and content.final
            and not self._cut
        ):
            return self._turn_over(interrupted=False)
        return []

    def _interrupted(self) -> list[EngineEvent | ToolUse]:
        self._cut = True
        return [Interrupted(), *self._turn_over(interrupted=True)]

    def _turn_over(self, *, interrupted: bool) -> list[EngineEvent | ToolUse]:
        text = " ".join(part for part in self._final_text if part)
        self._final_text.clear()
        self._in_turn = False
        return [ResponseTextFinal(text), TurnEnded(interrupted=interrupted)]
