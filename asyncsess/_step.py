"""``run_step_fn``: StepContext, its rules, and the loop running a step function."""

from __future__ import annotations

import inspect
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from ._backend import Completion
from ._exceptions import explain_finalized
from ._graph import in_graph
from ._recovery import coordinator_root_cause, is_preemption
from ._stop import StopReason

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backend import LoopBridge


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


class StepFnRunner:
    """`MonitoredSession.run_step_fn`'s loop (a mixin; state lives there)."""

    _graph: Any
    _tf_sess: Any
    _coord: Any
    _bridge: LoopBridge | None
    _stop: StopReason | None
    _should_recover: bool
    step_cancel_grace: float

    if TYPE_CHECKING:

        async def run(self, *args: Any, **kwargs: Any) -> Any: ...

        async def _recover(self, exc: BaseException, during: str) -> None: ...

    async def _run_step_fn(self, step_fn: Any) -> Any:
        is_async = inspect.iscoroutinefunction(step_fn) or inspect.iscoroutinefunction(
            getattr(step_fn, "__call__", None)  # noqa: B004
        )
        while True:
            try:
                if is_async:
                    context = StepContext(self._tf_sess, self.run)
                    return await in_graph(step_fn(context), self._graph)
                return await self._run_sync_step_fn(step_fn)
            except Exception as exc:
                if stop_requested_by(exc):
                    if self._stop is None:
                        self._stop = StopReason(
                            "step_fn",
                            "step_context.request_stop() was called.",
                            "step_fn",
                        )
                    return None
                better = explain_finalized(exc, "The step_fn")
                if better is not exc:
                    raise better from exc
                error = coordinator_root_cause(self._coord, exc)
                if not (self._should_recover and is_preemption(error)):
                    raise
                await self._recover(error, "running a step_fn")

    async def _run_sync_step_fn(self, step_fn: Any) -> Any:
        graph, session = self._graph, self._tf_sess

        def run_with_hooks(*args: Any, **kwargs: Any) -> Any:
            return anyio.from_thread.run(lambda: self.run(*args, **kwargs))

        bridge = self._bridge
        assert bridge is not None
        completion = Completion()

        def call() -> None:
            try:
                with graph.as_default():
                    completion.value = step_fn(StepContext(session, run_with_hooks))
            except BaseException as exc:
                completion.error = exc
            bridge.post(bridge.deliver, completion)

        # The thread is abandoned (not waited for) once the caller is cancelled and
        # the grace has passed: a step_fn blocked inside TF (a dequeue) would
        # otherwise hold the caller forever; closing the session interrupts it
        # (tests/test_cancellation.py, run_step_fn_plain_blocked_dequeue).
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                partial(anyio.to_thread.run_sync, abandon_on_cancel=True), call
            )
            try:
                await bridge.wait(completion)
            except anyio.get_cancelled_exc_class():
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(self.step_cancel_grace),
                ):
                    await bridge.wait(completion)
                raise
        return completion.result()
