"""Phone calls over Twilio Media Streams: the μ-law path, the playout's pace, Twilio's
signatures, and calls through a real server from a phone that speaks Twilio's protocol
(``tests/emulators/twilio_phone.py``)."""

from __future__ import annotations

import hashlib

import av
import numpy as np

from sonicgate.audio.telephony import (
    FRAME_BYTES,
    MULAW_SILENCE,
    CallerAudio,
    ReplyAudio,
    mulaw_to_pcm16,
    pcm16_to_mulaw,
)
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
