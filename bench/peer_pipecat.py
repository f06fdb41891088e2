"""Sonicgate beside Pipecat: the same spoken turns, in one run, on the same models.

Each utterance goes to sonicgate (a server of its own, measured as
``bench/local_latency.py`` does: end of speech -> first audio byte at a WebSocket
client), then to a Pipecat 1.14 pipeline (``bench/pipecat_side.py``: end of
speech -> first audio frame out of its TTS, no transport): turn about, so that a
shared machine's load weighs on both alike, and never both at once. Both hear the
same utterances in hibari's voice, at real-time pace, in chunks of the same size,
and run the same models:

- Whisper: the same CTranslate2 weights (faster-whisper, int8);
- the LLM: the same GGUF, in-process for sonicgate, behind llama.cpp's
  OpenAI-compatible server (``llama_cpp.server``) for Pipecat, both from the
  same llama-cpp-python wheel (setup's portable build) with the same kernels,
  threads, sampling and system prompt (and a larger context: Pipecat keeps the
  whole history);
- the voice: Piper's "joe" (sonicgate with ``--tts piper-joe``; Pipecat has no
  hibari service);
- end of turn: smart-turn v3.2 on both sides, asked at the same silence, with
  the same fallback silence; each side keeps its own decision threshold.

Pipecat runs in a venv of its own (``bench/.peer-venv``, made on first use from
``bench/peer_pipecat.lock`` and our llama.cpp wheel), so that its pins never touch
ours. Writes ``bench/results/peer_pipecat.json``: both sides' figures, sonicgate's
p50 and p95 as a ratio to Pipecat's, the machine and both sides' library versions.

    python -m bench.peer_pipecat --turns 22
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.harness import percentile, start_server, wait_ready, write_results
from bench.local_latency import UTTERANCES, ask, conversation, summarize
from bench.speech import natural
from sonicgate.config import default_data_dir
from sonicgate.engines.base import EngineConfig
from sonicgate.engines.local.cpu import choose_variant, installed_variants, library_dir, read_cpu
from sonicgate.engines.local.engine import MAX_REPLY_TOKENS
from sonicgate.engines.local.llm import TEMPERATURE
from sonicgate.engines.local.turns import TurnOptions
from sonicgate.models import PIPER_JOE, ModelPaths, Selection, locate

HERE = Path(__file__).parent
LOCK = HERE / "peer_pipecat.lock"
PIPECAT_SIDE = HERE / "pipecat_side.py"
CPU_MODULE = HERE.parent / "src" / "sonicgate" / "engines" / "local" / "cpu.py"
GOAL = 0.8  # sonicgate's latency as a ratio to Pipecat's, at most
# As ChatModel: one decode thread, the prompt read on two, its sampling. Twice its context:
# Pipecat sends the whole history, where sonicgate trims its own to fit 2048 tokens.
LLM_SERVER_OPTIONS = ("--n_ctx", "4096", "--n_threads", "1", "--n_threads_batch", "2")
QUIET_LLM_SERVER = ("--verbose", "false")
SAMPLING = {"temperature": TEMPERATURE, "top_p": 1.0, "max_tokens": MAX_REPLY_TOKENS}

# llama.cpp's server in Pipecat's venv, with the kernels sonicgate would load on this
# CPU (engines/local/cpu.py, loaded by path: the rest of sonicgate is not installed there).
SERVE_WITH_OUR_KERNELS = """
import importlib.util, runpy, sys
spec = importlib.util.spec_from_file_location("llama_kernels", sys.argv[1])
cpu = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = cpu
spec.loader.exec_module(cpu)
print("llama.cpp kernels:", cpu.load_llama_kernels(), file=sys.stderr)
sys.argv = ["llama_cpp.server", *sys.argv[2:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def free_port() -> int:
    """A port nothing listens on now: other benchmarks may hold the usual ones."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def say(line: str) -> None:
    print(f"peer_pipecat: {line}", file=sys.stderr, flush=True)


def llama_wheel() -> Path:
    """The llama-cpp-python wheel our venv was installed from (built once by setup)."""
    script = HERE.parent / "scripts" / "llama_wheel.py"
    found = subprocess.run(
        [sys.executable, str(script), version("llama-cpp-python")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(found.stdout.strip().splitlines()[-1])


def peer_python(venv: Path, wheel: Path) -> Path:
    """Pipecat's venv, made from the lock and our llama.cpp wheel unless it already was."""
    python = venv / "bin" / "python"
    stamp = venv / "sonicgate-lock.sha256"
    wanted = hashlib.sha256(LOCK.read_bytes() + str(wheel).encode()).hexdigest()
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    say(f"creating Pipecat's venv in {venv} (once; about 930 MB)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = sum(1 for line in LOCK.read_text().splitlines() if "==" in line)
    say(f"installing {pins} pinned packages from {LOCK.name}, llama.cpp from {wheel.name}")
    install = [
        *(str(python), "-m", "pip", "install", "--disable-pip-version-check"),
        *("--requirement", str(LOCK), "--no-deps"),
        *("--only-binary", "llama-cpp-python", "--find-links", str(wheel.parent)),
    ]
    subprocess.run(install, check=True)
    subprocess.run([str(python), "-m", "pip", "check"], check=True)
    stamp.write_text(wanted)
    return python


@contextlib.contextmanager
def llm_server(python: Path, model: Path, port: int) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on ``model``; yields its base URL once it answers."""
    command = [
        *(str(python), "-c", SERVE_WITH_OUR_KERNELS, str(CPU_MODULE)),
        *("--model", str(model), "--model_alias", "local", *LLM_SERVER_OPTIONS),
        *QUIET_LLM_SERVER,
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    server = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("llama.cpp's server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait()


def turn_settings(options: TurnOptions) -> dict[str, float]:
    """Pipecat's VAD and smart-turn timings, matched to sonicgate's: the VAD's stop
    (when smart-turn is asked) at our ask, its start at our onset, the fallback silence."""
    return {
        "vad_confidence": options.start_threshold,
        "vad_start_secs": options.onset_ms / 1000,
        "vad_stop_secs": options.ask_ms / 1000,
        "fallback_secs": options.fallback_ms / 1000,
    }


def pipecat_settings(paths: ModelPaths, llm_url: str, chunk_samples: int) -> dict[str, Any]:
    """What ``pipecat_side.py`` builds its pipeline from: our models' files and settings."""
    voice = paths.tts
    rate = json.loads(voice.with_suffix(".onnx.json").read_text())["audio"]["sample_rate"]
    return {
        "chunk_samples": chunk_samples,
        "whisper_dir": str(paths.stt),
        "llm_url": llm_url,
        "piper_dir": str(voice.parent),
        "piper_voice": voice.stem,
        "tts_rate": rate,
        "system_prompt": EngineConfig().system_prompt,
        "turn": turn_settings(TurnOptions()),
        **SAMPLING,
    }


@contextlib.contextmanager
def sonicgate_server(*options: str) -> Iterator[str]:
    """A sonicgate server of our own (as ``measure`` starts one); yields its stream URL."""
    port = free_port()
    server = start_server(port, *options)
    url = f"ws://127.0.0.1:{port}/api/nova-sonic/stream"
    try:
        asyncio.run(wait_ready(url))
        yield url
    finally:
        server.terminate()
        server.wait()


async def answer(child: asyncio.subprocess.Process, within: float) -> dict[str, Any]:
    """The Pipecat side's next line of JSON (other lines on its stdout are not ours)."""
    assert child.stdout is not None
    while True:
        line = await asyncio.wait_for(child.stdout.readline(), within)
        if not line:
            raise RuntimeError("Pipecat's side ended early: its errors are above")
        if line.startswith(b"{"):
            message: dict[str, Any] = json.loads(line)
            return message


async def take_turns(
    url: str, pipecat: list[str], turns: list[tuple[str, Path]], chunk_samples: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Each utterance to sonicgate, then to Pipecat: a machine busier at one moment
    than at another weighs on both sides alike. Returns both sides' turns and
    Pipecat's library versions."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = await asyncio.create_subprocess_exec(
        *pipecat, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert child.stdin is not None
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    try:
        await answer(child, within=300)  # ready: models loaded and warmed up
        async with conversation(url) as ws:
            for index, (text, speech) in enumerate(turns):
                ours.append(await ask(ws, text, chunk_samples * 2))
                child.stdin.write(f"{speech}\n".encode())
                await child.stdin.drain()
                theirs.append(await answer(child, within=120))
                report(index, ours[-1], theirs[-1])
        child.stdin.close()
        libraries: dict[str, str] = (await answer(child, within=60))["libraries"]
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    return ours, theirs, libraries


def report(index: int, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    latency = "no reply" if theirs["latency"] is None else f"{theirs['latency'] * 1000:.0f} ms"
    print(
        f"turn {index + 1:2d}: sonicgate {ours['latency'] * 1000:5.0f} ms, Pipecat {latency:>8}"
        f"  {ours.get('transcript', '')!r} -> {ours['reply'][:40]!r} | "
        f"{theirs['transcript']!r} -> {theirs['reply'][:40]!r}",
        file=sys.stderr,
    )


def side(turns: list[dict[str, Any]]) -> dict[str, float]:
    """Pipecat's figures, over the turns it answered (``no_reply``: those it did not)."""
    latencies = [turn["latency"] for turn in turns if turn["latency"] is not None]
    if not latencies:
        raise RuntimeError("Pipecat answered none of the turns")
    return {
        "no_reply": len(turns) - len(latencies),
        "latency_p50": percentile(latencies, 50),
        "latency_p95": percentile(latencies, 95),
        "latency_mean": round(statistics.fmean(latencies), 4),
    }


def record(
    args: argparse.Namespace,
    paths: ModelPaths,
    wheel: Path,
    turns: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    pipecat_libraries: dict[str, str],
    load: tuple[float, float],
) -> None:
    """``bench/results/peer_pipecat.json``: both sides' turns and figures, and the ratios."""
    ours, theirs = turns
    sonicgate, pipecat = summarize(ours), side(theirs)
    summary = {
        "turns": args.turns,
        "sonicgate": sonicgate,
        "pipecat": pipecat,
        "ratio_p50": round(sonicgate["latency_p50"] / pipecat["latency_p50"], 3),
        "ratio_p95": round(sonicgate["latency_p95"] / pipecat["latency_p95"], 3),
        "goal_ratio": GOAL,
        # How busy the machine was: 1-minute load average before the run, and at its end
        # (which counts the run itself). On 2 cores, much above 2 makes the figures noise.
        "load_average": {"start": round(load[0], 2), "end": round(load[1], 2)},
    }
    write_results(
        "peer_pipecat",
        summary,
        models={kind.value: name for kind, name in paths.names.items()},
        llama_wheel=f"{wheel.parent.name}/{wheel.name}",
        # What both sides load on this CPU (unless SONICGATE_LLAMA_CPU picks by hand).
        llama_kernels=choose_variant(installed_variants(library_dir()), read_cpu().flags),
        pipecat_libraries=pipecat_libraries,
        settings={
            "client_chunk_samples": args.chunk_samples,
            "sonicgate_turn": {
                key: getattr(TurnOptions(), key)
                for key in ("ask_ms", "complete_threshold", "fallback_ms", "onset_ms")
            },
            "pipecat_turn": turn_settings(TurnOptions()),
            "llm_server": " ".join(LLM_SERVER_OPTIONS),
            "sampling": SAMPLING,
        },
        sonicgate_turns=ours,
        pipecat_turns=theirs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=22, help="spoken turns, on each side")
    parser.add_argument("--chunk-samples", type=int, default=1024, help="client chunk size")
    parser.add_argument("--llm", help="the LLM of the catalog (default: sonicgate's default)")
    parser.add_argument("--peer-venv", type=Path, default=HERE / ".peer-venv")
    args = parser.parse_args()

    paths = locate(default_data_dir(), Selection(llm=args.llm, tts=PIPER_JOE.name))
    wheel = llama_wheel()
    python = peer_python(args.peer_venv, wheel)
    utterances = [UTTERANCES[index % len(UTTERANCES)] for index in range(args.turns)]

    load = os.getloadavg()[0]
    options = ("--tts", PIPER_JOE.name, *(("--llm", args.llm) if args.llm else ()))
    say(f"{args.turns} turns, each to sonicgate (serve {' '.join(options)}), then to Pipecat")
    with (
        tempfile.TemporaryDirectory(prefix="peer-pipecat-") as scratch,
        sonicgate_server(*options) as url,
        llm_server(python, paths.llm, free_port()) as llm_url,
    ):
        turns = []
        for index, text in enumerate(utterances):
            speech = Path(scratch) / f"turn{index:03d}.pcm"
            speech.write_bytes(natural(text))  # what ``ask`` sends us, sample for sample
            turns.append((text, speech))
        settings = Path(scratch) / "settings.json"
        settings.write_text(json.dumps(pipecat_settings(paths, llm_url, args.chunk_samples)))
        pipecat = [str(python), str(PIPECAT_SIDE), str(settings)]
        ours, theirs, pipecat_libraries = asyncio.run(
            take_turns(url, pipecat, turns, args.chunk_samples)
        )

    record(args, paths, wheel, (ours, theirs), pipecat_libraries, (load, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
