"""Audio conversions and the incremental input decoder, on a synthetic 440 Hz tone."""

from __future__ import annotations

import base64
import io
import threading
import wave

import av
import numpy as np
import numpy.typing as npt
import pytest

from sonicgate.audio.decoder import InputDecoder
from sonicgate.audio.formats import (
    AudioFormatError,
    decode_file,
    decode_wav,
    mp3_data_url,
    resample,
    wav_bytes,
)

RATE = 16_000
GARBAGE = b"this is not audio at all" * 200


def tone(rate: int, seconds: float = 1.0) -> npt.NDArray[np.float32]:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE


def dominant_hz(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[spectrum.argmax()])


class _Sink:
    """A write-only file: the muxer cannot seek back, like a browser's MediaRecorder."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def encode(samples: npt.NDArray[np.float32], rate: int, container: str, codec: str) -> bytes:
    """Planar float samples (channels x n) -> a complete file, muxed as a live stream."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    sink = _Sink()
    with av.open(sink, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return bytes(sink.data)


@pytest.fixture(scope="module")
def webm() -> bytes:
    """One second of Opus at 48 kHz in WebM: what MediaRecorder sends."""
    return encode(tone(48_000)[None, :], 48_000, "webm", "libopus")


def test_resample_lengths() -> None:
    pcm = pcm16(tone(24_000))
    assert len(resample(pcm, 24_000, 16_000)) == 2 * 16_000
    assert len(resample(pcm, 24_000, 48_000)) == 2 * 48_000
    assert resample(pcm, 24_000, 24_000) == pcm
    assert dominant_hz(resample(pcm, 24_000, RATE)) == pytest.approx(440, abs=2)


def test_wav_round_trip() -> None:
    pcm = pcm16(tone(RATE))
    data = wav_bytes(pcm, RATE)
    assert data.startswith(b"RIFF")
    assert decode_wav(data) == pcm
    assert seconds(decode_wav(wav_bytes(pcm, 24_000))) == pytest.approx(2 / 3, abs=0.01)


def test_decode_wav_44k_stereo() -> None:
    data = encode(np.stack([tone(44_100), tone(44_100)]), 44_100, "wav", "pcm_s16le")
    pcm = decode_wav(data)
    assert seconds(pcm) == pytest.approx(1.0, abs=0.01)
    assert dominant_hz(pcm) == pytest.approx(440, abs=2)


def _wav(frames: bytes, width: int, channels: int, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_decode_wav_sample_widths(width: int) -> None:
    scaled = (tone(8_000) * 2 ** (8 * width - 1)).astype(np.int64)
    if width == 1:
        scaled += 128  # 8-bit WAV is unsigned
    frames = b"".join(int(v).to_bytes(width, "little", signed=width > 1) for v in scaled)
    pcm = decode_wav(_wav(frames, width, 1, 8_000))
    assert seconds(pcm) == pytest.approx(1.0, abs=0.01)
    assert dominant_hz(pcm) == pytest.approx(440, abs=2)
    assert np.abs(np.frombuffer(pcm, dtype="<i2")).max() == pytest.approx(16384, rel=0.05)


@pytest.mark.parametrize("channels", [1, 2])
def test_decode_wav_cut_inside_its_last_frame(channels: int) -> None:
    """A WAV file cut short inside its last frame decodes to its whole frames, as
    FFmpeg's reader (``decode_file``, voice_data's) does; it used to raise a bare
    ValueError, which a client was told as engine_failed."""
    samples = np.frombuffer(pcm16(tone(RATE)), dtype="<i2")
    data = _wav(np.repeat(samples, channels).tobytes(), 2, channels, RATE)
    whole = decode_wav(data)
    assert decode_wav(data[:-1]) == whole[:-2]
    assert decode_file(data[:-1]) == whole[:-2]


def test_decode_float_wav() -> None:
    """``wave`` refuses float WAVs; FFmpeg reads them."""
    data = encode(tone(22_050)[None, :], 22_050, "wav", "pcm_f32le")
    assert seconds(decode_wav(data)) == pytest.approx(1.0, abs=0.01)


def _coded_as(data: bytes, tag: int) -> bytes:
    """A WAV file whose header names another codec (its fmt chunk's format tag)."""
    return data[:20] + tag.to_bytes(2, "little") + data[22:]


@pytest.mark.parametrize(
    "data",
    [
        GARBAGE,
        b"",
        b"RIFF\0\0\0\0WAVEjunk",
        _wav(b"\0\0", 2, 1, 1),
        # A format tag FFmpeg knows no decoder for: its stream has no codec context.
        _coded_as(_wav(b"\0\0" * 4, 2, 1, RATE), 0x1234),
    ],
    ids=repr,
)
def test_bad_wav(data: bytes) -> None:
    with pytest.raises(AudioFormatError):
        decode_wav(data)
    with pytest.raises(AudioFormatError):
        InputDecoder("wav").feed(data)


def test_decode_file(webm: bytes) -> None:
    pcm = decode_file(webm)
    assert seconds(pcm) == pytest.approx(1.0, rel=0.05)
    assert dominant_hz(pcm) == pytest.approx(440, abs=2)
    with pytest.raises(AudioFormatError):
        decode_file(GARBAGE)


def test_mp3_data_url() -> None:
    url = mp3_data_url(pcm16(tone(24_000)), 24_000)
    prefix = "data:audio/mp3;base64,"
    assert url.startswith(prefix)
    pcm = decode_file(base64.b64decode(url.removeprefix(prefix)))
    assert seconds(pcm) == pytest.approx(1.0, rel=0.05)
    assert dominant_hz(pcm) == pytest.approx(440, abs=2)


def test_pcm16_passthrough() -> None:
    decoder = InputDecoder("pcm16")
    chunk = pcm16(tone(RATE))[: 2 * 4096]
    assert decoder.feed(chunk) == chunk
    assert decoder.flush() == b""
    with pytest.raises(AudioFormatError, match="even"):
        decoder.feed(b"\1\2\3")


def test_unknown_format() -> None:
    with pytest.raises(AudioFormatError, match="pcm16, wav, webm"):
        InputDecoder("flac")


def _webm_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "webm-decoder"]


def test_webm_streams_in_pieces(webm: bytes) -> None:
    decoder = InputDecoder("webm")
    size = len(webm) // 20 + 1
    pieces = [decoder.feed(webm[i : i + size]) for i in range(0, len(webm), size)]
    # Audio comes out while the stream is open, roughly in step with what was fed.
    assert sum(map(len, pieces[:10])) > 0
    assert sum(map(len, pieces[10:])) > 0
    pcm = b"".join(pieces) + decoder.flush()
    decoder.close()
    assert seconds(pcm) == pytest.approx(1.0, rel=0.05)
    assert dominant_hz(pcm) == pytest.approx(440, abs=2)
    assert not _webm_threads()


def test_webm_stereo() -> None:
    stereo = encode(np.stack([tone(48_000), tone(48_000)]), 48_000, "webm", "libopus")
    decoder = InputDecoder("webm")
    pcm = decoder.feed(stereo) + decoder.flush()
    assert seconds(pcm) == pytest.approx(1.0, rel=0.05)


def test_webm_garbage() -> None:
    with pytest.raises(AudioFormatError, match="EBML"):
        InputDecoder("webm").feed(GARBAGE)


def test_webm_corrupt_after_header(webm: bytes) -> None:
    decoder = InputDecoder("webm")
    with pytest.raises(AudioFormatError, match="webm"):
        decoder.feed(webm[:40])
        decoder.feed(GARBAGE)
        decoder.flush()
    decoder.close()
    assert not _webm_threads()


def test_webm_close_mid_stream(webm: bytes) -> None:
    decoder = InputDecoder("webm")
    decoder.feed(webm[: len(webm) // 2])
    assert _webm_threads()
    decoder.close()
    assert not _webm_threads()
