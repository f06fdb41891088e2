"""Twilio Media Streams as a dialect: a phone call to any engine.

Twilio sends ``connected`` and ``start``, then ``media`` (20 ms of the caller's μ-law
at 8 kHz each), ``mark`` (ours, echoed once played), ``dtmf`` and ``stop``; it takes
``media``, ``mark`` and ``clear`` back, and nothing else. The route reads ``connected``
and ``start`` itself, as they say who is calling (``server/twilio.py``); the dialect
takes the call from there:

- the caller's audio goes to the engine as 16 kHz pcm16, keypresses as text;
- reply audio goes out in 20 ms frames at the pace of the call (``Playout``), with a
  ``mark`` after each piece of it;
- the caller speaking over a reply gets ``clear``: Twilio drops what it has queued,
  and so does the playout;
- the marks Twilio echoes say what the caller heard, and that is what the history
  keeps of a reply (``heard_replies``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pybase64

from sonicgate.audio.telephony import FRAME_SECONDS, CallerAudio, ReplyAudio
from sonicgate.domain import ErrorCode
from sonicgate.events import (
    AudioIn,
    AudioOut,
    ClientEvent,
    End,
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
from sonicgate.protocol.base import JsonObject, ProtocolError, SessionView, get_base64, get_object

OUTBOUND = frozenset({"media", "mark", "clear"})  # all that Twilio takes from a server
# The stream's <Parameter>s that choose the engine, as initialize's fields do.
STREAM_PARAMETERS = ("engine", "voice", "language", "systemPrompt")
GRANT_PARAMETER = "grant"  # the webhook's seal on the call (server/twilio.py)
TOKEN_PARAMETER = "token"  # the caller's credential, with access control on
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
# How far ahead of the caller's ear frames go out: enough for the network's jitter;
# ``clear`` empties Twilio's queue anyway.
PLAYOUT_LEAD = 0.1
# Seconds of reply audio between two marks when the engine does not say which words
# a chunk speaks (with words, every chunk gets its own).
MARK_EVERY = 0.5
KEYS = frozenset("0123456789*#ABCD")
MARK_NAME = re.compile(r"(\d{1,9})\.\d{1,9}")

Send = Callable[[JsonObject], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CallStart:
    """What Twilio's ``start`` says of the call."""

    stream_sid: str
    call_sid: str
    account_sid: str
    sequence: int  # the message's sequenceNumber: the next must be higher
    parameters: dict[str, str]  # the STREAM_PARAMETERS given
    grant: str | None = None
    credential: str | None = field(default=None, repr=False)  # never logged


def read_start(message: JsonObject) -> CallStart:
    """Raises ``ProtocolError`` for a start the call cannot go on with."""
    start = get_object(message, "start")
    media_format = get_object(start, "mediaFormat")
    if any(media_format.get(key) != value for key, value in MEDIA_FORMAT.items()):
        raise ProtocolError(ErrorCode.AUDIO_FORMAT, f"the stream must carry {MEDIA_FORMAT}")
    custom = get_object(start, "customParameters")
    given = {name: value for name, value in custom.items() if isinstance(value, str)}
    return CallStart(
        stream_sid=_text(start, "streamSid"),
        call_sid=_text(start, "callSid"),
        account_sid=_text(start, "accountSid"),
        sequence=_sequence(message) or 0,
        parameters={name: given[name] for name in STREAM_PARAMETERS if given.get(name)},
        grant=given.get(GRANT_PARAMETER),
        credential=given.get(TOKEN_PARAMETER),
    )


class Playout:
    """Reply audio on its way to the caller, sent at the pace of the call.

    A frame goes out once the caller is no more than ``PLAYOUT_LEAD`` from hearing
    everything sent before it; a mark right after the frames it follows. ``run`` is
    the call's sender task; the clock is injectable, for tests."""

    def __init__(
        self,
        stream_sid: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._stream_sid = stream_sid
        self._clock = clock
        self._sleep = sleep
        # μ-law frames, marks' names, and None: tell Twilio to drop what it holds.
        self._queue: deque[bytes | str | None] = deque()
        self._queued = asyncio.Event()
        self._playhead = 0.0  # when the caller will have heard everything sent

    def add(self, frames: list[bytes], mark: str | None = None) -> None:
        self._queue.extend(frames)
        if mark is not None:
            self._queue.append(mark)
        if self._queue:
            self._queued.set()

    def clear(self, tell_twilio: bool = False) -> None:
        """Drop what was not sent; Twilio is told to drop the rest (by the caller, or
        with ``tell_twilio`` by this sender)."""
        self._queue.clear()
        self._queued.clear()
        self._playhead = self._clock()
        if tell_twilio:
            self._queue.append(None)
            self._queued.set()

    @property
    def playing(self) -> bool:
        return bool(self._queue) or self._playhead > self._clock()

    async def run(self, send: Send) -> None:
        while True:
            await self._queued.wait()
            ahead = self._playhead - self._clock()
            if isinstance(self._queue[0], bytes) and ahead > PLAYOUT_LEAD:
                await self._sleep(ahead - PLAYOUT_LEAD)
                continue  # a clear may have emptied the queue meanwhile
            item = self._queue.popleft()
            if not self._queue:
                self._queued.clear()
            if isinstance(item, bytes):
                self._playhead = max(self._playhead, self._clock()) + FRAME_SECONDS
                payload = pybase64.b64encode_as_string(item)
                await send(self._message("media", media={"payload": payload}))
            elif item is None:
                await send(self._message("clear"))
            else:
                await send(self._message("mark", mark={"name": item}))

    def _message(self, kind: str, **fields: object) -> JsonObject:
        return {"event": kind, "streamSid": self._stream_sid, **fields}


@dataclass(slots=True)
class _Piece:
    """Reply audio between two marks."""

    text: str = ""  # its words, when the engine said them
    seconds: float = 0.0


@dataclass(eq=False, slots=True)
class _Reply:
    """One reply, as sent and as played."""

    number: int
    text: str = ""  # the engine's account: its deltas, then its final text
    pieces: int = 0  # marks sent
    unplayed: dict[str, _Piece] = field(default_factory=dict)  # by mark, until echoed
    played_words: list[str] = field(default_factory=list)
    played_seconds: float = 0.0
    sent_seconds: float = 0.0
    worded: bool = False  # the engine said which words each chunk speaks
    finished: bool = False  # the engine has said all of it
    cut: bool = False  # the caller spoke over it: what was not echoed was not heard

    @property
    def settled(self) -> bool:
        return self.cut or (self.finished and not self.unplayed)

    def heard(self) -> str:
        if not self.played_seconds:
            return ""
        if self.finished and not self.unplayed and not self.cut:
            return self.text.strip()
        if self.worded:
            return " ".join(self.played_words)
        # Words in proportion to the audio played: an estimate, for engines that stream
        # audio and words apart.
        words = self.text.split()
        return " ".join(words[: round(len(words) * self.played_seconds / self.sent_seconds)])


class TwilioDialect:
    name = "twilio"

    def __init__(self, call: CallStart, playout: Playout) -> None:
        self.call = call
        self._playout = playout
        self._caller = CallerAudio()
        self._reply_audio = ReplyAudio()
        self._sequence = call.sequence
        self._replies: dict[int, _Reply] = {}  # by number, until the session takes them
        self._numbered = 0
        self._reply: _Reply | None = None  # the one the engine is producing
        self._unmarked = _Piece()  # audio of it sent since its last mark
        self._cut = False  # a reply was cleared: what is left of it is dropped

    def opening(self) -> Start:
        """The session the call opens: resumed when the call (its callSid) had one."""
        chosen = self.call.parameters
        return Start(
            session_id=self.call.call_sid,
            user_id=f"twilio:{self.call.account_sid}",
            language=chosen.get("language") or "en-US",
            engine=chosen.get("engine"),
            voice=chosen.get("voice"),
            system_prompt=chosen.get("systemPrompt"),
        )

    # Twilio -> gateway -----------------------------------------------------------

    def parse(self, message: JsonObject) -> ClientEvent | None:
        kind = message.get("event")
        if not isinstance(kind, str):
            raise ProtocolError(ErrorCode.MISSING_FIELD, "'event' is required")
        self._check_order(message)
        if kind == "media":
            media = get_object(message, "media")
            mulaw = get_base64(media, "payload")
            return AudioIn(data=self._caller.feed(mulaw)) if mulaw else None
        if kind == "mark":
            self._played(_mark_name(message))
            return None
        if kind == "dtmf":
            if self._playing():  # a key over a reply still playing stops it, as speech does
                self._stop_replies()
                self._playout.clear(tell_twilio=True)
            return TextIn(f"The caller pressed {_key(message)}.")
        if kind == "stop":
            self._playout.clear()
            return End(answer_pending=False)  # the caller hung up
        if kind in ("connected", "start"):
            raise ProtocolError(
                ErrorCode.OUT_OF_ORDER, f"'{kind}' came again in the middle of the call"
            )
        raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown event '{kind}'")

    def _check_order(self, message: JsonObject) -> None:
        stream = message.get("streamSid")
        if stream is not None and stream != self.call.stream_sid:
            raise ProtocolError(
                ErrorCode.UNKNOWN_STREAM, f"this call's stream is {self.call.stream_sid}"
            )
        sequence = _sequence(message)
        if sequence is not None:
            if sequence <= self._sequence:
                raise ProtocolError(
                    ErrorCode.OUT_OF_ORDER,
                    f"message {sequence} came after {self._sequence}: dropped",
                )
            self._sequence = sequence

    def _played(self, name: str) -> None:
        """Twilio played the audio before this mark."""
        number = int(name.partition(".")[0])
        reply = self._replies.get(number)
        if reply is None or reply.cut:
            if number <= self._numbered:
                return  # a cut reply's, or one recorded: Twilio echoes cleared marks too
            raise ProtocolError(ErrorCode.UNKNOWN_MARK, f"no mark '{name}' was sent on this call")
        piece = reply.unplayed.pop(name, None)
        if piece is None:
            raise ProtocolError(ErrorCode.UNKNOWN_MARK, f"no mark '{name}' was sent on this call")
        reply.played_seconds += piece.seconds
        if piece.text:
            reply.played_words.append(piece.text)

    # Gateway -> Twilio -----------------------------------------------------------

    def ready(self, view: SessionView) -> JsonObject:
        """Never sent (Twilio takes media, mark and clear only): the call connection
        keeps it off the wire, as it does ``ended`` and errors."""
        return {"event": "ready", "sessionId": view.session.sessionId, "resumed": view.resumed}

    async def render(self, event: EngineEvent, view: SessionView) -> list[JsonObject]:
        match event:
            case AudioOut() if not self._cut:
                self._speak(event)
            case ResponseTextDelta(text=text) if not self._cut:
                self._open_reply().text += text
            case ResponseTextFinal(text=text) if not self._cut:
                self._open_reply().text = text
            case TurnEnded():
                self._finish_reply()
                self._cut = False
            case TranscriptFinal():
                self._cut = False  # a new user turn: what comes next is its answer
            case Interrupted():
                return self._clear()
            case SpeechStarted() if self._playing():
                # Some engines let a reply they think has played out go on unnoticed.
                return self._clear()
            case Error(code=code, message=text):
                return [self.error(code, text, view.session.sessionId)]
        return []

    def _open_reply(self) -> _Reply:
        if self._reply is None:
            self._numbered += 1
            self._reply = self._replies[self._numbered] = _Reply(self._numbered)
        return self._reply

    def _speak(self, audio: AudioOut) -> None:
        reply = self._open_reply()
        frames = self._reply_audio.feed(audio.pcm, audio.sample_rate)
        self._send_audio(reply, frames)
        if audio.text:
            reply.worded = True
            self._unmarked.text = f"{self._unmarked.text} {audio.text.strip()}".lstrip()
        if audio.text or self._unmarked.seconds >= MARK_EVERY:
            self._mark(reply)

    def _send_audio(self, reply: _Reply, frames: list[bytes]) -> None:
        seconds = len(frames) * FRAME_SECONDS
        reply.sent_seconds += seconds
        self._unmarked.seconds += seconds
        self._playout.add(frames)

    def _mark(self, reply: _Reply) -> None:
        if not self._unmarked.seconds:
            return  # no audio to follow (a chunk shorter than a frame)
        name = f"{reply.number}.{reply.pieces}"
        reply.pieces += 1
        reply.unplayed[name], self._unmarked = self._unmarked, _Piece()
        self._playout.add([], name)

    def _finish_reply(self) -> None:
        reply, self._reply = self._reply, None
        if reply is None:
            return
        self._send_audio(reply, self._reply_audio.flush())
        self._mark(reply)
        reply.finished = True

    def _playing(self) -> bool:
        return self._playout.playing or any(
            reply.unplayed for reply in self._replies.values() if not reply.cut
        )

    def _clear(self) -> list[JsonObject]:
        """The caller barged in: stop the reply at once, here and at Twilio."""
        self._stop_replies()
        self._playout.clear()
        return [{"event": "clear", "streamSid": self.call.stream_sid}]

    def _stop_replies(self) -> None:
        """Replies not played out are cut where the caller stopped hearing them."""
        self._reply_audio.drop()
        # Only a reply still being made has a rest to drop: one made whole and playing
        # is over, and what comes next (its audio maybe before its transcript) answers
        # the caller's new turn.
        self._cut = self._cut or self._reply is not None
        self._reply, self._unmarked = None, _Piece()
        for reply in self._replies.values():
            reply.cut = reply.cut or not reply.settled

    def heard_replies(self, *, closing: bool = False) -> list[str]:
        """Replies done with (played out, or cut), oldest first, as the caller heard them;
        ``closing``: the call is ending, so every reply is done with."""
        heard: list[str] = []
        for number, reply in list(self._replies.items()):
            if not (closing or reply.settled):
                break
            if reply is self._reply:
                self._reply = None
            del self._replies[number]
            if text := reply.heard():
                heard.append(text)
        return heard

    def error(self, code: ErrorCode, message: str, session_id: str | None) -> JsonObject:
        return {
            "event": "error",
            "code": code,
            "message": message,
            "sessionId": session_id,
            "callSid": self.call.call_sid,
        }

    def ended(self, view: SessionView) -> JsonObject:
        return {"event": "ended", "sessionId": view.session.sessionId}


def _text(message: JsonObject, key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(ErrorCode.MISSING_FIELD, f"'{key}' is required")
    return value


def _sequence(message: JsonObject) -> int | None:
    """Twilio numbers its messages with strings of digits."""
    value = message.get("sequenceNumber")
    if value is None:
        return None
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "'sequenceNumber' must be a string of digits")
    return int(value)


def _mark_name(message: JsonObject) -> str:
    name = get_object(message, "mark").get("name")
    if not isinstance(name, str) or not MARK_NAME.fullmatch(name):
        raise ProtocolError(ErrorCode.UNKNOWN_MARK, f"no mark {name!r} was sent on this call")
    return name


def _key(message: JsonObject) -> str:
    digit = get_object(message, "dtmf").get("digit")
    if not isinstance(digit, str) or digit not in KEYS:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, f"'dtmf.digit' must be one of {''.join(sorted(KEYS))}"
        )
    return digit
