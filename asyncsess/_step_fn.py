"""``run_step_fn``'s pieces: StepContext, the step_fn signature rule, one call.

The session retries a call after a preemption (`asyncsess._recovery.Recovery`);
this module calls the step function once, plain or async.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel

from ._graph import in_graph

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._worker import WorkerThread


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
        worker thread) it returns the results directly. A preemption it raises
        ends the step function, and the session calls it again on a new TF
        session, as TensorFlow does.
        """
        return self._run_with_hooks_fn(*args, **kwargs)

    def request_stop(self) -> None:
        """End the step function now: `run_step_fn` returns None, the loop stops.

        Raises:
          StopIteration: always (a `StepStopRequested`), to leave the step function.
        """
        raise StepStopRequested("step_fn has requested the iterations to stop.")


def check_step_fn(step_fn: Any) -> bool:
    """Raise TypeError/ValueError unless *step_fn* takes exactly ``step_context``.

    Returns whether it is an async function.
    """
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable; Received: step_fn={step_fn!r}")
    target = step_fn.func if hasattr(step_fn, "func") else step_fn
    is_async = inspect.iscoroutinefunction(step_fn) or inspect.iscoroutinefunction(
        getattr(step_fn, "__call__", None)  # noqa: B004
    )
    try:
        params = tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return is_async
    if inspect.ismethod(target):
        params = ("self", *params)
    if params not in {("step_context",), ("self", "step_context")}:
        raise ValueError(
            "`step_fn` may either have one `step_context` argument, or `self` and "
            "`step_context` arguments if it's an instance method. "
            f"Got {params} instead."
        )
    return is_async


async def call_step_fn(
    step_fn: Any,
    is_async: bool,
    session: Any,
    run_with_hooks: Callable[..., Any],
    worker: WorkerThread,
    cancel_grace: float,
) -> Any:
    """Call ``step_fn(StepContext(session, ...))`` once and return its value.

    An async one runs in this task, inside the graph; a plain one on the
    worker's spare thread (it may block), its ``run_with_hooks`` calling back
    into this event loop.

    Cancellation: an async ``step_fn`` is cancelled with the caller. A plain one
    is given *cancel_grace* seconds to finish on its thread, then abandoned: a
    step_fn blocked inside TF (a dequeue) would otherwise hold the caller
    forever; closing the session interrupts it (tests/test_cancellation.py,
    run_step_fn_plain_blocked_dequeue).
    """
    if is_async:
        graph = worker.graph
        return await in_graph(step_fn(StepContext(session, run_with_hooks)), graph)
    token = anyio.lowlevel.current_token()

    def from_thread(*args: Any, **kwargs: Any) -> Any:
        return anyio.from_thread.run(
            lambda: run_with_hooks(*args, **kwargs), token=token
        )

    thread = worker.spare().free()
    completion = thread.submit(step_fn, StepContext(session, from_thread))
    try:
        await thread.bridge.wait(completion)
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await thread.settle(completion, cancel_grace)
        raise
    return completion.result()
