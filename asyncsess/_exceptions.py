"""asyncsess's own error types (builtin bases) and helpers for the public boundary.

Misuse of a session raises a `SessionStateError` subclass of RuntimeError, the type
TensorFlow raises for the same misuse and with its text where it has one, so code
that catches RuntimeError keeps working and code that means "the session is not
usable now" can say so without swallowing TensorFlow's own RuntimeErrors.
"""

from __future__ import annotations

import sys
from typing import Any

from ._tf import OutOfRangeError

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

_FINALIZED = "Graph is finalized and cannot be modified."


class SessionStateError(RuntimeError):
    """A session was used in a state that does not allow it.

    Raised when a session is opened twice, run before it opened or after it
    closed, or used from another thread or event loop than the one that opened
    it. The subclasses say which.
    """


class RunAfterStopError(SessionStateError):
    """`run` was called after a stop was requested (TensorFlow's message).

    Check ``sess.should_stop()`` before each ``run()``; `run_without_hooks`
    still works.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(
            "Run called even after should_stop requested. "
            f"({detail} Check sess.should_stop() before each run().)"
        )


class SessionBrokenError(SessionStateError):
    """Recovery from a preemption failed; close the session and open a new one."""


class WrongEventLoopError(SessionStateError):
    """A session was used from another thread or event loop than its own."""


class FeedConflictError(RuntimeError):
    """The same tensor is fed twice in one step: by two hooks, or a hook and the caller.

    TensorFlow raises RuntimeError with the same text.
    """


def collapse(exc: BaseException) -> BaseException:
    """Unwrap exception groups that hold a single exception (Starlette's helper)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def end_of_input(exc: BaseException) -> bool:
    """Whether *exc* ends a session as end of input: exit swallows it.

    ``OutOfRangeError`` and ``StopIteration``, also where PEP 479 turned a
    StopIteration into a RuntimeError on its way out of a coroutine (a TF hook's
    ``before_run`` raising it on the worker thread, say).
    """
    if isinstance(exc, (OutOfRangeError, StopIteration)):
        return True
    return (
        type(exc) is RuntimeError
        and isinstance(exc.__cause__, StopIteration)
        and str(exc).endswith("raised StopIteration")
    )


def tag_source(exc: BaseException, source: str) -> None:
    """Remember which hook method raised *exc*, for the logs at exit."""
    if getattr(exc, "__asyncsess_source__", None) is None:
        try:
            exc.__asyncsess_source__ = source  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions with __slots__
            pass


def source_of(exc: BaseException) -> str | None:
    """The hook method that raised *exc*, or None if it came from elsewhere."""
    source: Any = getattr(exc, "__asyncsess_source__", None)
    if source is None and exc.__cause__ is not None:  # PEP 479's RuntimeError
        source = getattr(exc.__cause__, "__asyncsess_source__", None)
    return source if isinstance(source, str) else None


def explain_finalized(exc: BaseException, who: str) -> BaseException:
    """Return a clearer RuntimeError for TF's 'Graph is finalized' error, else *exc*."""
    if isinstance(exc, RuntimeError) and str(exc).startswith(_FINALIZED):
        return RuntimeError(
            f"{_FINALIZED} {who} tried to add an op after the session opened; "
            "ops belong in a hook's begin() or in the graph before the session opens."
        )
    return exc


class BatchQueueFullError(RuntimeError):
    """A `Batcher` call was refused: *max_enqueued* rows already wait.

    TensorFlow Serving answers the same case with UNAVAILABLE ("The batch
    scheduling queue ... is full"); a web service answers 429 or 503.
    """

    def __init__(self, rows: int, queued: int, limit: int) -> None:
        super().__init__(
            f"Batcher queue is full: {queued} rows wait and max_enqueued={limit}, so "
            f"this call's {rows} rows were refused; retry later, or raise max_enqueued"
        )
        self.rows, self.queued, self.limit = rows, queued, limit
