"""Whisper on the utterance and a few seconds of silence, against its 30 s window.

The same utterances, in hibari's voice and in espeak-ng's, transcribed both
ways by the default Whisper on the thread count the server uses: faster-whisper's
own 30 s windows (``Transcriber.windowed``) and sonicgate's short window
(``Transcriber.transcribe``). Reports the time per utterance and the word error
rate per voice, and the mistakes each way makes that the other does not. Numbers
count as digits or words ("2" = "two"), as ``bench.answers`` reads them. No
server; about two minutes. Writes ``bench/results/stt_window.json``.

    python -m bench.stt_window
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.answers import normalize
from bench.harness import percentile, write_results
from bench.local_latency import UTTERANCES
from bench.speech import natural, speak
from bench.turn_taking import COMPLETE, PAUSED
from sonicgate.config import default_data_dir
from sonicgate.engines.local.stt import Transcriber, tuned
from sonicgate.models import locate

VOICES = {"hibari": natural, "espeak": speak}
BRITISH = {"favourite": "favorite", "colour": "color"}


def words(text: str) -> list[str]:
    """As ``bench.answers`` compares words (numbers as digits), British spelling as US."""
    return [BRITISH.get(word, word) for word in normalize(text).split()]


def errors(said: str, heard: str) -> int:
    """Word-level edit distance: substitutions, insertions and deletions."""
    reference, hypothesis = words(said), words(heard)
    row = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(hypothesis, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != other))
    return row[-1]


def texts() -> list[str]:
    """Every distinct sentence of the latency and turn-taking sets, said in one go."""
    said = [*UTTERANCES, *COMPLETE, *(line.replace(" | ", " ") for line in PAUSED)]
    return list(dict.fromkeys(said))


def run(
    way: Callable[[bytes], str], clips: list[tuple[str, str, bytes]]
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    seconds: list[float] = []
    wrong = {voice: 0 for voice in VOICES}
    total = {voice: 0 for voice in VOICES}
    mistakes: list[tuple[str, str, str]] = []
    for voice, text, pcm in clips:
        started = time.perf_counter()
        heard = way(pcm)
        seconds.append(time.perf_counter() - started)
        missed = errors(text, heard)
        wrong[voice] += missed
        total[voice] += len(words(text))
        if missed:
            mistakes.append((voice, text, heard))
    figures = {
        "seconds_p50": round(statistics.median(seconds), 4),
        "seconds_p90": round(percentile(seconds, 90), 4),
        "word_error_rate": {voice: round(wrong[voice] / total[voice], 4) for voice in VOICES},
    }
    return figures, mistakes


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    transcriber: Transcriber = tuned(locate(default_data_dir()).stt)
    clips = [(voice, text, say(text)) for voice, say in VOICES.items() for text in texts()]
    transcriber.transcribe(clips[0][2])  # the first call allocates
    ways: dict[str, Callable[[bytes], str]] = {
        "window_30s": lambda pcm: transcriber.windowed(pcm).text,
        "short": lambda pcm: transcriber.transcribe(pcm).text,
    }
    results = {name: run(way, clips) for name, way in ways.items()}
    window_wrong, short_wrong = (results[name][1] for name in ways)
    write_results(
        "stt_window",
        {
            "utterances": len(clips),
            "threads": transcriber.threads,
            **{name: figures for name, (figures, _) in results.items()},
            "speedup_p50": round(
                results["window_30s"][0]["seconds_p50"] / results["short"][0]["seconds_p50"], 2
            ),
        },
        only_short_wrong=[m for m in short_wrong if m[:2] not in _said(window_wrong)],
        only_window_wrong=[m for m in window_wrong if m[:2] not in _said(short_wrong)],
    )


def _said(mistakes: list[tuple[str, str, str]]) -> set[tuple[str, str]]:
    return {(voice, text) for voice, text, _ in mistakes}


if __name__ == "__main__":
    main()
