"""The first seed's StreamingContext.processingState as a state machine.

idle -> receiving (the user speaks) -> processing (the turn ended, the engine
thinks) -> responding (reply text/audio flowing) -> idle. A barge-in goes from
responding (or processing) back to receiving; a turn with nothing to answer
goes back to idle.
"""

from __future__ import annotations

import logging

from sonicgate.domain import ProcessingState
from sonicgate.events import (
    AudioOut,
    EngineEvent,
    Interrupted,
    ResponseTextDelta,
    SpeechStarted,
    TranscriptFinal,
    TurnEnded,
)

log = logging.getLogger(__name__)

IDLE = ProcessingState.IDLE
RECEIVING = ProcessingState.RECEIVING
PROCESSING = ProcessingState.PROCESSING
RESPONDING = ProcessingState.RESPONDING

ALLOWED: dict[ProcessingState, frozenset[ProcessingState]] = {
    IDLE: frozenset({RECEIVING, PROCESSING}),
    RECEIVING: frozenset({PROCESSING, IDLE}),
    PROCESSING: frozenset({RESPONDING, RECEIVING, IDLE}),
    RESPONDING: frozenset({RECEIVING, IDLE}),
}


class StateMachine:
    def __init__(self, state: ProcessingState = IDLE) -> None:
        self.state = state

    def move(self, target: ProcessingState) -> bool:
        """Go to ``target``; returns whether the state changed.

        A move the diagram does not have is logged and made all the same: the
        engine's events are the truth about the turn, and a session whose state
        machine refused them would fall silent.
        """
        if target == self.state:
            return False
        if target not in ALLOWED[self.state]:
            log.warning(
                "unexpected state change %s -> %s: following the engine", self.state, target
            )
        self.state = target
        return True

    def follow(self, event: EngineEvent) -> bool:
        """Move as an engine event implies; events that imply nothing are ignored."""
        target = target_for(event, self.state)
        return target is not None and self.move(target)


def target_for(event: EngineEvent, state: ProcessingState) -> ProcessingState | None:
    match event:
        case SpeechStarted() | Interrupted():
            return RECEIVING
        case TranscriptFinal():
            return PROCESSING
        case ResponseTextDelta() | AudioOut():
            # Deltas after the user barged in belong to the cut reply: stay put.
            return RESPONDING if state in (PROCESSING, RESPONDING) else None
        case TurnEnded():
            # A turn can end while the user is already speaking again (barge-in).
            return None if state == RECEIVING else IDLE
    return None
