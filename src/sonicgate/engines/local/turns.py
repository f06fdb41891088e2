"""Turn-taking for the local engine: where speech starts and ends.

Pure logic over VAD probabilities, driven by audio time (frames), not the
wall clock, so it is tested without sleeping. A turn ends when the turn
detector, asked at a short silence, says the user is done (its answer comes
back through ``Endpointer.answer``), or after a longer silence if it said not;
without the detector (``semantic=False``), after a fixed silence. Where the
detector is unsure, the words have a say (``Endpointer.words``): whether what
the user said so far is a whole sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

FRAME_SAMPLES = 512  # Silero's frame at 16 kHz
FRAME_MS = FRAME_SAMPLES * 1000 / 16_000


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """Endpointing knobs, in milliseconds of audio."""

    # Chosen by bench/turn_taking.py: asked at 128 ms of silence the detector does as well
    # as at 200 ms, and sooner; it calls many pauses the end with p > 0.9, so only a
    # near-certain answer ends the turn. Its pauses (0.5-1.2 s) stay under the fallback.
    semantic: bool = True  # ask the turn detector; False: the silence rule alone
    ask_ms: int = 128  # silence after which the turn detector is asked
    complete_threshold: float = 0.97  # the detector's probability that ends the turn
    # Or, from bench/turn_taking.py: the detector at least this sure, and the words at
    # least this likely a whole sentence. Cut-off phrases read as whole at most 0.3 in
    # its pauses that the detector scored over 0.5; finished ones 0.4-0.97.
    unsure_threshold: float = 0.5
    sentence_threshold: float = 0.4
    fallback_ms: int = 1500  # silence that ends a turn the detector said was not over
    silence_ms: int = 500  # silence that ends a turn by the silence rule (and a noise)
    # The answer starts speculatively after this silence: 32 ms sooner than at 96 ms, for
    # 2 % more speculations (dropped when the user goes on) on bench.turn_taking's clips.
    speculate_ms: int = 64
    min_speech_ms: int = 200  # shorter bursts are noise, not a turn
    onset_ms: int = 64  # speech this long starts a turn (and barges in)
    partial_every_ms: int = 500  # re-decode the growing utterance this often
    first_partial_ms: int = 1000  # no partials in the first second
    max_turn_ms: int = 28_000  # Whisper hears 30 s at most: end the turn before
    start_threshold: float = 0.5
    end_threshold: float = 0.35


class Cue(Enum):
    SPEECH_STARTED = auto()
    PARTIAL = auto()  # time for a partial transcript
    SPECULATE = auto()  # probably the end: start answering, hold the output
    ASK = auto()  # time to ask the turn detector whether the user is done (ask number ``asks``)
    RESUMED = auto()  # the user went on speaking: drop the speculative answer
    END_OF_TURN = auto()
    NOISE = auto()  # the burst was too short to be a turn


def frames(ms: int) -> int:
    return max(1, round(ms / FRAME_MS))


class Endpointer:
    """Turns per-frame speech probabilities into turn cues."""

    def __init__(self, options: TurnOptions) -> None:
        self.options = options
        self.in_turn = False
        self._voiced_run = 0  # consecutive voiced frames (onset detection)
        self._silent_run = 0
        self._speech_frames = 0
        self._turn_frames = 0
        self._speculating = False
        self._next_partial = frames(options.first_partial_ms)
        self.asks = 0  # asks so far: an answer names the one it answers
        self._awaited: int | None = None  # the ask whose answer still counts
        # In this silence: the detector's answer, and how whole a sentence the words are.
        self._heard: float | None = None
        self._sentence: float | None = None

    @property
    def turn_ms(self) -> float:
        return self._turn_frames * FRAME_MS

    def reset(self) -> None:
        self.in_turn = False
        self._voiced_run = self._silent_run = self._speech_frames = self._turn_frames = 0
        self._speculating = False
        self._next_partial = frames(self.options.first_partial_ms)
        self._awaited = None
        self._heard = self._sentence = None

    def step(self, probability: float) -> Cue | None:
        o = self.options
        voiced = probability >= (o.end_threshold if self.in_turn else o.start_threshold)
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        if not self.in_turn:
            if self._voiced_run >= frames(o.onset_ms):
                self.in_turn = True
                self._speech_frames = self._turn_frames = self._voiced_run
                self._silent_run = 0
                return Cue.SPEECH_STARTED
            return None

        self._turn_frames += 1
        if voiced:
            self._speech_frames += 1
            self._silent_run = 0
            self._awaited = None  # the user goes on: an answer on the pause comes too late
            self._heard = self._sentence = None
            if self._speculating:
                self._speculating = False
                return Cue.RESUMED
            if self._turn_frames >= frames(o.max_turn_ms):
                return self._end()
            if self._turn_frames >= self._next_partial:
                self._next_partial = self._turn_frames + frames(o.partial_every_ms)
                return Cue.PARTIAL
            return None

        self._silent_run += 1
        enough_speech = self._speech_frames >= frames(o.min_speech_ms)
        semantic = o.semantic and enough_speech
        if self._silent_run >= frames(o.fallback_ms if semantic else o.silence_ms):
            return self._end()
        if semantic and self._silent_run == frames(o.ask_ms):
            self.asks += 1
            self._awaited = self.asks
            return Cue.ASK
        if not self._speculating and self._silent_run >= frames(o.speculate_ms) and enough_speech:
            self._speculating = True
            return Cue.SPECULATE
        return None

    def answer(self, ask: int, probability: float) -> Cue | None:
        """The detector's answer to ask number ``ask``: END_OF_TURN when the user is
        done; None when not, or too late (the user spoke again, the turn ended)."""
        if ask != self._awaited:
            return None
        self._awaited = None
        self._heard = probability
        return self._decide()

    def words(self, probability: float) -> Cue | None:
        """How likely the words heard up to this silence are a whole sentence: with the
        detector's answer, END_OF_TURN when together they say the user is done."""
        if not self.in_turn or not self._silent_run:
            return None  # the user went on (or the turn ended) before the words came
        self._sentence = probability
        return self._decide()

    def _decide(self) -> Cue | None:
        o, heard, sentence = self.options, self._heard, self._sentence
        if heard is None:
            return None
        whole = sentence is not None and sentence >= o.sentence_threshold
        if heard >= o.complete_threshold or (whole and heard >= o.unsure_threshold):
            return self._end()
        return None

    def _end(self) -> Cue:
        long_enough = self._speech_frames >= frames(self.options.min_speech_ms)
        self.reset()
        return Cue.END_OF_TURN if long_enough else Cue.NOISE
