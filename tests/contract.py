"""The engine contract (the docstring of ``sonicgate.engines.base``) as checks that
any engine can be put through.

``check_grammar`` reads an event stream by the contract's grammar. Each check
puts an engine in one situation (a spoken turn, a typed turn, text or speech
over a reply, stop or close over a reply, its provider dying), through a ``Subject``
that knows how to drive that engine, and holds every event stream to the grammar.
``tests/test_engine_contract.py`` runs every check against every engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum, auto
from typing import Protocol

from sonicgate.domain import ErrorCode
from sonicgate.engines.base import EngineSession
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Error,
    Interrupted,
    Metrics,
    ResponseTextDelta,
    ResponseTextFinal,
    SpeechStarted,
    TranscriptFinal,
    TranscriptPartial,
    TriggerReason,
    TurnEnded,
    Usage,
)

# Events the contract lets come at any time, inside a turn or between turns.
ANYTIME = (Error, Metrics, Usage, SpeechStarted, TranscriptPartial)
CHUNK = 4096 * 2  # bytes of pcm16 per push_audio: the second seed's chunks
WITHIN = 60.0  # seconds any one awaited event may take (the local models on a busy CPU)
CLOSE_WITHIN = 5.0  # seconds for close to return and the events to end


class Phase(Enum):
    BETWEEN = auto()  # between turns
    HEARD = auto()  # the user's turn is in (TranscriptFinal): the reply may start
    REPLYING = auto()  # reply text or audio under way
    CUT = auto()  # the reply was interrupted: what the user received comes next
    ANSWERED = auto()  # the reply's final text: the turn ends next


class ContractViolation(AssertionError):
    pass


def check_grammar(events: Sequence[EngineEvent], *, finished: bool = True) -> None:
    """Raise ``ContractViolation`` where ``events`` break the contract's grammar;
    ``finished``: the stream must also end between turns."""
    phase, cut, failed = Phase.BETWEEN, False, False
    for index, event in enumerate(events):
        before = phase
        if isinstance(event, ANYTIME):
            failed = failed or isinstance(event, Error)
            continue
        match event, phase:
            case TranscriptFinal(), Phase.BETWEEN:
                phase, cut, failed = Phase.HEARD, False, False
            case ResponseTextDelta() | AudioOut(), Phase.HEARD | Phase.REPLYING:
                phase = Phase.REPLYING
            case Interrupted(), Phase.HEARD | Phase.REPLYING:
                phase, cut = Phase.CUT, True
            case Interrupted(), Phase.BETWEEN:
                pass  # the reply went out whole and still plays: the client stops it
            case ResponseTextFinal(), Phase.HEARD | Phase.REPLYING | Phase.CUT:
                phase = Phase.ANSWERED
            case TurnEnded(interrupted=interrupted), Phase.ANSWERED if interrupted == cut:
                phase = Phase.BETWEEN
            case TurnEnded(interrupted=False), Phase.HEARD:
                phase = Phase.BETWEEN  # nothing to answer
            case TurnEnded(interrupted=False), Phase.REPLYING if failed:
                phase = Phase.BETWEEN  # an error cut the reply
            case _:
                raise ContractViolation(_where(events, index, before))
    if finished and phase is not Phase.BETWEEN:
        raise ContractViolation(f"the events end in a turn ({phase.name}): {_names(events)}")


def _where(events: Sequence[EngineEvent], index: int, phase: Phase) -> str:
    return f"{_name(events[index])} at {index}, in {phase.name}: {_names(events)}"


def _name(event: EngineEvent) -> str:
    if isinstance(event, TurnEnded) and event.interrupted:
        return "TurnEnded(interrupted)"
    return type(event).__name__


def _names(events: Sequence[EngineEvent]) -> str:
    # Runs of audio as one entry: a reply has hundreds of chunks.
    names: list[str] = []
    for event in events:
        name = _name(event)
        if not (names and name == "AudioOut" and names[-1] == "AudioOut*"):
            names.append("AudioOut*" if name == "AudioOut" else name)
    return ", ".join(names)


class Subject(Protocol):
    """An engine under test, and how to put it in each situation."""

    async def open(self, *, long_replies: bool = False) -> EngineSession:
        """A new session; ``long_replies``: its replies last seconds, so that input
        can arrive while one is under way."""
        ...

    def utterance(self, text: str) -> bytes:
        """16 kHz pcm16 the engine hears as the user saying ``text``, then the
        silence that ends the turn."""
        ...

    def break_provider(self) -> None:
        """The service (or model) behind the engine dies during the next reply."""
        ...


class Listener:
    """Reads a session's events into ``events`` as they come."""

    def __init__(self, session: EngineSession) -> None:
        self.events: list[EngineEvent] = []
        self.ended = False
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(session))

    async def _read(self, session: EngineSession) -> None:
        async for event in session.events():
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def until(self, wanted: Callable[[EngineEvent], bool], after: int = 0) -> int:
        """The index of the first wanted event from ``after`` on, once it came."""

        def found() -> int | None:
            return next((i for i in range(after, len(self.events)) if wanted(self.events[i])), None)

        async with asyncio.timeout(WITHIN), self._changed:
            await self._changed.wait_for(lambda: found() is not None or self.ended)
        index = found()
        if index is None:
            raise AssertionError(f"the events ended first: {_names(self.events)}")
        return index

    async def end(self) -> None:
        async with asyncio.timeout(CLOSE_WITHIN), self._changed:
            await self._changed.wait_for(lambda: self.ended)


def turn_ended(event: EngineEvent) -> bool:
    return isinstance(event, TurnEnded)


def reply_under_way(event: EngineEvent) -> bool:
    return isinstance(event, ResponseTextDelta | AudioOut)


def is_error(event: EngineEvent) -> bool:
    return isinstance(event, Error)


def transcript_of(text: str) -> Callable[[EngineEvent], bool]:
    return lambda event: isinstance(event, TranscriptFinal) and event.text == text


def heard_speech(event: EngineEvent) -> bool:
    return isinstance(event, TranscriptFinal) and event.reason is not TriggerReason.TEXT


def answered(turn: Sequence[EngineEvent]) -> bool:
    """The turn got a reply in words."""
    return any(isinstance(event, ResponseTextFinal) and event.text for event in turn)


async def speak(session: EngineSession, pcm: bytes) -> None:
    for offset in range(0, len(pcm), CHUNK):
        await session.push_audio(pcm[offset : offset + CHUNK])


async def close(session: EngineSession, listener: Listener) -> None:
    """Close, promptly, and the events end."""
    async with asyncio.timeout(CLOSE_WITHIN):
        await session.close()
    await listener.end()


# The checks ----------------------------------------------------------------------

LONG_REQUEST = "Tell me a long story about a dragon and a knight."
NEXT_REQUEST = "Now just say hello."


async def spoken_turn(subject: Subject) -> None:
    session = await subject.open()
    listener = Listener(session)
    await speak(session, subject.utterance("What is the capital of France?"))
    end = await listener.until(turn_ended)
    await close(session, listener)
    turn = listener.events[: end + 1]
    check_grammar(turn)
    [final] = [event for event in turn if isinstance(event, TranscriptFinal)]
    assert final.text and final.reason is not TriggerReason.TEXT, final
    assert answered(turn) and any(isinstance(event, AudioOut) for event in turn), _names(turn)


async def typed_turn(subject: Subject) -> None:
    session = await subject.open()
    listener = Listener(session)
    await session.push_text("Hello there")
    end = await listener.until(turn_ended)
    await close(session, listener)
    turn = listener.events[: end + 1]
    check_grammar(turn)
    [final] = [event for event in turn if isinstance(event, TranscriptFinal)]
    assert (final.text, final.reason) == ("Hello there", TriggerReason.TEXT), final
    assert answered(turn), _names(turn)


async def _over_a_reply(subject: Subject, user: Callable[[EngineSession], Awaitable[None]],
                        next_turn: Callable[[EngineEvent], bool]) -> None:  # fmt: skip
    """``user`` acts while a long reply is under way: the reply ends, interrupted, and
    the turn ``next_turn`` opens is answered."""
    session = await subject.open(long_replies=True)
    listener = Listener(session)
    await session.push_text(LONG_REQUEST)
    under_way = await listener.until(reply_under_way)
    await user(session)
    cut = await listener.until(turn_ended, under_way)
    opened = await listener.until(next_turn, cut)
    end = await listener.until(turn_ended, opened)
    await close(session, listener)
    events = listener.events[: end + 1]
    check_grammar(events)
    assert events[cut] == TurnEnded(interrupted=True), _names(events)
    assert events[end] == TurnEnded() and answered(events[opened:end]), _names(events)


async def text_during_reply(subject: Subject) -> None:
    await _over_a_reply(
        subject, lambda session: session.push_text(NEXT_REQUEST), transcript_of(NEXT_REQUEST)
    )


async def barge_in(subject: Subject) -> None:
    async def talk(session: EngineSession) -> None:
        await speak(session, subject.utterance(NEXT_REQUEST))

    await _over_a_reply(subject, talk, heard_speech)


async def stop_during_reply(subject: Subject) -> None:
    async def stop(session: EngineSession) -> None:
        await session.interrupt()  # the client pressed stop
        await session.push_text(NEXT_REQUEST)

    await _over_a_reply(subject, stop, transcript_of(NEXT_REQUEST))


async def close_during_reply(subject: Subject) -> None:
    session = await subject.open(long_replies=True)
    listener = Listener(session)
    await session.push_text(LONG_REQUEST)
    await listener.until(reply_under_way)
    await close(session, listener)
    check_grammar(listener.events, finished=False)  # cut: the turn need not end


async def provider_failure(subject: Subject) -> None:
    """The provider dies mid-reply: the session is told, with a code a client knows,
    rather than left waiting; a session that can go on ends the turn."""
    session = await subject.open()
    listener = Listener(session)
    subject.break_provider()
    await session.push_text("Hello there")
    failed = await listener.until(is_error)
    error = listener.events[failed]
    assert isinstance(error, Error) and isinstance(error.code, ErrorCode), error
    if not error.fatal:
        end = await listener.until(turn_ended, failed)
        check_grammar(listener.events[: end + 1])
    await close(session, listener)
    check_grammar(listener.events, finished=not error.fatal)


CHECKS: dict[str, Callable[[Subject], Awaitable[None]]] = {
    "spoken turn": spoken_turn,
    "typed turn": typed_turn,
    "text during a reply": text_during_reply,
    "barge-in": barge_in,
    "stop during a reply": stop_during_reply,
    "close during a reply": close_during_reply,
    "provider failure": provider_failure,
}
