"""OpenAI's Realtime API as a dialect, served at ``/v1/realtime``: apps written for
it (the ``openai`` SDK's ``client.realtime.connect``) talk to any sonicgate engine.

GA event names out by default; a client that sends ``OpenAI-Beta: realtime=v1``
gets the beta names, and the beta spellings are accepted in. Audio is 24 kHz
pcm16 both ways: in through the decoder's ``pcm16-24k`` format, out resampled
here from whatever rate the engine speaks.

What the gateway's engines do differently: they answer each user turn on
their own (server VAD, or ``input_audio_buffer.commit``, or a text item), so
``response.create`` starts nothing; ``response.cancel`` stops the reply.
"""

from __future__ import annotations

import itertools
from typing import Any

import pybase64

from sonicgate.audio.formats import StreamResampler
from sonicgate.domain import ErrorCode
from sonicgate.events import (
    AudioIn,
    AudioOut,
    Cancel,
    ClientEvent,
    EngineEvent,
    Error,
    Interrupted,
    ResponseTextDelta,
    ResponseTextFinal,
    SpeechStarted,
    Start,
    TextIn,
    TranscriptFinal,
    TurnEnded,
)
from sonicgate.protocol.base import (
    JsonObject,
    ProtocolError,
    SessionView,
    get_base64,
    get_object,
    get_str,
)

RATE = 24_000
# GA name -> beta name, for the events whose names changed.
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
IGNORED = {  # accepted, nothing to do: the engines manage their own buffers and turns
    "response.create",
    "input_audio_buffer.clear",
    "conversation.item.truncate",
    "conversation.item.delete",
    "output_audio_buffer.clear",
}
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):08d}"


class RealtimeDialect:
    name = "realtime"

    def __init__(self, model: str, *, beta: bool = False) -> None:
        self.model = model
        self.beta = beta
        self._created = False
        self._text_only = False
        self._instructions = ""
        self._voice: str | None = None
        self._resamplers: dict[int, StreamResampler] = {}
        self._response: _Response | None = None
        self._user_item: str | None = None

    # Client -> gateway ---------------------------------------------------------

    def opening(self, engine: str | None) -> Start:
        """The session a connection starts with, before the client says anything."""
        return Start(None, "anonymous", audio_format="pcm16-24k", engine=engine)

    def parse(self, message: JsonObject) -> ClientEvent | None:
        kind = get_str(message, "type", required=True)
        if kind == "session.update":
            return self._session_update(get_object(message, "session"))
        if kind == "input_audio_buffer.append":
            return AudioIn(data=get_base64(message, "audio"))
        if kind == "input_audio_buffer.commit":
            return AudioIn(data=b"", end_of_turn=True)
        if kind == "conversation.item.create":
            return TextIn(_user_text(get_object(message, "item")))
        if kind == "response.cancel":
            return Cancel()
        if kind in IGNORED:
            return None
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unsupported client event '{kind}'")

    def _session_update(self, session: JsonObject) -> Start:
        """A new configuration: the session reopens with it, its history kept."""
        modalities = session.get("output_modalities") or session.get("modalities")
        if isinstance(modalities, list):
            self._text_only = "audio" not in modalities
        if isinstance(instructions := session.get("instructions"), str):
            self._instructions = instructions
        output = get_object(get_object(session, "audio"), "output")
        voice = output.get("voice") or session.get("voice")
        if isinstance(voice, str):
            self._voice = voice
        return Start(
            None,  # filled in by the connection: the session it has open
            "anonymous",
            audio_format="pcm16-24k",
            voice=self._voice,
            system_prompt=self._instructions or None,
            text_only=self._text_only,
            reconfigure=True,
        )

    # Gateway -> client ---------------------------------------------------------

    def ready(self, view: SessionView) -> JsonObject:
        kind = "session.updated" if self._created else "session.created"
        self._created = True
        return self._event(kind, session=self._session(view))

    def _session(self, view: SessionView) -> JsonObject:
        audio_format = {"type": "audio/pcm", "rate": RATE}
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": view.session.sessionId,
            "model": self.model,
            "output_modalities": ["text"] if self._text_only else ["audio"],
            "instructions": self._instructions,
            "audio": {
                "input": {"format": audio_format, "turn_detection": {"type": "server_vad"}},
                "output": {"format": audio_format, "voice": self._voice or "default"},
            },
        }

    async def render(self, event: EngineEvent, view: SessionView) -> list[JsonObject]:
        match event:
            case SpeechStarted():
                return self._speech_started()
            case TranscriptFinal(text=text):
                item = self._user_item or new_id("item")
                self._user_item = None
                return [
                    self._event("input_audio_buffer.speech_stopped", item_id=item),
                    self._event("input_audio_buffer.committed", item_id=item),
                    self._event("conversation.item.added", item=_message(item, "user", text)),
                    self._event(
                        "conversation.item.input_audio_transcription.completed",
                        item_id=item,
                        content_index=0,
                        transcript=text,
                    ),
                ]
            case ResponseTextDelta(text=text):
                opened = self._open_response()
                kind = "output_text" if self._text_only else "output_audio_transcript"
                return [*opened, self._part(f"response.{kind}.delta", delta=text)]
            case AudioOut(pcm=pcm, sample_rate=rate):
                opened = self._open_response()
                delta = pybase64.b64encode_as_string(self._to_output_rate(pcm, rate))
                return [*opened, self._part("response.output_audio.delta", delta=delta)]
            case ResponseTextFinal(text=text):
                response = self._response
                if response is None:
                    return []
                response.text = text
                if self._text_only:
                    return [self._part("response.output_text.done", text=text)]
                return [self._part("response.output_audio_transcript.done", transcript=text)]
            case Interrupted():
                # As OpenAI does: the user's speech is the signal to stop playback.
                if self._response is not None:
                    self._response.status = "cancelled"
                return self._speech_started()
            case TurnEnded(interrupted=interrupted):
                return self._close_response("cancelled" if interrupted else "completed")
            case Error(code=code, message=text):
                return [self.error(code, text, view.session.sessionId)]
        return []

    def _speech_started(self) -> list[JsonObject]:
        """Once per user utterance (a barge-in announces it before the engine does)."""
        if self._user_item is not None:
            return []
        self._user_item = new_id("item")
        return [self._event("input_audio_buffer.speech_started", item_id=self._user_item)]

    def _open_response(self) -> list[JsonObject]:
        if self._response is not None:
            return []
        response = self._response = _Response(new_id("resp"), new_id("item"))
        return [
            self._event("response.created", response=response.body("in_progress")),
            self._event(
                "response.output_item.added",
                response_id=response.id,
                output_index=0,
                item=_message(response.item_id, "assistant", "", done=False),
            ),
        ]

    def _close_response(self, status: str) -> list[JsonObject]:
        response, self._response = self._response, None
        if response is None:
            return []
        status = "cancelled" if response.status == "cancelled" else status
        done = [] if self._text_only else [self._part_of(response, "response.output_audio.done")]
        item = _message(response.item_id, "assistant", response.text)
        return [
            *done,
            self._event(
                "response.output_item.done", response_id=response.id, output_index=0, item=item
            ),
            self._event("response.done", response=response.body(status, [item])),
        ]

    def _to_output_rate(self, pcm: bytes, rate: int) -> bytes:
        if rate == RATE:
            return pcm
        resampler = self._resamplers.setdefault(rate, StreamResampler(rate, RATE))
        return resampler.feed(pcm)

    def _part(self, kind: str, **fields: Any) -> JsonObject:
        assert self._response is not None
        return self._part_of(self._response, kind, **fields)

    def _part_of(self, response: _Response, kind: str, **fields: Any) -> JsonObject:
        return self._event(
            kind,
            response_id=response.id,
            item_id=response.item_id,
            output_index=0,
            content_index=0,
            **fields,
        )

    def _event(self, kind: str, **fields: Any) -> JsonObject:
        name = BETA_NAMES.get(kind, kind) if self.beta else kind
        return {"type": name, "event_id": new_id("event"), **fields}

    def error(self, code: ErrorCode, message: str, session_id: str | None) -> JsonObject:
        # What may pass by itself is the server's side; the rest, the request's.
        kind = "server_error" if code.retryable else "invalid_request_error"
        return self._event("error", error={"type": kind, "code": code, "message": message})

    def ended(self, view: SessionView) -> JsonObject:
        return self._event("session.ended", session_id=view.session.sessionId)


class _Response:
    def __init__(self, response_id: str, item_id: str) -> None:
        self.id = response_id
        self.item_id = item_id
        self.text = ""
        self.status = "in_progress"

    def body(self, status: str, output: list[JsonObject] | None = None) -> JsonObject:
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": status,
            "output": output or [],
        }


def _message(item_id: str, role: str, text: str, *, done: bool = True) -> JsonObject:
    kind = "input_text" if role == "user" else "output_text"
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": role,
        "status": "completed" if done else "in_progress",
        "content": [{"type": kind, "text": text}] if text else [],
    }


def _user_text(item: JsonObject) -> str:
    if item.get("type") != "message" or item.get("role") != "user":
        raise ProtocolError(ErrorCode.INVALID_FIELD, "only user text messages can be added")
    content = item.get("content")
    texts = (
        [
            part.get("text")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("input_text", "text")
        ]
        if isinstance(content, list)
        else []
    )
    text = " ".join(t for t in texts if isinstance(t, str)).strip()
    if not text:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "the item has no text")
    return text
