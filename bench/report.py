"""The benchmarks' figures in one page: ``bench/results/summary.md``, with the
local engine's latency waterfall per turn drawn into ``latency_waterfall.png``.

    python -m bench.report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen: draw straight to a file
import matplotlib.pyplot as plt

from bench.harness import RESULTS

# The local engine's stages, in the order a turn passes them (seconds after end of speech).
STAGES = ("endpoint", "transcript", "llm_first_token", "first_sentence_synthesized")
COLOURS = ("#9ecae1", "#6baed6", "#fd8d3c", "#74c476", "#bdbdbd")
PLOT = "latency_waterfall.png"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def waterfall(turns: list[dict[str, Any]], path: Path) -> None:
    """One bar per turn, cut where each stage finished; the last grey part is the
    way from the engine's first audio to the client."""
    figure, axes = plt.subplots(figsize=(9, 0.32 * len(turns) + 1.8))
    labels = [*STAGES, "to the client"]
    for row, turn in enumerate(turns):
        ends = [turn["stages"].get(stage) for stage in STAGES] + [turn["latency"]]
        start = 0.0
        for index, end in enumerate(ends):
            if end is None or end < start:
                continue
            axes.barh(row, end - start, left=start, color=COLOURS[index], label=labels[index])
            start = end
    handles, names = axes.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    axes.legend(
        unique.values(),
        unique.keys(),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12),
        ncol=len(unique),
        fontsize=8,
    )
    axes.set_yticks(range(len(turns)), [f"{i + 1}" for i in range(len(turns))], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("seconds after the end of the user's speech")
    axes.set_ylabel("turn")
    axes.set_title("Local engine: end of speech → first audio at the client, per turn")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def summary() -> str:
    cores = None
    lines = ["# Benchmark results", ""]
    if latency := load("local_latency"):
        cores = latency["machine"]["cores"]
        s = latency["summary"]
        lines += [
            "## Local engine: end of speech → first audio byte",
            "",
            f"{s['turns']} turns: **p50 {s['latency_p50']:.2f} s, p95 {s['latency_p95']:.2f} s** "
            "(goal ≤ 0.70 / ≤ 1.0 s).",
            "",
            "| stage | p50 (s) |",
            "|---|---|",
            *(f"| {stage} | {value:.3f} |" for stage, value in s["stages_p50"].items()),
            "",
            *llm_line(latency.get("llm")),
            f"![latency waterfall]({PLOT})",
            "",
        ]
        waterfall(latency["turns"], RESULTS / PLOT)
    if barge := load("local_barge_in"):
        s = barge["summary"]
        lines += [
            "## Barge-in (local engine)",
            "",
            f"Generation stopped p50 {s['barge_in_stopped']['p50'] * 1000:.0f} ms, "
            f"max {s['barge_in_stopped']['max'] * 1000:.0f} ms after the onset was detected; "
            f"speech sent → `interrupted` at the client p50 "
            f"{s['speech_sent_to_interrupted']['p50'] * 1000:.0f} ms.",
            "",
        ]
    lines += turn_taking()
    lines += stt_window()
    lines += answers()
    if nova := load("nova_overhead"):
        lines += [
            f"## Gateway overhead on the Nova Sonic path ({nova['chunk_ms']:.0f} ms chunks)",
            "",
            "| sessions | added p50 (ms) | added p99 (ms) | p99 after each session's first "
            "chunk (ms) | first chunk p50 (ms) | server CPU % per session |",
            "|---|---|---|---|---|---|",
            *(
                f"| {lv['sessions']} | {lv['added_ms_p50']} | {lv['added_ms_p99']} "
                f"| {lv.get('after_first_chunk_ms_p99', '')} | {lv.get('first_chunk_ms_p50', '')} "
                f"| {lv['server_cpu_percent_per_session']} |"
                for lv in nova["summary"]["levels"]
            ),
            "",
        ]
    if phone := load("phone"):
        lines += phone_section(phone["summary"])
    if run := load("load"):
        s = run["summary"]
        lines += [
            f"## Load: {s['sessions']} sessions for {s['seconds'] / 60:.0f} min (echo engine)",
            "",
            f"{s['chunks_sent']} chunks: {s['chunks_lost']} lost, {s['chunks_reordered']} "
            f"reordered; round trip p50 {s['round_trip_ms_p50']} ms, p99 "
            f"{s['round_trip_ms_p99']} ms; server CPU {s['server_cpu_percent']} %; memory "
            f"{s['rss_mb_after_warm_up']} → {s['rss_mb_at_end']} MB "
            f"({s['rss_growth_percent']:+.2f} %).",
            "",
        ]
    if capacity := load("capacity"):
        s = capacity["summary"]
        lines += [
            "## Capacity",
            "",
            f"- Start-up (local models loaded and warmed up): {s['start_up_seconds']} s",
            f"- Memory per session: {s['memory_mb_per_local_session']} MB (local engine), "
            f"{s['memory_mb_per_echo_session']} MB (gateway alone, echo engine)",
            *(
                f"- Real-time sessions (echo engine, {chunk_ms} ms chunks, {workers} server "
                f"process{'es' if workers != '1' else ''}): {size['real_time_sessions']}; "
                f"first level that broke: {size['first_level_that_broke']}"
                for workers, sizes in s["by_workers"].items()
                for chunk_ms, size in sizes.items()
            ),
            "",
        ]
    lines += peer_pipecat()
    if cores is not None:
        lines.insert(2, f"Machine: {cores} cores, no GPU. Each section is from one run.\n")
    return "\n".join(lines)


def llm_line(llm: dict[str, Any] | None) -> list[str]:
    """The LLM's build and thread counts, and its speed on one and two threads."""
    if not llm:
        return []
    speeds = "; ".join(
        f"{n} thread{'s' if n != '1' else ''}: decode {speed['decode']:.1f} tok/s, "
        f"prompt {speed['prompt']:.0f} tok/s"
        for n, speed in llm["tokens_per_second"].items()
    )
    return [
        f"LLM {llm['model']} on llama-cpp-python {llm['llama_cpp_python']} "
        f"({llm['kernels']} kernels): {llm['threads']['decode']} thread(s) decoding, "
        f"{llm['threads']['prompt']} reading the prompt ({llm['source']}). {speeds}.",
        "",
    ]


def turn_taking() -> list[str]:
    if not (run := load("turn_taking")):
        return []
    s = run["summary"]
    others = [
        other["summary"] for voice in ("joe", "espeak") if (other := load(f"turn_taking_{voice}"))
    ]
    return [
        "## Turn-taking (local engine)",
        "",
        f"{s['utterances']} utterances in {s['voice']}'s voice, {s['with_pauses']} with pauses "
        f"of 0.5-1.2 s inside; the detector took {s['detector_ms_p50']:.0f} ms (p50), the "
        f"words (Whisper, then the LLM) {s['words_ms_p50']:.0f} ms.",
        "",
        *_rule_table(s["rules"]),
        *(
            line
            for other in others
            for line in (
                f"The same in {other['voice']}'s voice, the detector at 128 ms, alone and "
                "with the words:",
                "",
                *_rule_table(
                    {label: r for label, r in other["rules"].items() if "128 ms p>=0.97" in label}
                ),
            )
        ),
    ]


def _rule_table(rules: dict[str, dict[str, Any]]) -> list[str]:
    return [
        "| rule | false cut-offs (of those with pauses) | wait p50 / p90 / mean (ms) |",
        "|---|---|---|",
        *(
            f"| {label} | {r['false_cut_off_rate_paused']:.1%} | {r['wait_p50'] * 1000:.0f} / "
            f"{r['wait_p90'] * 1000:.0f} / {r['wait_mean'] * 1000:.0f} |"
            for label, r in rules.items()
        ),
        "",
    ]


def stt_window() -> list[str]:
    if not (run := load("stt_window")):
        return []
    s = run["summary"]
    return [
        "## Whisper: the utterance and 4 s of silence against its 30 s window",
        "",
        f"{s['utterances']} utterances (two voices), {s['threads']} thread(s).",
        "",
        "| way | p50 / p90 (s) | word errors (hibari / espeak-ng) |",
        "|---|---|---|",
        *(
            f"| {way} | {s[way]['seconds_p50']:.3f} / {s[way]['seconds_p90']:.3f} | "
            f"{s[way]['word_error_rate']['hibari']:.1%} / "
            f"{s[way]['word_error_rate']['espeak']:.1%} |"
            for way in ("window_30s", "short")
        ),
        "",
    ]


def peer_pipecat() -> list[str]:
    if not (run := load("peer_pipecat")):
        return []
    s = run["summary"]
    ours, theirs = s["sonicgate"], s["pipecat"]
    return [
        "## Beside Pipecat 1.14 (same models, same turns, turn about)",
        "",
        f"{s['turns']} turns, end of speech → first audio: sonicgate p50 "
        f"{ours['latency_p50']:.2f} s, p95 {ours['latency_p95']:.2f} s; Pipecat p50 "
        f"{theirs['latency_p50']:.2f} s, p95 {theirs['latency_p95']:.2f} s "
        f"({theirs['no_reply']} unanswered). Sonicgate's as a ratio to Pipecat's: **p50 "
        f"{s['ratio_p50']:.2f}, p95 {s['ratio_p95']:.2f}** (goal ≤ {s['goal_ratio']}); load "
        f"average {s['load_average']['start']} before the run.",
        "",
    ]


def answers() -> list[str]:
    if not (run := load("answers")):
        return []
    s = run["summary"]
    return [
        "## Right and speakable answers (local engine, typed)",
        "",
        f"{s['items']} questions, {s['replies']} replies; the default "
        f"({s['llm']}, {s['prompt']!r} prompt): **{s['right_percent']:.0f} % right**, "
        f"median {s['median_reply_words']:g} words, {s['replies_unspeakable']} unspeakable "
        "(goal ≥ 90 %, ≤ 25 words, none).",
        "",
        "| model | prompt | right % | follow-ups right % | in one conversation right % "
        "| median words | unspeakable | first token p50 (s) | first piece p50 (s) "
        "| reply p50 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {c['llm']} | {c['prompt']} | {c['right_percent']:.0f} "
            f"| {c['follow_ups_right_percent']:.0f} "
            f"| {c['one_conversation_right_percent']:.0f} | {c['median_reply_words']:g} "
            f"| {c['replies_unspeakable']} | {c['first_token_s_p50']:.2f} "
            f"| {c['first_piece_s_p50']:.2f} | {c['reply_s_p50']:.2f} |"
            for c in run["candidates"]
        ),
        "",
    ]


def phone_section(s: dict[str, Any]) -> list[str]:
    lines = ["## Phone calls (Twilio Media Streams)", ""]
    if latency := s.get("latency"):
        lines.append(
            f"- End of speech → first reply audio on the call (local engine, {latency['turns']} "
            f"turns): p50 {latency['call_latency_p50']:.2f} s, p95 "
            f"{latency['call_latency_p95']:.2f} s; over the WebSocket, turn about: p50 "
            f"{latency['websocket_latency_p50']:.2f} s (difference "
            f"{latency['call_minus_websocket_p50'] * 1000:+.0f} ms, goal ≤ +50 ms)"
        )
    if cost := s.get("cost"):
        lines.append(
            f"- μ-law/resampling per 20 ms frame at {cost['calls']} calls (echo engine): p50 "
            f"{cost['added_ms_per_frame_p50']} ms, p99 {cost['added_ms_per_frame_p99']} ms "
            f"(goal ≤ 1 ms); server CPU {cost['server_cpu_percent_per_call']} % per call; "
            f"echo round trip p50 {cost['echo_round_trip_ms_p50']:.0f} ms"
        )
    return [*lines, ""]


def main() -> None:
    (RESULTS / "summary.md").write_text(summary())
    print(f"wrote {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
