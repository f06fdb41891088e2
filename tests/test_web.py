"""The talk page in a real browser: Debian's Chromium driven by Playwright, with a
fake microphone that plays a WAV file the test speaks (espeak-ng, or hibari where
the words must be heard exactly)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright

from bench.speech import natural, silence, speak
from sonicgate.engines.local import LocalEngine, LocalModels
from tests.conftest import RunningServer, ServerFactory
from tests.scripted_engine import ScriptedEngine

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
GAP_SECONDS = 12  # between questions: time for the reply, so turns do not overlap
WAIT_MS = 90_000  # a reply from the local models while the browser shares the 2 cores


def microphone(path: Path, *pcm16: bytes) -> Path:
    """A WAV for Chromium's fake microphone: the 16 kHz speech given, at 48 kHz as
    real microphones deliver, then a minute of silence (the file plays once)."""
    samples = np.frombuffer(b"".join((*pcm16, silence(60))), dtype="<i2")
    resampled = soxr.resample(samples.astype(np.float32) / 32768, 16_000, 48_000)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(48_000)
        writer.writeframes((np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@contextlib.asynccontextmanager
async def chromium(wav: Path | None = None, *, allow: bool = True) -> AsyncIterator[Browser]:
    """Chromium whose microphone plays ``wav``; ``allow=False`` refuses it to the page."""
    args = ["--autoplay-policy=no-user-gesture-required"]
    if wav is not None:
        args += [
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}%noloop",
        ]
        if allow:
            args.append("--use-fake-ui-for-media-stream")  # grants the permission
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page()
    await page.goto(url + "/")
    await until(page, "sonicgate.state.connection === 'ready'")
    return page


async def until(page: Page, condition: str, within_ms: float = WAIT_MS) -> None:
    await page.wait_for_function(f"() => {condition}", timeout=within_ms)


async def page_state(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(
        "() => ({...sonicgate.state, played: sonicgate.player?.chunksPlayed ?? 0,"
        " peak: sonicgate.player?.peak ?? 0, playing: sonicgate.player?.playing ?? false})"
    )
    return result


@pytest.fixture
async def server(make_uvicorn: ServerFactory, scripted: ScriptedEngine) -> RunningServer:
    """A browser needs a real socket: uvicorn's, unlike the other modules' ``server``."""
    result: RunningServer = await make_uvicorn({"scripted": scripted})
    return result


@pytest.fixture
async def local(make_uvicorn: ServerFactory, local_models: LocalModels) -> RunningServer:
    server: RunningServer = await make_uvicorn({"local": LocalEngine(local_models)})
    return server


@pytest.mark.models
async def test_spoken_question_is_transcribed_and_the_reply_plays(
    local: RunningServer, tmp_path: Path
) -> None:
    # In hibari's voice: Whisper tiny.en hears espeak-ng's "France" as "friends" in some
    # cuts of the utterance, and the model then answers another question.
    wav = microphone(tmp_path / "mic.wav", silence(1), natural("What is the capital of France?"))
    async with chromium(wav) as browser:
        page = await open_page(browser, local.url)
        await page.click("#talk")
        await until(page, "sonicgate.state.transcripts.length > 0")
        await until(page, "sonicgate.state.replies.length > 0 && sonicgate.player.chunksPlayed > 0")
        state = await page_state(page)
        history = await page.inner_text("#history")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "web-conversation.png"))

    assert state["chunksSent"] > 5
    assert state["captureRate"] == 16_000 and state["chunkSamples"] == 640
    assert state["partials"], "no partial transcript was shown while speaking"
    assert "capital" in state["transcripts"][0].lower(), state["transcripts"]
    assert "paris" in state["replies"][0].lower(), (state["transcripts"], state["replies"])
    assert state["peak"] > 0.05, "the reply was scheduled but nothing audible played"
    assert 0 < state["latencies"][0] < 30
    assert "capital" in history.lower() and "first audio" in history


QUESTIONS = (
    "What is the capital of France?",
    "What is two plus two?",
    "What color is the sky on a clear day?",
)


@pytest.mark.models
async def test_first_audio_after_you_stopped_over_several_turns(
    local: RunningServer, tmp_path: Path
) -> None:
    """The page's own figure for each spoken turn: how long after the end of the
    speech its first reply audio arrived. Written to tests/artifacts/ for the
    report; only its presence and sanity are asserted (speed is for benchmarks).
    In hibari's voice, as bench.local_latency speaks: espeak-ng's flat endings make
    the turn detector wait for its 1.5 s fallback, and the figure would be that."""
    speech: list[bytes] = [silence(1)]
    for question in QUESTIONS:
        speech += [natural(question), silence(GAP_SECONDS)]
    wav = microphone(tmp_path / "mic.wav", *speech)
    async with chromium(wav) as browser:
        page = await open_page(browser, local.url)
        await page.click("#talk")
        await until(page, "sonicgate.state.speakers.includes('you')")
        level = await page.eval_on_selector("#level", "meter => meter.value")
        speaker = await page.inner_text("#speaker")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "web-speaking.png"))
        turns = len(QUESTIONS)
        replied = f"document.querySelectorAll('#history li.assistant[title]').length >= {turns}"
        await until(page, replied, within_ms=WAIT_MS + len(b"".join(speech)) / 32)
        state = await page_state(page)
        shown = await page.eval_on_selector_all(
            "#history li.assistant",
            "items => items.map(item => ({text: item.querySelector('.meta')?.textContent,"
            " server: item.title}))",
        )
    figures = {
        "turns": [
            {
                "question": question,
                "heard": heard,
                "first_audio_s": round(seconds, 3),
                # What the browser and the network add: the server times its
                # first_audio from the speech's end as it heard it, chunks late.
                "page_minus_server_s": round(seconds - server_first_audio(page_shown), 3),
                **page_shown,
            }
            for question, heard, seconds, page_shown in zip(
                QUESTIONS, state["transcripts"], state["latencies"], shown, strict=False
            )
        ],
        "chunk_samples": state["chunkSamples"],
        "capture_rate": state["captureRate"],
        "chunks_sent": state["chunksSent"],
        "interruptions": state["interruptions"],
        "speakers": state["speakers"],
    }
    (ARTIFACTS / "web_first_audio.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert len(state["latencies"]) == turns, state["latencies"]
    assert all(0 < seconds < 30 for seconds in state["latencies"]), state["latencies"]
    assert all("first audio" in turn["text"] for turn in figures["turns"]), figures
    assert state["chunkSamples"] == 640 and state["captureRate"] == 16_000
    assert level > 0.3 and speaker == "You are speaking", (level, speaker)
    # The indicator followed the conversation: you, then the assistant, each turn.
    spoke = [who for who in state["speakers"] if who != "nobody"]
    assert spoke[0] == "you" and spoke.count("you") >= turns, state["speakers"]
    assert spoke.count("assistant") >= turns, state["speakers"]


def server_first_audio(shown: dict[str, str]) -> float:
    """The server's first_audio figure from a reply's hover text."""
    found = re.search(r"first_audio ([\d.]+) s", shown["server"])
    assert found, shown
    return float(found[1])


@pytest.mark.models
async def test_a_typed_message_gets_a_spoken_reply(local: RunningServer) -> None:
    async with chromium() as browser:
        page = await open_page(browser, local.url)
        await page.fill("#text", "What is two plus two?")
        await page.press("#text", "Enter")
        await until(page, "sonicgate.state.replies.length > 0 && sonicgate.player.chunksPlayed > 0")
        state = await page_state(page)
    assert "4" in state["replies"][0] or "four" in state["replies"][0].lower(), state["replies"]
    assert state["audioChunksReceived"] > 0


@pytest.mark.models
async def test_speaking_during_the_reply_interrupts_it(
    local: RunningServer, tmp_path: Path
) -> None:
    wav = microphone(
        tmp_path / "mic.wav",
        silence(1),
        speak("Tell me a long story about a brave little dragon."),
        silence(6),
        speak("Stop. What is the capital of France?"),
    )
    async with chromium(wav) as browser:
        page = await open_page(browser, local.url)
        await page.click("#talk")
        await until(page, "sonicgate.state.interruptions > 0")
        state = await page_state(page)
        interrupted = await page.locator("#history li.assistant.interrupted").count()
        # The question is heard after the barge-in: in the same turn as "Stop.", or in
        # the next (espeak-ng's flat "Stop." may end a turn of its own).
        heard = "sonicgate.state.transcripts.slice(1).some(t => /capital/i.test(t))"
        await until(page, heard)
    assert state["audioChunksReceived"] > 0
    assert not state["playing"], "playback went on after the interruption"
    assert interrupted == 1


async def test_a_denied_microphone_is_explained_and_typing_still_works(
    server: RunningServer, tmp_path: Path
) -> None:
    async with chromium(microphone(tmp_path / "mic.wav"), allow=False) as browser:
        page = await open_page(browser, server.url)
        await page.click("#talk")
        await until(page, "!document.getElementById('notice').hidden", within_ms=10_000)
        notice = await page.inner_text("#notice")
        await page.fill("#text", "hello")
        await page.press("#text", "Enter")
        await until(page, "sonicgate.state.replies.length > 0", within_ms=10_000)
    assert "denied" in notice.lower()


async def test_an_engine_failure_is_shown_and_the_page_stays_connected(
    server: RunningServer, scripted: ScriptedEngine, tmp_path: Path
) -> None:
    scripted.fail_on_audio = True
    async with chromium(microphone(tmp_path / "mic.wav", speak("hello"))) as browser:
        page = await open_page(browser, server.url)
        await page.click("#talk")
        await until(page, "!document.getElementById('notice').hidden", within_ms=10_000)
        notice = await page.inner_text("#notice")
        connection = (await page_state(page))["connection"]
    assert "engine" in notice.lower()
    assert connection == "ready"


async def test_with_access_control_the_page_passes_its_token_on(
    make_uvicorn: ServerFactory, scripted: ScriptedEngine
) -> None:
    server = await make_uvicorn({"scripted": scripted}, api_keys=("page-key",))
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(server.url + "/")
        await until(page, "!document.getElementById('notice').hidden", within_ms=10_000)
        refused = await page.inner_text("#notice")
        await page.goto(server.url + "/?token=page-key")
        await until(page, "sonicgate.state.connection === 'ready'", within_ms=10_000)
    assert "token" in refused


async def test_the_page_reconnects_and_resumes_its_session(server: RunningServer) -> None:
    network = Relay(server.settings.port)
    await network.open()
    try:
        async with chromium() as browser:
            page = await open_page(browser, network.url)
            await page.fill("#text", "hello")
            await page.press("#text", "Enter")
            await until(page, "sonicgate.state.replies.length > 0", within_ms=10_000)
            session_id = (await page_state(page))["sessionId"]

            await network.cut()
            await until(page, "sonicgate.state.connection === 'down'", within_ms=10_000)
            label = await page.inner_text("#connection")
            await network.open()
            await until(page, "sonicgate.state.connection === 'ready'", within_ms=20_000)
            state = await page_state(page)
            history = await page.inner_text("#history")
    finally:
        await network.cut()
    assert "retrying" in label
    assert state["sessionId"] == session_id
    assert "Resumed conversation" in history


TONE_LEVELS = """async ([rates, frequencies]) => {
  const { Resampler } = await import("/resampler.js");
  const gains = {};
  for (const rate of rates) {
    for (const frequency of frequencies) {
      const resampler = new Resampler(rate, 16000);
      const out = [];
      const block = new Float32Array(128);
      for (let start = 0; start < rate; start += block.length) {
        for (let i = 0; i < block.length; i++) {
          block[i] = Math.sin((2 * Math.PI * frequency * (start + i)) / rate);
        }
        resampler.push(block, (sample) => out.push(sample));
      }
      const steady = out.slice(1000, 15000);
      const power = steady.reduce((sum, x) => sum + x * x, 0) / steady.length;
      gains[`${rate} ${frequency}`] = 10 * Math.log10(2 * power);
    }
  }
  return gains;
}"""


async def test_the_fallback_resampler_passes_speech_and_stops_what_would_alias(
    server: RunningServer,
) -> None:
    """The worklet's resampler, for browsers that capture at the device's rate:
    a tone in the speech band comes through whole, and one above 8 kHz (which
    a box filter would fold into the band Whisper hears) is gone."""
    async with chromium() as browser:
        page = await open_page(browser, server.url)
        gains = await page.evaluate(
            TONE_LEVELS,
            [[44_100, 48_000, 96_000], [300, 1_000, 4_000, 6_000, 9_000, 12_000, 20_000]],
        )
    for key, db in gains.items():
        frequency = int(key.split()[1])
        if frequency <= 6_000:
            assert abs(db) < 0.1, gains
        else:
            assert db < -70, gains


COUNT_AUDIO = """
window.made = { contexts: [], nodes: 0, streams: [] };
const Context = AudioContext;
window.AudioContext = class extends Context {
  constructor(...args) { super(...args); made.contexts.push(this); }
};
const Node = AudioWorkletNode;
window.AudioWorkletNode = class extends Node {
  constructor(...args) { super(...args); made.nodes += 1; }
};
const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) => {
  const stream = await open(constraints);
  made.streams.push(stream);
  return stream;
};
"""
MADE = """() => ({
  contexts: made.contexts.map((context) => [context.sampleRate, context.state]),
  nodes: made.nodes,
  live: made.streams.filter((s) => s.getTracks().some((t) => t.readyState === "live")).length,
  streams: made.streams.length,
})"""


async def toggle(page: Page, on: bool) -> None:
    await page.click("#talk")
    pressed = "true" if on else "false"
    await until(page, f"document.getElementById('talk').ariaPressed === '{pressed}'", 10_000)


async def test_toggling_the_microphone_reuses_one_worklet_and_releases_the_device(
    server: RunningServer, tmp_path: Path
) -> None:
    """Every toggle used to add an AudioWorklet node that ran for the page's life."""
    async with chromium(microphone(tmp_path / "mic.wav", speak("hello there"))) as browser:
        page = await browser.new_page()
        await page.add_init_script(COUNT_AUDIO)
        await page.goto(server.url + "/")
        await until(page, "sonicgate.state.connection === 'ready'", 10_000)
        for _ in range(5):
            await toggle(page, on=True)
            await toggle(page, on=False)
        await toggle(page, on=True)
        sent = (await page_state(page))["chunksSent"]
        await until(page, f"sonicgate.state.chunksSent > {sent + 5}", 10_000)
        live = await page.evaluate(MADE)
        state = await page_state(page)
        await toggle(page, on=False)
        muted = await page.evaluate(MADE)
    # One capture context at 16 kHz and one playback context at the replies' rate.
    assert sorted(rate for rate, _ in live["contexts"]) == [16_000, 24_000], live
    assert live["nodes"] == 1 and live["streams"] == 6 and live["live"] == 1, live
    assert muted["live"] == 0, muted
    assert [16_000, "suspended"] in muted["contexts"], muted
    assert state["chunkSamples"] == 640 and state["captureRate"] == 16_000


REFUSE_16_KHZ = """
const create = AudioContext.prototype.createMediaStreamSource;
AudioContext.prototype.createMediaStreamSource = function (stream) {
  if (this.sampleRate === 16000) {
    throw new DOMException("Connecting AudioNodes from AudioContexts with different"
      + " sample-rate is currently not supported.", "NotSupportedError");
  }
  return create.call(this, stream);
};
"""


async def test_where_a_16_khz_context_is_refused_the_worklet_resamples(
    server: RunningServer, tmp_path: Path
) -> None:
    """Firefox's refusal, played by Chromium: the page captures at the device's
    rate and still sends 40 ms of 16 kHz audio per chunk."""
    speech = speak("Hello there, this is a test of the microphone in the browser.")
    async with chromium(microphone(tmp_path / "mic.wav", silence(0.5), speech)) as browser:
        page = await browser.new_page()
        await page.add_init_script(REFUSE_16_KHZ)
        await page.goto(server.url + "/")
        await until(page, "sonicgate.state.connection === 'ready'", 10_000)
        await page.click("#talk")
        await until(page, "sonicgate.state.partials.length > 0", 10_000)
        state = await page_state(page)
    assert state["captureRate"] in (44_100, 48_000), state["captureRate"]
    assert state["chunkSamples"] == 640
    assert "you" in state["speakers"]
    assert not state["errors"], state["errors"]


class Relay:
    """A TCP relay between the browser and the server that the test can cut, as a
    network failure would: open connections drop, new ones are refused."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0  # the kernel picks at the first open; the same one after a cut
        self.listener: asyncio.Server | None = None
        self.links: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open(self) -> None:
        self.listener = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.listener.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        for writer in self.links:
            writer.transport.abort()
        self.links.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.links += [writer, server_out]
        await asyncio.gather(
            _pipe(reader, server_out), _pipe(server_in, writer), return_exceptions=True
        )


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()


async def test_stop_audio_silences_the_rest_of_the_reply(server: RunningServer) -> None:
    """A reply's audio comes sentence by sentence (the local engine synthesizes each as
    the LLM writes it): Stop must silence the reply, not only what was queued so far."""
    held: list[str] = []
    release = asyncio.Event()

    async def hold_the_second_chunk(ws: WebSocketRoute) -> None:
        to_server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            if isinstance(message, str) and '"audio_response"' in message:
                held.append(message)
                if len(held) > 1:
                    return  # the next sentence, synthesized while the first plays
            ws.send(message)

        to_server.on_message(from_server)
        await release.wait()
        ws.send(held[1])

    async with chromium() as browser:
        page = await browser.new_page()
        stream = re.compile(r".*/api/nova-sonic/stream.*")
        await page.route_web_socket(stream, hold_the_second_chunk)
        await page.goto(server.url + "/")
        await until(page, "sonicgate.state.connection === 'ready'", 10_000)
        await page.fill("#text", "tell me a story")
        await page.press("#text", "Enter")
        await until(page, "sonicgate.state.audioChunksReceived === 1", 10_000)
        await page.click("#stop")
        played = (await page_state(page))["played"]
        release.set()
        await until(page, "sonicgate.state.audioChunksReceived === 2", 10_000)
        await asyncio.sleep(1)  # the chunk's 0.2 s, had it been scheduled
        state = await page_state(page)
    assert state["played"] == played, "audio of the stopped reply played after Stop"


async def test_the_microphone_can_be_muted_once_the_conversation_ended(
    server: RunningServer, tmp_path: Path
) -> None:
    """README: **Mute microphone** releases the device. After End conversation the page
    must not keep the microphone open with its button disabled."""
    async with chromium(microphone(tmp_path / "mic.wav", speak("hello there"))) as browser:
        page = await browser.new_page()
        await page.add_init_script(COUNT_AUDIO)
        await page.goto(server.url + "/")
        await until(page, "sonicgate.state.connection === 'ready'", 10_000)
        await toggle(page, on=True)
        await until(page, "sonicgate.state.chunksSent > 5", 10_000)
        await page.click("#end")
        await until(page, "sonicgate.state.connection === 'idle'", 10_000)
        made = await page.evaluate(MADE)
        can_mute = await page.is_enabled("#talk")
        label = await page.inner_text("#talk")
    assert made["live"] == 0 or can_mute, (made, label, can_mute)


async def test_an_idle_page_does_not_reconnect_on_its_own_again_and_again(
    make_uvicorn: ServerFactory, scripted: ScriptedEngine
) -> None:
    """The server closes a connection idle for --idle-timeout (error idle_timeout, close
    1001): the page left open must not resume at once, over and over, each time adding
    a "Resumed conversation" note to the history."""
    server = await make_uvicorn({"scripted": scripted}, idle_timeout_seconds=1.0)
    async with chromium() as browser:
        page = await open_page(browser, server.url)
        await asyncio.sleep(5)  # nobody touches the page
        notes = await page.locator("#history li.note").all_inner_texts()
    assert not [note for note in notes if "Resumed" in note], notes


async def test_a_duplicated_tab_leaves_the_first_one_usable_or_says_it_is_not(
    server: RunningServer,
) -> None:
    """A duplicated tab gets a copy of sessionStorage, so it resumes the same session and
    the server tells the first tab session_moved. The first must not then stay "ready"
    with its controls on, failing every message with no_session."""
    async with chromium() as browser:
        first = await open_page(browser, server.url)
        session_id = (await page_state(first))["sessionId"]
        duplicate = await browser.new_page()
        await duplicate.add_init_script(
            f"sessionStorage.setItem('sonicgate.sessionId', {json.dumps(session_id)})"
        )
        await duplicate.goto(server.url + "/")
        await until(duplicate, "sonicgate.state.connection === 'ready'", 10_000)
        await until(first, "sonicgate.state.errors.length > 0", 10_000)
        shown = await page_state(first)
        if await first.is_enabled("#send"):
            await first.fill("#text", "hello")
            await first.press("#text", "Enter")
            answered = "sonicgate.state.replies.length > 0 || sonicgate.state.errors.length > 1"
            await until(first, answered, 10_000)
        state = await page_state(first)
    codes = [error["code"] for error in state["errors"]]
    assert "no_session" not in codes, (shown["connection"], state["errors"])


async def test_a_turn_heard_as_nothing_adds_no_empty_bubble(server: RunningServer) -> None:
    """A cough or a door sets the local engine's turn off, and Whisper hears no speech:
    the server sends a final `transcription` with text "" (confidence 0, and for a
    silence-ended turn no error). The page must not show an empty "you said" bubble."""
    routes: list[WebSocketRoute] = []

    async def relay(ws: WebSocketRoute) -> None:
        ws.connect_to_server()
        routes.append(ws)

    async with chromium() as browser:
        page = await browser.new_page()
        await page.route_web_socket(re.compile(r".*/api/nova-sonic/stream.*"), relay)
        await page.goto(server.url + "/")
        await until(page, "sonicgate.state.connection === 'ready'", 10_000)
        session_id = (await page_state(page))["sessionId"]
        heard_nothing = {
            "type": "transcription",
            "sessionId": session_id,
            "text": "",
            "isFinal": True,
            "confidence": 0.0,
            "role": "user",
        }
        routes[0].send(json.dumps(heard_nothing))
        await until(page, "sonicgate.state.transcripts.length === 1", 10_000)
        bubbles = await page.locator("#history li.user").all_inner_texts()
    assert not bubbles, bubbles
