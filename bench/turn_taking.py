"""Turn-taking of the local engine: how often a rule cuts the user off, and how long it
waits after the user is done. The silence rule and the turn detector, in one run.

Speech is made here: half the utterances with pauses inside them (0.5-1.2 s, at
commas and hesitations: "I'd like a table for ... four people"), half said in one
go. hibari's voice by default; Piper's "joe" (``--voice joe``) is another neural
voice, and espeak-ng's flat intonation (``--voice espeak``) gives the detector
little to hear: finished sentences mostly sound unfinished to it.
Each utterance goes through the VAD and the endpointer frame by frame on a
virtual clock; the detector's answer comes after its real inference time,
measured here. So do the words, for the rules that read them: at the moment the
engine would start its speculative answer, Whisper transcribes what was heard and
the LLM reads how whole a sentence it is (both timed). A false cut-off: the turn
ended before the speech did (inside a pause). The wait: from the true end of
speech to the end of the turn. Writes ``bench/results/turn_taking.json``
(``turn_taking_joe.json``, ``turn_taking_espeak.json`` for the other voices).

    python -m bench.turn_taking [--voice espeak] [--ask-ms 200] [--thresholds 0.5 0.9]
                                [--unsure 0.7 0.8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench.harness import percentile, write_results
from bench.speech import RATE, joe, natural, paused, silence, speak
from sonicgate.config import default_data_dir
from sonicgate.engines.base import EngineConfig
from sonicgate.engines.local.engine import chat_prompt
from sonicgate.engines.local.llm import ChatModel
from sonicgate.engines.local.smart_turn import SmartTurn
from sonicgate.engines.local.stt import Transcriber
from sonicgate.engines.local.turns import FRAME_MS, FRAME_SAMPLES, Cue, Endpointer, TurnOptions
from sonicgate.engines.local.vad import SileroVad, VadStream
from sonicgate.models import locate

# A bar is a pause (at a comma or after a hesitation).
PAUSED = (
    "I'd like a table for | four people.",
    "My number is | five five five | one two three four.",
    "What is the capital of | France?",
    "I need to book a flight to | Paris next Monday.",
    "Could you remind me to, uh | call my mother at six?",
    "So the problem is | my laptop won't turn on.",
    "I was thinking we could | go to the beach tomorrow.",
    "Can you tell me about | the weather this weekend?",
    "The meeting is on | Thursday at ten.",
    "I want to order | a large pizza with mushrooms.",
    "My favourite colour is, um | dark green.",
    "Please send the report to | the whole team by Friday.",
    "Set an alarm for | seven thirty tomorrow morning.",
    "The name on the booking is | Jonathan | Smith.",
    "How long does it take to drive from | London to Manchester?",
    "I'm looking for a restaurant that | serves vegetarian food.",
    "Can you play some music by | the Beatles?",
    "My address is | twelve Baker Street.",
    "I'd like to move my appointment to | next Wednesday afternoon.",
    "What's a good recipe for | chocolate cake?",
    "The package should arrive on, uh | the fifteenth of June.",
    "Tell me a story about | a dragon who loves books.",
    "I think the answer is | forty two.",
    "We need two coffees | a tea | and a glass of water.",
    "Can you check if | the store is open on Sunday?",
    "I'd like to cancel | my subscription please.",
    "The password is, um | blue elephant seven.",
    "Remind me to buy | milk, eggs and bread.",
    "How much does it cost to | fly to New York?",
    "Let's meet at the cafe near | the train station.",
    "I've been having trouble with | my internet connection.",
    "Is there a pharmacy | close to here?",
    "Could you translate | good morning into Spanish?",
    "I'd like to pay with | my credit card.",
    "The flight number is | two eight one.",
    "What time does the | last bus leave?",
    "Can I get a refund for | the shoes I bought yesterday?",
    "My daughter's birthday is on | the third of May.",
    "I'm calling about | the invoice you sent last week.",
    "Turn the volume up to, uh | about seventy percent.",
)
COMPLETE = (
    "What is the capital of France?",
    "Tell me a fun fact about the moon.",
    "How many legs does a spider have?",
    "What should I cook for dinner tonight?",
    "Can you recommend a good book?",
    "Yes, that sounds great.",
    "Why is the sky blue?",
    "Give me a tip for sleeping better.",
    "What is the tallest mountain in the world?",
    "How do I make a cup of tea?",
    "No thanks, I'm fine.",
    "Name a famous painter.",
    "What do bees make?",
    "How far away is the sun?",
    "Okay, let's do that.",
    "Tell me a short joke.",
    "What language is spoken in Brazil?",
    "How many days are in a leap year?",
    "Well, I'm not sure about that.",
    "Suggest a name for a cat.",
    "What is the largest ocean?",
    "Thank you, that was really helpful.",
    "Book a table for four people at eight.",
    "Can you turn off the lights in the kitchen?",
    "What time is it in Tokyo?",
    "Play some relaxing music.",
    "Sure, go ahead.",
    "How do you say thank you in French?",
    "What's the weather like today?",
    "Is it going to rain tomorrow?",
    "Hmm, let me think about it.",
    "Call me a taxi to the airport.",
    "What's on my calendar for Friday?",
    "I'd like two tickets for the concert.",
    "Right, that makes sense.",
    "How tall is the Eiffel Tower?",
    "Please turn on the heating.",
    "Who wrote Pride and Prejudice?",
    "Actually, I changed my mind.",
    "Send a message to Sarah saying I'm running late.",
)
VOICES = {"hibari": natural, "joe": joe, "espeak": speak}
LEAD = 0.3  # seconds of silence before the speech (a microphone's)
TAIL = 4.0  # after it: longer than any rule waits
FRAME_BYTES = FRAME_SAMPLES * 2


@dataclass(frozen=True)
class Clip:
    text: str
    pcm: bytes
    vad: list[float]  # per frame
    speech_end: float  # seconds into the clip
    pauses: list[tuple[float, float]]  # (start, end), seconds into the clip


@dataclass(frozen=True)
class Ending:
    at: float  # seconds into the clip
    by_detector: bool  # the detector said done (else a silence ran out)


class Detector:
    """The turn detector, each ask answered once (rules that ask at the same moment of the
    same clip share the answer), its inference time measured."""

    def __init__(self) -> None:
        self.model = SmartTurn(locate(default_data_dir()).turn)
        self.model.probability(bytes(RATE * 2))  # warm up
        self.answers: dict[tuple[int, int], tuple[float, float]] = {}

    def ask(self, clip: Clip, frame: int) -> tuple[float, float]:
        """(probability that the user is done, seconds the model took)."""
        key = (id(clip), frame)
        if key not in self.answers:
            started = time.perf_counter()
            probability = self.model.probability(clip.pcm[: (frame + 1) * FRAME_BYTES])
            self.answers[key] = (probability, time.perf_counter() - started)
        return self.answers[key]


class Words:
    """What the engine reads from the words at a speculation: the transcript so far and
    how whole a sentence it is (the default system prompt, no history), each read once,
    timed."""

    def __init__(self) -> None:
        paths = locate(default_data_dir())
        self.stt = Transcriber(paths.stt, 1)
        self.llm = ChatModel(paths.llm)
        self.system = EngineConfig().system_prompt
        self.answers: dict[tuple[int, int], tuple[float, float]] = {}
        # For the results file: what Whisper heard at each reading, and how whole it was.
        self.heard: dict[str, dict[str, Any]] = {}

    def read(self, clip: Clip, frame: int) -> tuple[float, float]:
        """(probability that the words so far are a whole sentence, seconds it took)."""
        key = (id(clip), frame)
        if key not in self.answers:
            started = time.perf_counter()
            text = self.stt.transcribe(clip.pcm[: (frame + 1) * FRAME_BYTES]).text.strip()
            messages = chat_prompt(self.llm, self.system, (), text)
            sentence = (self.llm.sentence_end(messages) if text else None) or 0.0
            self.answers[key] = (sentence, time.perf_counter() - started)
            at = (frame + 1) * FRAME_MS / 1000
            self.heard[f"{clip.text} @ {at:.2f} s"] = {
                "heard": text,
                "sentence": round(sentence, 4),
            }
        return self.answers[key]


def make_clips(voice: str, seed: int) -> list[Clip]:
    say = VOICES[voice]
    vad = SileroVad(locate(default_data_dir()).vad)
    lengths = random.Random(seed)
    clips: list[Clip] = []
    for text in (*PAUSED, *COMPLETE):
        pauses = [lengths.uniform(0.5, 1.2) for _ in range(text.count("|"))]
        speech, starts = paused(text, pauses, say)
        pcm = silence(LEAD) + speech + silence(TAIL)
        spans = [
            (round(LEAD + at, 3), round(LEAD + at + length, 3))
            for at, length in zip(starts, pauses, strict=True)
        ]
        end = LEAD + len(speech) / 2 / RATE
        clips.append(Clip(text, pcm, VadStream(vad).process(pcm), end, spans))
    return clips


def end_of_turn(
    clip: Clip, options: TurnOptions, detector: Detector, words: Words | None
) -> Ending | None:
    """Where the first turn in ``clip`` ended, the detector's answers (and the words'
    reading, with ``words``) coming as late as they took; None if it never did."""
    endpointer = Endpointer(options)
    answers: list[tuple[float, int, float]] = []  # (when it arrives, ask, probability)
    reading: tuple[float, float] | None = None  # the words': (when it arrives, probability)
    for frame, probability in enumerate(clip.vad):
        heard = (frame + 1) * FRAME_MS / 1000  # this frame is whole
        for arrives, ask, done in sorted(answers):
            if arrives <= heard:
                answers.remove((arrives, ask, done))
                if endpointer.answer(ask, done) is Cue.END_OF_TURN:
                    return Ending(arrives, by_detector=True)
        if reading is not None and reading[0] <= heard:
            arrives, sentence = reading
            reading = None
            if endpointer.words(sentence) is Cue.END_OF_TURN:
                return Ending(arrives, by_detector=True)
        cue = endpointer.step(probability)
        if cue is Cue.END_OF_TURN:
            return Ending(heard, by_detector=False)
        if cue is Cue.ASK:
            done, seconds = detector.ask(clip, frame)
            answers.append((heard + seconds, endpointer.asks, done))
        elif cue is Cue.SPECULATE and words is not None:
            sentence, seconds = words.read(clip, frame)
            reading = (heard + seconds, sentence)
        elif cue is Cue.RESUMED:
            reading = None  # the engine drops the speculation, and its reading with it
    return None


def measure(
    clips: list[Clip], options: TurnOptions, detector: Detector, words: Words | None
) -> dict[str, Any]:
    endings = [end_of_turn(clip, options, detector, words) for clip in clips]
    ended = [(clip, e) for clip, e in zip(clips, endings, strict=True) if e is not None]
    cut = [clip for clip, e in ended if e.at < clip.speech_end]
    waits = [e.at - clip.speech_end for clip, e in ended if e.at >= clip.speech_end]
    with_pauses = sum(1 for clip in clips if clip.pauses)
    return {
        "false_cut_offs": len(cut),
        "false_cut_off_rate_paused": round(sum(1 for c in cut if c.pauses) / with_pauses, 4),
        "false_cut_off_rate_all": round(len(cut) / len(clips), 4),
        "wait_p50": round(statistics.median(waits), 3),
        "wait_p90": round(percentile(waits, 90), 3),
        "wait_p95": round(percentile(waits, 95), 3),
        "wait_mean": round(statistics.fmean(waits), 3),
        "ended_by_detector": sum(1 for _, e in ended if e.by_detector),
        "never_ended": len(clips) - len(ended),
        "cut_off": [clip.text for clip in cut],
    }


@dataclass(frozen=True)
class Rule:
    options: TurnOptions
    words: bool  # whether the words have a say where the detector is unsure


def rules(ask_ms: list[int], thresholds: list[float], unsure: list[float]) -> dict[str, Rule]:
    """The silence rule, then the detector asked at each moment with each threshold,
    alone and with the words (from each of the ``unsure`` probabilities)."""
    default = TurnOptions()
    detector = replace(default, semantic=True)

    def label(options: TurnOptions, words: bool) -> str:
        with_words = f" + words (unsure >= {options.unsure_threshold:g})" if words else ""
        name = f"detector {options.ask_ms} ms p>={options.complete_threshold:g}{with_words}"
        return name + (" (default)" if options == default and words else "")

    silence_rule = replace(default, semantic=False)
    chosen = {f"silence {default.silence_ms} ms": Rule(silence_rule, words=False)}
    for ask in sorted({detector.ask_ms, *ask_ms}):
        for threshold in sorted({detector.complete_threshold, *thresholds}):
            options = replace(detector, ask_ms=ask, complete_threshold=threshold)
            chosen[label(options, False)] = Rule(options, words=False)
            for floor in sorted({detector.unsure_threshold, *unsure}):
                with_words = replace(options, unsure_threshold=floor)
                chosen[label(with_words, True)] = Rule(with_words, words=True)
    return chosen


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'rule':58} {'cut-offs':>8} {'paused':>7} {'all':>6} "
        f"{'wait p50':>9} {'p90':>7} {'p95':>7} {'mean':>7}"
    ]
    for label, r in results.items():
        lines.append(
            f"{label:58} {r['false_cut_offs']:>8} {r['false_cut_off_rate_paused']:>7.1%} "
            f"{r['false_cut_off_rate_all']:>6.1%} {r['wait_p50'] * 1000:>7.0f}ms "
            f"{r['wait_p90'] * 1000:>5.0f}ms {r['wait_p95'] * 1000:>5.0f}ms "
            f"{r['wait_mean'] * 1000:>5.0f}ms"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--voice", choices=sorted(VOICES), default="hibari")
    parser.add_argument(
        "--ask-ms", type=int, nargs="*", default=[], help="more silences to ask the detector at"
    )
    parser.add_argument(
        "--thresholds", type=float, nargs="*", default=[], help="more detector thresholds to try"
    )
    parser.add_argument(
        "--unsure",
        type=float,
        nargs="*",
        default=[],
        help="more detector probabilities from which the words have a say",
    )
    parser.add_argument("--seed", type=int, default=15, help="of the pause lengths")
    args = parser.parse_args()
    clips = make_clips(args.voice, args.seed)
    detector, words = Detector(), Words()
    chosen = rules(args.ask_ms, args.thresholds, args.unsure)
    results = {
        label: measure(clips, rule.options, detector, words if rule.words else None)
        for label, rule in chosen.items()
    }
    reading = [seconds for _, seconds in words.answers.values()]
    inference = [seconds for _, seconds in detector.answers.values()]
    print(table(results))
    summary = {
        "voice": args.voice,
        "utterances": len(clips),
        "with_pauses": sum(1 for clip in clips if clip.pauses),
        "goal": {"false_cut_off_rate_paused": 0.05, "wait_p50": 0.3},
        "detector_ms_p50": round(percentile(inference, 50) * 1000, 1),
        "detector_ms_p90": round(percentile(inference, 90) * 1000, 1),
        # Whisper on what was heard, then the LLM on the words (the engine's stt and llm).
        "words_ms_p50": round(percentile(reading, 50) * 1000, 1),
        "words_ms_p90": round(percentile(reading, 90) * 1000, 1),
        "rules": {label: _without(r, "cut_off") for label, r in results.items()},
    }
    name = "turn_taking" if args.voice == "hibari" else f"turn_taking_{args.voice}"
    write_results(
        name,
        summary,
        default_options=asdict(TurnOptions()),
        cut_off={label: r["cut_off"] for label, r in results.items()},
        words_heard=words.heard,
        utterances=[
            {"text": c.text, "speech_end": round(c.speech_end, 3), "pauses": c.pauses}
            for c in clips
        ],
    )


def _without(result: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in result.items() if name != key}


if __name__ == "__main__":
    main()
