"""A phone on a Twilio Media Stream: Twilio's side of ``/twilio/voice`` and ``/twilio/media``.

``Phone.ring`` places a call as Twilio does: it posts the call webhook (signed with
the auth token, if given), reads the TwiML for the stream's URL and parameters, and
opens the stream (its handshake signed too). Then, as Twilio does, the phone sends
``connected`` and ``start``, and the caller's audio as 20 ms μ-law ``media`` frames at
real-time pace, silence while the caller says nothing; and it plays what the gateway
sends in real time: ``media`` joins the playback queue, a ``mark`` is echoed once the
audio before it has played, and ``clear`` empties the queue, echoing the marks it
drops (as Twilio does).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
import numpy as np
import soxr
import websockets

from sonicgate.audio.telephony import FRAME_BYTES, FRAME_SECONDS, MULAW_SILENCE, pcm16_to_mulaw
from sonicgate.server.twilio import twilio_signature

ACCOUNT_SID = "AC" + "0" * 32
SILENT_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES


def telephone_quality(pcm16k: bytes) -> bytes:
    """16 kHz pcm16 as a phone carries it: band-limited to 8 kHz, μ-law."""
    samples = np.frombuffer(pcm16k, dtype="<i2")
    narrow = soxr.resample(samples, 16_000, 8_000, quality="VHQ").astype("<i2")
    return pcm16_to_mulaw(narrow.tobytes())


def read_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>``'s URL and parameters."""
    stream = ElementTree.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    parameters = {p.attrib["name"]: p.attrib["value"] for p in stream.iter("Parameter")}
    return stream.attrib["url"], parameters


class Phone:
    def __init__(
        self,
        url: str,
        call_sid: str,
        *,
        parameters: dict[str, str] | None = None,
        account_sid: str = ACCOUNT_SID,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.parameters = parameters or {}
        self._headers = headers or {}
        self._sequence = itertools.count(1)
        self._ws: websockets.ClientConnection | None = None
        self._sending = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._speech = bytearray()  # μ-law the caller is still to say
        self._playback: deque[bytes | str] = deque()  # frames, and marks' names
        self.received: list[tuple[float, dict[str, Any]]] = []  # (perf_counter, message)
        self.played = bytearray()  # what the caller heard
        self.echoed: list[str] = []  # marks, in the order Twilio echoed them
        self.frames_sent_at: list[float] = []  # perf_counter of each media message
        self.speech_sent_at: float | None = None  # the first frame of what was last said
        self.changed = asyncio.Event()  # set at every message from the gateway

    @classmethod
    async def ring(
        cls,
        server: str,
        *,
        call_sid: str | None = None,
        query: str = "",
        auth_token: str | None = None,
        public_url: str | None = None,
        account_sid: str = ACCOUNT_SID,
    ) -> Phone:
        """A call to the gateway at ``server`` (http://host:port), placed as Twilio
        places it. ``public_url``: where Twilio reaches it (the gateway's
        ``--public-url``); the phone connects to ``server`` all the same."""
        call_sid = call_sid or "CA" + uuid.uuid4().hex
        webhook = f"{public_url or server}/twilio/voice{query}"
        form = {
            "CallSid": call_sid,
            "AccountSid": account_sid,
            "From": "+15550100",
            "To": "+15550199",
            "CallStatus": "ringing",
            "Direction": "inbound",
        }
        headers = {}
        if auth_token is not None:
            headers["X-Twilio-Signature"] = twilio_signature(auth_token, webhook, form.items())
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{server}/twilio/voice{query}", data=form, headers=headers)
        answer.raise_for_status()
        stream_url, parameters = read_twiml(answer.text)
        handshake = {}
        if auth_token is not None:
            handshake["X-Twilio-Signature"] = twilio_signature(auth_token, stream_url, [])
        local = urlsplit(server.replace("http", "ws", 1))
        url = urlsplit(stream_url)._replace(scheme=local.scheme, netloc=local.netloc).geturl()
        phone = cls(
            url, call_sid, parameters=parameters, account_sid=account_sid, headers=handshake
        )
        await phone.dial()
        return phone

    async def dial(self) -> None:
        """Open the stream and say ``connected`` and ``start``, as Twilio does."""
        self._ws = await websockets.connect(self.url, additional_headers=self._headers)
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send_event("start", start=self.start_fields())
        self._tasks = [
            asyncio.create_task(_until_hung_up(line()))
            for line in (self._microphone, self._listen, self._speaker)
        ]

    def start_fields(self) -> dict[str, Any]:
        return {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": self.parameters,
        }

    async def send(self, message: dict[str, Any] | str) -> None:
        """Any message, as it is (tests send malformed ones too)."""
        assert self._ws is not None
        async with self._sending:
            await self._ws.send(message if isinstance(message, str) else json.dumps(message))

    async def send_event(self, event: str, **fields: Any) -> None:
        """A well-formed Twilio message, numbered in sequence."""
        sequence = str(next(self._sequence))
        await self.send(
            {"event": event, "sequenceNumber": sequence, "streamSid": self.stream_sid, **fields}
        )

    def say(self, pcm16k: bytes) -> None:
        """Speak 16 kHz pcm16 into the phone, after what is still being said."""
        self._speech += telephone_quality(pcm16k)
        self.speech_sent_at = None

    async def press(self, digit: str) -> None:
        await self.send_event("dtmf", dtmf={"track": "inbound_track", "digit": digit})

    async def hang_up(self) -> None:
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.send_event("stop", stop=stop)
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._ws is not None:
            await self._ws.close()

    async def closed(self, within: float = 10.0) -> int | None:
        """Wait for the gateway to close the stream; its close code."""
        assert self._ws is not None
        await asyncio.wait_for(self._ws.wait_closed(), within)
        return self._ws.close_code

    @property
    def playing(self) -> bool:
        """Whether reply audio is still queued for the caller's ear."""
        return any(isinstance(item, bytes) for item in self._playback)

    def messages(self, event: str) -> list[dict[str, Any]]:
        return [message for _, message in self.received if message["event"] == event]

    async def until(self, condition: Any, within: float = 20.0) -> None:
        """Wait until ``condition()`` holds, checked at each message from the gateway."""
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    async def _microphone(self) -> None:
        """20 ms of the caller's audio at a time, each sent once all of it was heard."""
        started = time.perf_counter()
        for chunk in itertools.count(1):
            await asyncio.sleep(max(0.0, started + chunk * FRAME_SECONDS - time.perf_counter()))
            frame = bytes(self._speech[:FRAME_BYTES]).ljust(FRAME_BYTES, bytes([MULAW_SILENCE]))
            self.frames_sent_at.append(time.perf_counter())
            if self._speech and self.speech_sent_at is None:
                self.speech_sent_at = self.frames_sent_at[-1]
            del self._speech[:FRAME_BYTES]
            media = {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(round((chunk - 1) * FRAME_SECONDS * 1000)),
                "payload": base64.b64encode(frame).decode(),
            }
            await self.send_event("media", media=media)

    async def _listen(self) -> None:
        assert self._ws is not None
        async for raw in self._ws:
            message = json.loads(raw)
            self.received.append((time.perf_counter(), message))
            match message["event"]:
                case "media":
                    self._playback.append(base64.b64decode(message["media"]["payload"]))
                case "mark":
                    self._playback.append(message["mark"]["name"])
                case "clear":
                    dropped = [item for item in self._playback if isinstance(item, str)]
                    self._playback.clear()
                    for name in dropped:
                        await self._echo(name)
            self.changed.set()

    async def _speaker(self) -> None:
        """Plays a frame every 20 ms; echoes a mark once what came before it played."""
        started = time.perf_counter()
        for tick in itertools.count(1):
            while self._playback and isinstance(self._playback[0], str):
                await self._echo(str(self._playback.popleft()))
            if self._playback:
                frame = self._playback.popleft()
                assert isinstance(frame, bytes)  # marks were echoed above
                self.played += frame
            await asyncio.sleep(max(0.0, started + tick * FRAME_SECONDS - time.perf_counter()))

    async def _echo(self, name: str) -> None:
        self.echoed.append(name)
        self.changed.set()
        await self.send_event("mark", mark={"name": name})


async def _until_hung_up(line: Coroutine[Any, Any, None]) -> None:
    """The phone's side of the line runs until the gateway closes the stream, as a
    gateway that refuses a call does: then it goes quiet, as a real phone would."""
    with contextlib.suppress(websockets.ConnectionClosed):
        await line
