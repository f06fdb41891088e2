"""Endpointing over VAD probabilities (audio time, no sleeping), and the turn detector."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from bench.speech import RATE, natural, paused, silence
from sonicgate.config import default_data_dir
from sonicgate.engines.local.smart_turn import WINDOW, SmartTurn, window
from sonicgate.engines.local.turns import Cue, Endpointer, TurnOptions, frames
from sonicgate.models import locate

# The silence rule; SEMANTIC asks a turn detector.
OPTIONS = TurnOptions(
    semantic=False, silence_ms=480, speculate_ms=160, min_speech_ms=192, onset_ms=64
)
SEMANTIC = TurnOptions(
    semantic=True, ask_ms=192, complete_threshold=0.5, fallback_ms=1504, min_speech_ms=192
)
ANSWER_MS = 96  # the fake detector's inference time, in audio that goes on arriving

Detector = Callable[[int], float]  # ask number -> probability that the user is done


def run(
    endpointer: Endpointer, pattern: list[tuple[float, int]], detector: Detector | None = None
) -> list[tuple[int, Cue]]:
    """Feed (probability, milliseconds) runs; return (frame index, cue) pairs. An ASK is
    answered by ``detector`` ANSWER_MS later, as the real one answers from its thread."""
    cues: list[tuple[int, Cue]] = []
    answers: dict[int, int] = {}  # frame index -> the ask answered then
    index = 0
    for probability, ms in pattern:
        for _ in range(frames(ms)):
            stepped = endpointer.step(probability)
            if stepped is Cue.ASK:
                answers[index + frames(ANSWER_MS)] = endpointer.asks
            ask = answers.pop(index, None)
            answered = None
            if ask is not None and detector is not None:
                answered = endpointer.answer(ask, detector(ask))
            cues += [(index, cue) for cue in (stepped, answered) if cue is not None]
            index += 1
    return cues


def test_speech_then_silence_ends_the_turn_after_speculating() -> None:
    cues = run(Endpointer(OPTIONS), [(0.0, 320), (0.9, 800), (0.05, 800)])
    kinds = [cue for _, cue in cues]
    assert kinds == [Cue.SPEECH_STARTED, Cue.SPECULATE, Cue.END_OF_TURN]
    _, speculate, end = (index for index, _ in cues)
    assert speculate - (10 + 25) == frames(160) - 1
    assert end - speculate == frames(480) - frames(160)


def turn_cues(
    pattern: list[tuple[float, int]],
    options: TurnOptions = OPTIONS,
    detector: Detector | None = None,
) -> list[Cue]:
    return [cue for _, cue in run(Endpointer(options), pattern, detector) if cue is not Cue.PARTIAL]


def test_a_short_pause_resumes_the_turn() -> None:
    kinds = turn_cues([(0.9, 640), (0.0, 256), (0.9, 640), (0.0, 800)])
    assert kinds == [Cue.SPEECH_STARTED, Cue.SPECULATE, Cue.RESUMED, Cue.SPECULATE, Cue.END_OF_TURN]


def test_a_click_is_noise_not_a_turn() -> None:
    kinds = [c for _, c in run(Endpointer(OPTIONS), [(0.9, 96), (0.0, 800)])]
    assert kinds == [Cue.SPEECH_STARTED, Cue.NOISE]


def test_a_single_voiced_frame_does_not_start_a_turn() -> None:
    assert run(Endpointer(OPTIONS), [(0.9, 32), (0.0, 500)]) == []


def test_partials_every_half_second_after_the_first_second() -> None:
    cues = run(Endpointer(OPTIONS), [(0.9, 2600)])
    partials = [index for index, cue in cues if cue is Cue.PARTIAL]
    assert len(partials) == 4
    assert partials[1] - partials[0] == frames(500)


def test_hysteresis_keeps_quieter_speech_in_the_turn() -> None:
    kinds = turn_cues([(0.9, 320), (0.4, 800), (0.0, 800)])
    assert kinds == [Cue.SPEECH_STARTED, Cue.SPECULATE, Cue.END_OF_TURN]


def test_max_turn_length_forces_an_end() -> None:
    options = TurnOptions(max_turn_ms=2000)
    kinds = [c for _, c in run(Endpointer(options), [(0.9, 2500)])]
    assert Cue.END_OF_TURN in kinds


# Semantic end of turn -------------------------------------------------------------


def test_the_user_done_ends_the_turn_at_the_ask() -> None:
    cues = run(Endpointer(SEMANTIC), [(0.9, 800), (0.0, 2000)], lambda ask: 0.9)
    assert [cue for _, cue in cues] == [Cue.SPEECH_STARTED, Cue.SPECULATE, Cue.ASK, Cue.END_OF_TURN]
    last_voiced = frames(800) - 1
    ask, end = (index for index, cue in cues if cue in (Cue.ASK, Cue.END_OF_TURN))
    assert ask - last_voiced == frames(192)
    assert end - ask == frames(ANSWER_MS)


def test_the_user_not_done_waits_for_the_fallback() -> None:
    cues = run(Endpointer(SEMANTIC), [(0.9, 800), (0.0, 2000)], lambda ask: 0.2)
    assert [cue for _, cue in cues] == [Cue.SPEECH_STARTED, Cue.SPECULATE, Cue.ASK, Cue.END_OF_TURN]
    assert cues[-1][0] - (frames(800) - 1) == frames(1504)


def test_speech_resuming_before_the_answer_cancels_the_ask() -> None:
    # The pause is shorter than ask + answer: the first answer ("done") comes too late.
    pattern = [(0.9, 800), (0.0, 224), (0.9, 640), (0.0, 2000)]
    assert turn_cues(pattern, SEMANTIC, lambda ask: 0.9) == [
        *(Cue.SPEECH_STARTED, Cue.SPECULATE, Cue.ASK, Cue.RESUMED),
        *(Cue.SPECULATE, Cue.ASK, Cue.END_OF_TURN),
    ]


def test_an_answer_after_the_turn_ended_counts_for_nothing() -> None:
    endpointer = Endpointer(SEMANTIC)
    run(endpointer, [(0.9, 800), (0.0, 192)])
    ask = endpointer.asks
    endpointer.reset()  # the client ended the turn itself
    assert endpointer.answer(ask, 0.99) is None
    assert endpointer.answer(ask + 1, 0.99) is None  # no such ask


# The detector unsure between these: the words decide.
UNSURE = TurnOptions(
    semantic=True, ask_ms=192, complete_threshold=0.97, unsure_threshold=0.5,
    sentence_threshold=0.4, fallback_ms=1504, min_speech_ms=192,
)  # fmt: skip


def paused_after_speech(options: TurnOptions, heard: float) -> Endpointer:
    """An endpointer whose detector answered ``heard`` in the silence after 800 ms of speech."""
    endpointer = Endpointer(options)
    run(endpointer, [(0.9, 800), (0.0, 192)])
    assert endpointer.answer(endpointer.asks, heard) is None  # unsure: no end yet
    return endpointer


@pytest.mark.parametrize("heard", [0.6, 0.9])
def test_an_unsure_detector_and_a_whole_sentence_end_the_turn(heard: float) -> None:
    assert paused_after_speech(UNSURE, heard).words(0.8) is Cue.END_OF_TURN


def test_the_words_may_come_before_the_detector_answers() -> None:
    endpointer = Endpointer(UNSURE)
    run(endpointer, [(0.9, 800), (0.0, 192)])
    assert endpointer.words(0.8) is None  # the detector has yet to answer
    assert endpointer.answer(endpointer.asks, 0.7) is Cue.END_OF_TURN


@pytest.mark.parametrize(("heard", "sentence"), [(0.9, 0.1), (0.3, 0.95)])
def test_a_fragment_or_a_doubtful_detector_waits_for_the_fallback(
    heard: float, sentence: float
) -> None:
    endpointer = paused_after_speech(UNSURE, heard)
    assert endpointer.words(sentence) is None
    cues = run(endpointer, [(0.0, 1504)])
    assert [cue for _, cue in cues] == [Cue.END_OF_TURN]
    assert cues[0][0] == frames(1504) - frames(192) - 1  # the fallback, not sooner


def test_words_of_a_pause_the_user_spoke_on_after_count_for_nothing() -> None:
    endpointer = paused_after_speech(UNSURE, 0.8)
    run(endpointer, [(0.9, 320)])  # the user goes on
    assert endpointer.words(0.9) is None  # speaking: the words came too late
    run(endpointer, [(0.0, 192)])  # the next pause's ask, not yet answered
    assert endpointer.words(0.9) is None  # this pause's detector has not answered
    assert endpointer.answer(endpointer.asks, 0.3) is None  # and is doubtful: no end


def test_a_click_is_noise_and_asks_nothing() -> None:
    kinds = turn_cues([(0.9, 96), (0.0, 800)], SEMANTIC, lambda ask: 1.0)
    assert kinds == [Cue.SPEECH_STARTED, Cue.NOISE]


# The turn detector ----------------------------------------------------------------


def test_the_detector_hears_the_last_eight_seconds_after_zeros() -> None:
    short = window(np.full(RATE, 1000, "<i2").tobytes())
    assert len(short) == WINDOW
    assert np.allclose(short[: WINDOW - RATE], short[0])  # the zeros before, as one level
    assert abs(float(short.mean())) < 1e-3 and abs(float(short.std()) - 1) < 1e-3
    ramp = np.arange(10 * RATE, dtype=np.int64) % 30_000
    kept = window(ramp.astype("<i2").tobytes())
    expected = ramp[-WINDOW:].astype(np.float32)
    assert np.allclose(kept, (expected - expected.mean()) / expected.std(), atol=1e-3)


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of | France?",
        "I'd like a table for | four people.",
        "My address is | twelve Baker Street.",
        "I want to order | a large pizza with mushrooms.",
    ],
)
@pytest.mark.models
def test_the_detector_tells_a_finished_sentence_from_one_cut_mid_phrase(text: str) -> None:
    # Its probabilities move with the CPU's float kernels (0.75 or under 0.5 for the same
    # cut question on two machines): what holds is the order, and that a phrase cut off
    # at a pause never reaches the probability that ends a turn.
    detector = SmartTurn(locate(default_data_dir()).turn)
    finished = natural(text.replace(" | ", " ")) + silence(0.2)
    said, (pause,) = paused(text, [0.5])
    cut = said[: round(pause * RATE) * 2] + silence(0.2)
    said_cut = detector.probability(cut)
    assert detector.probability(finished) > said_cut
    assert said_cut < TurnOptions().complete_threshold
