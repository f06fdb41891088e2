"""The StreamingContext state machine, the chunk sequencer, turn recordings."""

from __future__ import annotations

import base64
import wave

import pytest

from sonicgate.domain import ProcessingState as S
from sonicgate.events import (
    AudioOut,
    Interrupted,
    ResponseTextDelta,
    SpeechStarted,
    TranscriptFinal,
    TriggerReason,
    TurnEnded,
)
from sonicgate.sessions import sinks as session_module
from sonicgate.sessions.sequencer import Sequencer
from sonicgate.sessions.state import StateMachine
from tests.conftest import Connect, ServerFactory
from tests.scripted_engine import ScriptedEngine


def test_a_turn_walks_idle_receiving_processing_responding_idle() -> None:
    machine = StateMachine()
    seen = [machine.state]
    for event in (
        SpeechStarted(),
        TranscriptFinal("hi", 0.9, TriggerReason.SILENCE),
        ResponseTextDelta("Hello"),
        AudioOut(b"\0\0", 24000),
        TurnEnded(),
    ):
        if machine.follow(event):
            seen.append(machine.state)
    assert seen == [S.IDLE, S.RECEIVING, S.PROCESSING, S.RESPONDING, S.IDLE]


def test_barge_in_goes_back_to_receiving_and_late_output_does_not_move_it() -> None:
    machine = StateMachine(S.RESPONDING)
    assert machine.follow(Interrupted())
    assert machine.state is S.RECEIVING
    assert not machine.follow(ResponseTextDelta("late"))
    assert not machine.follow(TurnEnded(interrupted=True))
    assert machine.state is S.RECEIVING


def test_typed_input_goes_straight_to_processing() -> None:
    machine = StateMachine()
    assert machine.follow(TranscriptFinal("typed", 1.0, TriggerReason.TEXT))
    assert machine.state is S.PROCESSING


def test_an_unexpected_transition_is_logged_and_followed(caplog: pytest.LogCaptureFixture) -> None:
    machine = StateMachine(S.RESPONDING)
    assert machine.move(S.PROCESSING)  # typed text during a reply, as one engine sends it
    assert machine.state is S.PROCESSING
    assert "unexpected state change responding -> processing" in caplog.text


def test_sequencer_reorders_within_the_window() -> None:
    sequencer: Sequencer[str] = Sequencer(window=4)
    assert sequencer.accept(1, "a") == (["a"], [])
    assert sequencer.accept(3, "c") == ([], [])
    assert sequencer.accept(2, "b") == (["b", "c"], [])
    assert sequencer.last_released == 3


def test_sequencer_reports_duplicates_and_late_chunks() -> None:
    sequencer: Sequencer[str] = Sequencer(window=4)
    sequencer.accept(0, "a")
    released, notices = sequencer.accept(0, "again")
    assert released == [] and notices[0].code == "duplicate_chunk"


def test_sequencer_skips_a_gap_the_window_cannot_close() -> None:
    sequencer: Sequencer[int] = Sequencer(window=2)
    sequencer.accept(1, 1)
    assert sequencer.accept(3, 3) == ([], [])
    assert sequencer.accept(4, 4) == ([], [])
    released, notices = sequencer.accept(5, 5)
    assert released == [3, 4, 5]
    assert notices[0].code == "sequence_gap" and "2" in notices[0].message


def test_sequencer_drains_in_order_at_the_end() -> None:
    sequencer: Sequencer[int] = Sequencer(window=8, next_expected=10)
    sequencer.accept(12, 12)
    sequencer.accept(11, 11)
    released, notices = sequencer.drain()
    assert released == [11, 12]
    assert [n.code for n in notices] == ["sequence_gap"]


def test_unnumbered_chunks_pass_straight_through() -> None:
    sequencer: Sequencer[str] = Sequencer()
    assert sequencer.accept(None, "x") == (["x"], [])


async def test_a_turn_recording_keeps_only_its_last_stretch(
    make_server: ServerFactory,
    scripted: ScriptedEngine,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A microphone left open between turns must not grow the session's memory."""
    monkeypatch.setattr(session_module, "RECORDING_LIMIT_SECONDS", 1)
    server = await make_server({"scripted": scripted})
    client = await connect(server.ws())
    await client.send({"type": "initialize"})
    session_id = (await client.recv())["sessionId"]
    second = base64.b64encode(bytes(32_000)).decode()
    for _ in range(3):
        await client.send({"type": "audio_chunk", "audio": second})
    await client.send({"type": "audio_chunk", "audio": second, "isComplete": True})
    await client.until("text_response")
    recording = server.settings.audio_dir / session_id / "00001-user.wav"
    with wave.open(str(recording)) as wav:
        assert wav.getnframes() == 16_000
