"""The async hook protocol: SessionRunHook and its documented no-op methods."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    # TensorFlow's classes from their defining module (`asyncsess._tf` holds the
    # same objects): type checkers cannot see through the lazily loaded
    # ``tf.compat.v1``, so names taken from it would be unknown to them.
    from tensorflow.python.training.session_run_hook import (
        SessionRunArgs,
        SessionRunContext,
        SessionRunValues,
    )


class SessionRunHook:
    """Hook to extend calls to `MonitoredSession.run()`, with async methods.

    The async counterpart of `tf.compat.v1.train.SessionRunHook`: the same methods,
    called at the same points, with the same arguments, but awaited on the event
    loop. Every method is optional; the base class's are no-ops and a hook that
    does not override a method costs nothing for it. Methods may also be plain
    ``def`` functions: those run inline on the event loop and must not block (a
    method that holds the loop over 0.1 s in a step is logged once, at WARNING).

    TensorFlow's own hooks (instances of `tf.compat.v1.train.SessionRunHook`) are
    accepted unmodified alongside these; their blocking methods run on the
    session's worker thread. One with ``async def`` methods is refused when the
    session is built (nobody would await them). Duck-typed hooks (any object
    with some of these methods) are accepted too: async if one of them is
    ``async def``, else run as TensorFlow's.

    A hook class that sets ``overlap_after_run = True`` has its `after_run` for
    step k run while step k+1 proceeds (see the README, "Hooks that overlap").

    Cancellation: each method is awaited inside the task that called the session
    method, so cancelling that task cancels the hook method at its next await.
    """

    #: Run `after_run` of step k concurrently with step k+1 (at most one pending).
    overlap_after_run: ClassVar[bool] = False

    async def begin(self) -> None:
        """Called once before using the session, with the session's graph as default.

        The graph can still be modified here: create the ops and tensors the hook
        needs. `begin` is not called again when the session is recreated after a
        preemption.
        """

    async def after_create_session(self, session: Any, coord: Any) -> None:
        """Called when a new TensorFlow session is created (and again after recovery).

        The graph is finalized and ops can no longer be added. Runs after the model
        was initialized or restored and after the queue runners started.

        Args:
          session: The raw `tf.compat.v1.Session` just created.
          coord: The `tf.train.Coordinator` of that session.
        """

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs | None:
        """Called before each call to `run()`; may request more fetches and feeds.

        Args:
          run_context: The `SessionRunContext` shared by all hooks of this step.

        Returns:
          None or a `SessionRunArgs` whose fetches, feeds and options are merged
          into the step's call.
        """
        return None

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        """Called after each call to `run()` with the results of this hook's fetches.

        Not called if the device step or any `before_run` raised.

        Args:
          run_context: The same `SessionRunContext` as in `before_run`.
          run_values: A `SessionRunValues` with this hook's results.
        """

    async def end(self, session: Any) -> None:
        """Called at the end of the session, when it ends cleanly.

        Not called when the session ends with an error other than
        `OutOfRangeError`/`StopIteration` (see `on_error`).

        Args:
          session: The raw `tf.compat.v1.Session`, still open.
        """

    async def on_error(self, exc: BaseException, session: Any) -> None:
        """Called when an error or a cancellation ends the session, instead of `end`.

        Runs before the TensorFlow session closes, shielded from cancellation and
        bounded by the session's ``stop_grace_period_secs``, so a hook can save or
        flush. Errors raised here are logged and do not replace *exc*.

        Args:
          exc: The exception that is ending the session.
          session: The raw `tf.compat.v1.Session`, or None when it was already
            closed (for example to abort a step blocked inside TensorFlow).
        """


def hook_name(hook: object) -> str:
    """A short, readable name for *hook* in logs and messages."""
    return type(hook).__name__


def describe(obj: Any) -> str:
    """``repr`` shortened for error messages."""
    text = repr(obj)
    return text if len(text) <= 120 else text[:117] + "..."
