"""Nova Sonic's event grammar: what we send, and how what comes back maps to our events."""

from __future__ import annotations

import base64
import json

from sonicgate.domain import Message, Role
from sonicgate.engines.nova_sonic import grammar
from sonicgate.engines.nova_sonic.grammar import OutputMapper, ToolUse
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Interrupted,
    ResponseTextDelta,
    ResponseTextFinal,
    TranscriptFinal,
    TurnEnded,
    Usage,
)
from sonicgate.tools import CURRENT_TIME


def content_start(
    content_id: str, role: str, kind: str, stage: str | None = None
) -> grammar.NovaEvent:
    body = {"contentId": content_id, "role": role, "type": kind}
    if stage:
        body["additionalModelFields"] = json.dumps({"generationStage": stage})
    return {"contentStart": body}


def text(content_id: str, role: str, content: str) -> grammar.NovaEvent:
    return {"textOutput": {"contentId": content_id, "role": role, "content": content}}


def end(content_id: str, reason: str) -> grammar.NovaEvent:
    return {"contentEnd": {"contentId": content_id, "stopReason": reason}}


def feed(mapper: OutputMapper, *events: grammar.NovaEvent) -> list[EngineEvent | ToolUse]:
    return [mapped for event in events for mapped in mapper.map(event)]


def test_a_turn_maps_to_transcript_speculative_text_audio_and_final_text() -> None:
    pcm = b"\x01\x00" * 240
    out = feed(
        OutputMapper(),
        {"completionStart": {}},
        content_start("u", "USER", "TEXT", "FINAL"),
        text("u", "USER", "What time is it?"),
        end("u", "END_TURN"),
        content_start("s", "ASSISTANT", "TEXT", "SPECULATIVE"),
        text("s", "ASSISTANT", "It is noon."),
        end("s", "PARTIAL_TURN"),
        content_start("a", "ASSISTANT", "AUDIO"),
        {"audioOutput": {"contentId": "a", "content": base64.b64encode(pcm).decode()}},
        end("a", "PARTIAL_TURN"),
        content_start("f", "ASSISTANT", "TEXT", "FINAL"),
        text("f", "ASSISTANT", "It is noon."),
        end("f", "END_TURN"),
        {"usageEvent": {"totalInputTokens": 12, "totalOutputTokens": 5}},
    )
    assert isinstance(out[0], TranscriptFinal)
    assert out == [
        TranscriptFinal("What time is it?", 1.0, out[0].reason),
        ResponseTextDelta("It is noon."),  # speculative: shown early
        AudioOut(pcm, 24_000),
        ResponseTextFinal("It is noon."),  # final: what the history keeps
        TurnEnded(),
        Usage(12, 5),
    ]


def test_a_barge_in_cuts_the_reply_and_drops_what_follows() -> None:
    mapper = OutputMapper()
    feed(mapper, content_start("u", "USER", "TEXT"), text("u", "USER", "Tell me a story"))
    out = feed(
        mapper,
        content_start("f", "ASSISTANT", "TEXT", "FINAL"),
        text("f", "ASSISTANT", "Once upon a time."),
        content_start("s", "ASSISTANT", "TEXT", "SPECULATIVE"),
        text("s", "ASSISTANT", '{ "interrupted" : true }'),
        {"audioOutput": {"content": base64.b64encode(b"\x00\x10" * 10).decode()}},
        end("a", "INTERRUPTED"),
    )
    assert out == [Interrupted(), ResponseTextFinal("Once upon a time."), TurnEnded(True)]
    again = feed(mapper, content_start("u2", "USER", "TEXT"), text("u2", "USER", "Stop"))
    assert isinstance(again[0], TranscriptFinal)  # the next turn is heard again


def test_a_tool_use_is_handed_to_the_engine() -> None:
    out = feed(
        OutputMapper(),
        content_start("t", "TOOL", "TOOL"),
        {"toolUse": {"toolName": "getCurrentTime", "toolUseId": "42", "content": "{}"}},
        end("t", "TOOL_USE"),
    )
    assert out == [ToolUse("getCurrentTime", "42", "{}")]


def test_history_is_kept_within_novas_limits() -> None:
    long = "x" * 3000
    history = [Message(Role.ASSISTANT, "a greeting first")] + [
        Message(Role.USER if i % 2 == 0 else Role.ASSISTANT, f"{i} {long}") for i in range(60)
    ]
    kept = grammar.fit_history(history)
    assert kept[0].role is Role.USER  # the service wants the first history message USER
    assert all(len(m.text.encode()) <= 1000 for m in kept)
    assert sum(len(m.text.encode()) for m in kept) <= 40_000
    assert kept[-1].text.startswith("59 ")  # the newest are the ones kept


def test_prompt_start_carries_voice_and_tools() -> None:
    event = grammar.prompt_start("p", "tiffany", [CURRENT_TIME])["event"]["promptStart"]
    assert event["audioOutputConfiguration"]["voiceId"] == "tiffany"
    assert event["audioOutputConfiguration"]["sampleRateHertz"] == 24_000
    [tool] = event["toolConfiguration"]["tools"]
    assert tool["toolSpec"]["name"] == "getCurrentTime"
    assert json.loads(tool["toolSpec"]["inputSchema"]["json"])["type"] == "object"


async def test_a_tool_failure_is_told_to_the_model() -> None:
    assert "time" in json.loads(await CURRENT_TIME.run('{"timezone": "Europe/Paris"}'))
    failed = json.loads(await CURRENT_TIME.run('{"timezone": "Mars/Olympus"}'))
    assert "unknown time zone" in failed["error"]
    assert "error" in json.loads(await CURRENT_TIME.run("not json"))
