"""Phone calls over Twilio Media Streams: the μ-law path, the playout's pace, Twilio's
signatures, and calls through a real server from a phone that speaks Twilio's protocol
(``tests/emulators/twilio_phone.py``)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import av
import numpy as np
import pytest

from sonicgate.audio.telephony import (
    FRAME_BYTES,
    MULAW_SILENCE,
    CallerAudio,
    ReplyAudio,
    mulaw_to_pcm16,
    pcm16_to_mulaw,
)
from sonicgate.engines.base import Capabilities
from sonicgate.events import (
    AudioIn,
    AudioOut,
    End,
    Interrupted,
    ResponseTextDelta,
    ResponseTextFinal,
    SpeechStarted,
    TextIn,
    TurnEnded,
)
from sonicgate.protocol.base import JsonObject, ProtocolError, SessionView
from sonicgate.protocol.twilio import PLAYOUT_LEAD, CallStart, Playout, TwilioDialect
from sonicgate.store.base import VoiceSession
from tests.scripted_engine import tone

EVERY_SAMPLE = np.arange(-32768, 32768, dtype="<i2").tobytes()
EVERY_CODE = bytes(range(256))

# The μ-law codec ---------------------------------------------------------------------


def test_mulaw_is_audioops_bit_for_bit() -> None:
    # Digests of audioop.lin2ulaw / ulaw2lin over every input (Python 3.12's audioop).
    encoded = hashlib.sha256(pcm16_to_mulaw(EVERY_SAMPLE)).hexdigest()
    decoded = hashlib.sha256(mulaw_to_pcm16(EVERY_CODE)).hexdigest()
    assert encoded == "81d633c9e6972a18c74a58720b96cb8ca0bdd096d4060b646dd708c3b846019a"
    assert decoded == "3dab54339e520bb2c924826e3b72a917a2b612e9fd12fc867500f1d983a75827"


def test_mulaw_decodes_as_ffmpeg_does() -> None:
    decoder = av.CodecContext.create("pcm_mulaw", "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"
    frames = decoder.decode(av.Packet(EVERY_CODE))
    assert b"".join(bytes(f.planes[0])[: f.samples * 2] for f in frames) == mulaw_to_pcm16(
        EVERY_CODE
    )


def test_every_code_survives_a_round_trip() -> None:
    codes = pcm16_to_mulaw(mulaw_to_pcm16(EVERY_CODE))
    # 0x7F is the negative zero: it comes back as the positive one.
    assert codes == EVERY_CODE.replace(b"\x7f", bytes([MULAW_SILENCE]))


def test_caller_audio_is_upsampled_at_once() -> None:
    caller = CallerAudio()
    out = [caller.feed(bytes([MULAW_SILENCE]) * FRAME_BYTES) for _ in range(5)]
    assert all(len(pcm) >= 600 for pcm in out)  # each frame answered now (16 kHz: 640)
    assert sum(len(pcm) for pcm in out) >= 5 * 640 - 16


def test_reply_audio_comes_in_whole_frames_and_keeps_its_length() -> None:
    reply = ReplyAudio()
    frames = reply.feed(tone(0.3), 24_000) + reply.feed(tone(0.113), 24_000) + reply.flush()
    assert {len(frame) for frame in frames} == {FRAME_BYTES}
    assert len(frames) == 21  # 0.413 s, the last frame padded with silence
    decoded = np.frombuffer(mulaw_to_pcm16(b"".join(frames)), dtype="<i2")
    assert np.abs(decoded[400:-400]).max() > 6000  # the tone came through


def test_a_dropped_reply_leaves_nothing_behind() -> None:
    reply = ReplyAudio()
    reply.feed(tone(0.05), 24_000)
    reply.drop()
    assert reply.flush() == []


# The playout's pace ------------------------------------------------------------------


class FakeClock:
    """A clock that moves only when the playout sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def play(playout: Playout, clock: FakeClock, until: int) -> list[tuple[float, JsonObject]]:
    """Run the playout until it sent ``until`` messages; each with the time it went."""
    sent: list[tuple[float, JsonObject]] = []
    enough = asyncio.Event()

    async def send(message: JsonObject) -> None:
        sent.append((clock.now, message))
        if len(sent) == until:
            enough.set()

    runner = asyncio.create_task(playout.run(send))
    await asyncio.wait_for(enough.wait(), 5)
    runner.cancel()
    return sent


async def test_the_playout_keeps_pace_with_the_call() -> None:
    clock = FakeClock()
    playout = Playout("MZ1", clock=clock, sleep=clock.sleep)
    playout.add([bytes([MULAW_SILENCE]) * FRAME_BYTES] * 10, "1.0")
    sent = await play(playout, clock, 11)
    times = [when for when, message in sent if message["event"] == "media"]
    ahead = round(PLAYOUT_LEAD / 0.02) + 1  # the lead goes at once, then a frame per 20 ms
    assert times == pytest.approx([0.0] * ahead + [0.02 * i for i in range(1, 11 - ahead)])
    assert sent[-1] == (pytest.approx(times[-1]), mark("1.0"))
    assert sent[0][1]["streamSid"] == "MZ1"


async def test_a_cleared_playout_sends_nothing_more() -> None:
    clock = FakeClock()
    playout = Playout("MZ1", clock=clock, sleep=clock.sleep)
    playout.add([bytes(FRAME_BYTES)] * 50)
    await play(playout, clock, 8)
    playout.clear()
    cleared_at = clock.now
    assert not playout.playing
    playout.add([bytes(FRAME_BYTES)], "2.0")  # the next reply starts at once
    resumed = await play(playout, clock, 2)
    assert [message["event"] for _, message in resumed] == ["media", "mark"]
    assert resumed[0][0] == cleared_at


def mark(name: str) -> JsonObject:
    return {"event": "mark", "streamSid": "MZ1", "mark": {"name": name}}


# The dialect ---------------------------------------------------------------------------

CALL = CallStart("MZ1", "CA1", "AC1", sequence=2, parameters={"engine": "scripted"})
VIEW = SessionView(
    VoiceSession("CA1", "ns-1", "c-1", "twilio:AC1"),
    "en-US",
    "scripted",
    Capabilities(("en-US",), ("m",), ("v",)),
    24_000,
)


def twilio(event: str, sequence: int, **fields: Any) -> JsonObject:
    return {"event": event, "sequenceNumber": str(sequence), "streamSid": "MZ1", **fields}


async def reply(dialect: TwilioDialect, *sentences: str, worded: bool = True) -> None:
    """Each sentence as 0.26 s of audio (13 frames at 8 kHz, the phone's rate)."""
    for sentence in sentences:
        await dialect.render(ResponseTextDelta(sentence + " "), VIEW)
        audio = AudioOut(tone(0.26, 8000), 8000, sentence if worded else "")
        await dialect.render(audio, VIEW)


async def test_a_barged_in_reply_is_kept_as_far_as_it_was_heard() -> None:
    dialect = TwilioDialect(CALL, Playout("MZ1"))
    await reply(dialect, "It is sunny.", "Tomorrow it rains.", "Then snow.")
    dialect.parse(twilio("mark", 3, mark={"name": "1.0"}))
    assert dialect.heard_replies() == []  # still playing
    assert await dialect.render(SpeechStarted(), VIEW) == [{"event": "clear", "streamSid": "MZ1"}]
    await dialect.render(AudioOut(tone(0.3), 24_000, "Leftovers."), VIEW)  # dropped
    dialect.parse(twilio("mark", 4, mark={"name": "1.1"}))  # Twilio echoes cleared marks
    await dialect.render(Interrupted(), VIEW)
    await dialect.render(TurnEnded(interrupted=True), VIEW)
    assert dialect.heard_replies() == ["It is sunny."]


async def test_a_reply_played_out_is_kept_whole() -> None:
    dialect = TwilioDialect(CALL, Playout("MZ1"))
    await reply(dialect, "Hello.", "Bye.")
    await dialect.render(ResponseTextFinal("Hello. Bye."), VIEW)
    await dialect.render(TurnEnded(), VIEW)
    for sequence, name in enumerate(("1.0", "1.1"), start=3):
        dialect.parse(twilio("mark", sequence, mark={"name": name}))
    assert dialect.heard_replies() == ["Hello. Bye."]
    await reply(dialect, "Unheard.")
    assert dialect.heard_replies(closing=True) == []  # the call ended before it played


async def test_words_are_estimated_when_the_engine_does_not_say_them() -> None:
    dialect = TwilioDialect(CALL, Playout("MZ1"))
    await reply(dialect, "one two three", "four five six", "seven eight", "nine ten", worded=False)
    dialect.parse(twilio("mark", 3, mark={"name": "1.0"}))  # a mark each 0.5 s: half played
    await dialect.render(Interrupted(), VIEW)
    assert dialect.heard_replies() == ["one two three four five"]


async def test_twilio_messages_become_input_events() -> None:
    dialect = TwilioDialect(CALL, Playout("MZ1"))
    payload = base64.b64encode(bytes([MULAW_SILENCE]) * FRAME_BYTES).decode()
    audio = dialect.parse(twilio("media", 3, media={"track": "inbound", "payload": payload}))
    assert isinstance(audio, AudioIn) and len(audio.data) >= 600
    assert dialect.parse(twilio("dtmf", 4, dtmf={"digit": "3"})) == TextIn("The caller pressed 3.")
    assert dialect.parse(twilio("stop", 5, stop={"callSid": "CA1"})) == End()
    assert dialect.opening().session_id == "CA1"
    assert dialect.opening().engine == "scripted"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (twilio("media", 2, media={"payload": ""}), "out_of_order"),
        (twilio("media", 9, media={"payload": "%%%"}), "bad_base64"),
        (twilio("start", 9, start={}), "out_of_order"),
        (twilio("mark", 9, mark={"name": "7.0"}), "unknown_mark"),
        (twilio("dtmf", 9, dtmf={"digit": "x"}), "invalid_field"),
        (twilio("wave", 9), "unknown_event"),
        ({"event": "media", "streamSid": "MZ2", "media": {}}, "unknown_stream"),
        ({"sequenceNumber": "9"}, "missing_field"),
        (twilio("media", 9) | {"sequenceNumber": "²"}, "invalid_field"),
    ],
)
def test_bad_twilio_messages_are_refused(message: JsonObject, code: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        TwilioDialect(CALL, Playout("MZ1")).parse(message)
    assert refused.value.code == code
