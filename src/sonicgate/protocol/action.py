"""The first seed's dialect: client messages carry ``action``.

Replies are whole: ``voice_response_triggered`` carries the transcript, the
reply text and the reply audio as an mp3 data URL, so this adapter collects a
turn's events until the turn ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sonicgate.audio.formats import mp3_data_url
from sonicgate.domain import ErrorCode, utc_now
from sonicgate.events import (
    AudioIn,
    AudioOut,
    ClientEvent,
    End,
    EngineEvent,
    Error,
    ResponseTextFinal,
    Start,
    TranscriptFinal,
    TranscriptPartial,
    TurnEnded,
)
from sonicgate.protocol.base import (
    JsonObject,
    ProtocolError,
    SessionView,
    get_base64,
    get_bool,
    get_object,
    get_sequence,
    get_str,
)

ACTIONS = ("voice_session_start", "voice_chunk", "voice_data", "voice_session_end")
# A reply's audio is collected for one mp3: its first two minutes at most.
MAX_REPLY_SECONDS = 120


class ActionDialect:
    name = "action"

    def __init__(self) -> None:
        self._transcript: TranscriptFinal | None = None
        self._reply = ""
        self._audio = bytearray()
        self._audio_rate = 0

    def parse(self, message: JsonObject) -> ClientEvent:
        action = get_str(message, "action", required=True)
        data = get_object(message, "data")
        if action == "voice_session_start":
            return Start(
                session_id=get_str(message, "sessionId"),
                user_id=get_str(message, "userId") or "anonymous",
                audio_format=get_str(data, "audioFormat") or "webm",
                language=get_str(data, "language") or "en-US",
                engine=get_str(data, "engine"),
                voice=get_str(data, "voice"),
                system_prompt=get_str(data, "systemPrompt"),
            )
        if action == "voice_session_end":
            return End()
        if action == "voice_chunk":
            return AudioIn(
                data=get_base64(data, "audioData"),
                audio_format=get_str(data, "audioFormat"),
                sequence=get_sequence(data),
                end_of_turn=get_bool(data, "isFinal"),
            )
        if action == "voice_data":
            return AudioIn(
                data=get_base64(data, "audioData"),
                audio_format=get_str(data, "audioFormat"),
                complete_recording=True,
            )
        raise ProtocolError(
            ErrorCode.UNKNOWN_ACTION,
            f"unknown action '{action}'; expected one of {', '.join(ACTIONS)}",
        )

    def ready(self, view: SessionView) -> JsonObject:
        return {
            "type": "voice_session_initialized",
            "sessionId": view.session.sessionId,
            "novaSonicSessionId": view.session.novaSonicSessionId,
            "status": "ready",
            "capabilities": {
                "transcription": True,
                "synthesis": True,
                "streaming": True,
                "realTimeProcessing": True,
                "languages": list(view.capabilities.languages),
                "models": list(view.capabilities.models),
            },
            "resumed": view.resumed,
            "timestamp": utc_now(),
        }

    async def render(self, event: EngineEvent, view: SessionView) -> list[JsonObject]:
        session_id = view.session.sessionId
        match event:
            case TranscriptPartial(text=text, confidence=confidence):
                data = {
                    "partialTranscription": text,
                    "sequenceNumber": view.last_sequence,
                    "confidence": round(confidence, 3),
                    "language": view.language,
                }
                return [_message("voice_transcription_partial", session_id, data)]
            case TranscriptFinal():
                self._transcript = event
            case ResponseTextFinal(text=text):
                self._reply = text
            case AudioOut(pcm=pcm, sample_rate=rate):
                self._audio += pcm[: max(0, MAX_REPLY_SECONDS * rate * 2 - len(self._audio))]
                self._audio_rate = rate
            case TurnEnded(interrupted=interrupted):
                return [await self._response(session_id, interrupted)]
            case Error(code=code, message=text):
                return [self.error(code, text, session_id)]
        return []

    async def _response(self, session_id: str, interrupted: bool) -> JsonObject:
        pcm = bytes(self._audio)
        audio = await asyncio.to_thread(mp3_data_url, pcm, self._audio_rate) if pcm else ""
        transcript = self._transcript
        data: dict[str, Any] = {
            "transcription": transcript.text if transcript else "",
            "aiResponse": self._reply,
            "audioResponse": audio,
            "triggerReason": str(transcript.reason) if transcript else "text_message",
        }
        if interrupted:
            data["interrupted"] = True
        self._transcript, self._reply, self._audio = None, "", bytearray()
        return _message("voice_response_triggered", session_id, data)

    def error(self, code: ErrorCode, message: str, session_id: str | None) -> JsonObject:
        return _message("voice_error", session_id, {"code": code, "message": message})

    def ended(self, view: SessionView) -> JsonObject:
        session = view.session
        data = {
            "status": str(session.status),
            "totalDuration": session.totalDuration,
            "messageCount": session.messageCount,
        }
        return _message("voice_session_ended", session.sessionId, data)


def _message(kind: str, session_id: str | None, data: JsonObject) -> JsonObject:
    return {"type": kind, "sessionId": session_id, "data": data, "timestamp": utc_now()}
