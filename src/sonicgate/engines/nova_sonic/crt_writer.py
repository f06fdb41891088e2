"""Quiet for one known awscrt failure (aws-crt-python#762, open in awscrt 0.32).

When the service ends a bidirectional stream first (it refused or throttled it,
or it broke), awscrt's HTTP/2 request writer still writes its end of stream on
the way out. That write raises ``AWS_ERROR_HTTP_STREAM_HAS_COMPLETED``, and the
error surfaces as "Task exception was never retrieved" or "Exception ignored in
coroutine", a traceback each time. The stream's own outcome has already reached
the client as a protocol-shaped error, so this says nothing new: it goes to the
debug log instead. Any other error passes through untouched.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

UnraisableHook = Callable[["sys.UnraisableHookArgs"], object]  # a type to typeshed alone

log = logging.getLogger(__name__)

WRITER = "AIOHttp2ClientStream._set_request_body_generator"
COMPLETED = "AWS_ERROR_HTTP_STREAM_HAS_COMPLETED"


def _quieted(error: BaseException | None, where: str) -> bool:
    """Whether ``error``, raised in ``where`` (a task's or coroutine's description), is
    the writer's end-of-stream write; if so it goes to the debug log."""
    # A RuntimeError when the write is refused at once, an AwsCrtError when it fails later.
    if error is None or COMPLETED not in str(error) or WRITER not in where:
        return False
    log.debug("awscrt's request writer ended on a completed stream")
    return True


class _WriterTaskFilter(logging.Filter):
    """asyncio's "Task exception was never retrieved", for the writer's task."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not _quieted(error, record.getMessage())


def _unraisable_hook(previous: UnraisableHook) -> UnraisableHook:
    """Python's "Exception ignored in coroutine", for the writer's coroutine."""

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not _quieted(unraisable.exc_value, repr(unraisable.object)):
            previous(unraisable)

    return hook


@functools.cache
def quiet_writer_ends() -> None:
    """Install both filters, once per process."""
    logging.getLogger("asyncio").addFilter(_WriterTaskFilter())
    sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
