"""The second seed's dialect: messages carry ``type``.

Replies stream: transcripts, reply text deltas and pcm16 audio chunks are sent
as they happen. Some messages go beyond the seed and are safe for its clients
to ignore: ``interrupted`` (stop playback now) and ``metrics`` (per-turn
latency stages), plus ``isFinal`` flags.
"""

from __future__ import annotations

import pybase64

from sonicgate.domain import ErrorCode, utc_now
from sonicgate.events import (
    AudioIn,
    AudioOut,
    ClientEvent,
    End,
    EngineEvent,
    Error,
    Interrupted,
    Metrics,
    ResponseTextDelta,
    ResponseTextFinal,
    Start,
    TextIn,
    TranscriptFinal,
    TranscriptPartial,
    Usage,
)
from sonicgate.protocol.base import (
    JsonObject,
    ProtocolError,
    SessionView,
    get_base64,
    get_bool,
    get_sequence,
    get_str,
)

TYPES = ("initialize", "audio_chunk", "text_message", "end_conversation")

# initialize fields that are secrets: passed to the engine, never kept.
CREDENTIAL_FIELDS = {
    "awsAccessKeyId": "aws_access_key_id",
    "awsSecretAccessKey": "aws_secret_access_key",
    "awsSessionToken": "aws_session_token",
    "awsRegion": "aws_region",
    "openaiApiKey": "openai_api_key",
}


class TypedDialect:
    name = "type"

    def parse(self, message: JsonObject) -> ClientEvent:
        kind = get_str(message, "type", required=True)
        if kind == "initialize":
            credentials = {
                internal: value
                for wire, internal in CREDENTIAL_FIELDS.items()
                if (value := get_str(message, wire))
            }
            return Start(
                session_id=get_str(message, "sessionId"),
                user_id=get_str(message, "userId") or "anonymous",
                audio_format=get_str(message, "audioFormat") or "pcm16",
                language=get_str(message, "language") or "en-US",
                engine=get_str(message, "engine"),
                voice=get_str(message, "voice"),
                system_prompt=get_str(message, "systemPrompt"),
                text_only=get_bool(message, "textOnly"),
                credentials=credentials,
            )
        if kind == "audio_chunk":
            return AudioIn(
                data=get_base64(message, "audio"),
                audio_format=get_str(message, "audioFormat"),
                sequence=get_sequence(message),
                end_of_turn=get_bool(message, "isComplete"),
            )
        if kind == "text_message":
            text = get_str(message, "text", required=True)
            if not text or not text.strip():
                raise ProtocolError(ErrorCode.INVALID_FIELD, "'text' must not be empty")
            return TextIn(text=text.strip())
        if kind == "end_conversation":
            return End()
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown type '{kind}'; expected one of {', '.join(TYPES)}"
        )

    def ready(self, view: SessionView) -> JsonObject:
        session = view.session
        return {
            "type": "initialized",
            "sessionId": session.sessionId,
            "novaSonicSessionId": session.novaSonicSessionId,
            "status": "ready",
            "engine": view.engine,
            "resumed": view.resumed,
            "messageCount": session.messageCount,
            "capabilities": {
                "languages": list(view.capabilities.languages),
                "models": list(view.capabilities.models),
                "voices": list(view.capabilities.voices),
            },
            "inputAudio": {"format": session.audioFormat, "sampleRate": 16000, "channels": 1},
            "outputAudio": {
                "format": "pcm16",
                "sampleRate": view.output_sample_rate,
                "channels": 1,
            },
            "timestamp": utc_now(),
        }

    async def render(self, event: EngineEvent, view: SessionView) -> list[JsonObject]:
        session_id = view.session.sessionId
        match event:
            case TranscriptPartial(text=text, confidence=confidence):
                return [_transcription(session_id, text, confidence, final=False)]
            case TranscriptFinal(text=text, confidence=confidence):
                return [_transcription(session_id, text, confidence, final=True)]
            case ResponseTextDelta(text=text):
                return [_text(session_id, text, final=False)]
            case ResponseTextFinal(text=text):
                return [_text(session_id, text, final=True)]
            case AudioOut(pcm=pcm, sample_rate=rate):
                return [
                    {
                        "type": "audio_response",
                        "sessionId": session_id,
                        "audio": pybase64.b64encode_as_string(pcm),
                        "format": "pcm16",
                        "sampleRate": rate,
                        "channels": 1,
                    }
                ]
            case Interrupted():
                return [{"type": "interrupted", "sessionId": session_id}]
            case Metrics(stages=stages):
                return [{"type": "metrics", "sessionId": session_id, "stages": stages}]
            case Usage(input_tokens=used_in, output_tokens=used_out):
                return [
                    {
                        "type": "usage",
                        "sessionId": session_id,
                        "inputTokens": used_in,
                        "outputTokens": used_out,
                    }
                ]
            case Error(code=code, message=text):
                return [self.error(code, text, session_id)]
        return []

    def error(self, code: ErrorCode, message: str, session_id: str | None) -> JsonObject:
        return {
            "type": "error",
            "sessionId": session_id,
            "code": code,
            "error": message,
            "message": message,
            "timestamp": utc_now(),
        }

    def ended(self, view: SessionView) -> JsonObject:
        session = view.session
        return {
            "type": "conversation_ended",
            "sessionId": session.sessionId,
            "status": str(session.status),
            "messageCount": session.messageCount,
            "totalDuration": session.totalDuration,
            "timestamp": utc_now(),
        }


def _transcription(session_id: str, text: str, confidence: float, *, final: bool) -> JsonObject:
    return {
        "type": "transcription",
        "sessionId": session_id,
        "text": text,
        "isFinal": final,
        "confidence": round(confidence, 3),
        "role": "user",
    }


def _text(session_id: str, text: str, *, final: bool) -> JsonObject:
    return {"type": "text_response", "sessionId": session_id, "text": text, "isFinal": final}
