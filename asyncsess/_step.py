"""StepContext and the rules of ``run_step_fn`` (plain or async step functions)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable


class StepStopRequested(StopIteration):
    """Raised by `StepContext.request_stop` to end the step function.

    A StopIteration, as in TensorFlow, but recognised by `run_step_fn` also where
    PEP 479 turned it into a RuntimeError (raised inside a coroutine).
    """


def stop_requested_by(exc: BaseException) -> bool:
    """Whether *exc* is (or PEP 479 wrapped) `StepContext.request_stop`'s exception."""
    if isinstance(exc, StepStopRequested):
        return True
    return isinstance(exc, RuntimeError) and isinstance(
        exc.__cause__, StepStopRequested
    )


class StepContext:
    """What a ``step_fn`` passed to `MonitoredSession.run_step_fn` receives.

    ``session`` is the raw `tf.compat.v1.Session` (a run on it skips the hooks);
    `run_with_hooks` runs like `MonitoredSession.run`; `request_stop` ends the
    step function and the loop.

    Cancellation: `run_with_hooks` behaves as `MonitoredSession.run` does.
    """

    def __init__(self, session: Any, run_with_hooks_fn: Callable[..., Any]) -> None:
        self._session = session
        self._run_with_hooks_fn = run_with_hooks_fn

    @property
    def session(self) -> Any:
        """The raw `tf.compat.v1.Session` of this attempt (new after a recovery)."""
        return self._session

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        """Same as `MonitoredSession.run`, with the same arguments.

        In an async ``step_fn`` await it; in a plain ``step_fn`` (which runs on a
        worker thread) it returns the results directly.
        """
        return self._run_with_hooks_fn(*args, **kwargs)

    def request_stop(self) -> None:
        """End the step function now: `run_step_fn` returns None, the loop stops.

        Raises:
          StopIteration: always (a `StepStopRequested`), to leave the step function.
        """
        raise StepStopRequested("step_fn has requested the iterations to stop.")


def check_step_fn(step_fn: Any) -> None:
    """Raise TypeError/ValueError unless *step_fn* takes exactly ``step_context``."""
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable; Received: step_fn={step_fn!r}")
    target = step_fn.func if hasattr(step_fn, "func") else step_fn
    try:
        params = tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return
    if inspect.ismethod(target):
        params = ("self", *params)
    if params not in {("step_context",), ("self", "step_context")}:
        raise ValueError(
            "`step_fn` may either have one `step_context` argument, or `self` and "
            "`step_context` arguments if it's an instance method. "
            f"Got {params} instead."
        )
