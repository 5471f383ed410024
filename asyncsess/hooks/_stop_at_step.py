"""StopAtStepHook: request a stop once the global step reaches a last step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._hook import SessionRunHook
from .._tf import SessionRunArgs
from .._worker import run_in_session_thread
from ._checks import check_one_of, required_global_step

if TYPE_CHECKING:
    from .._tf import SessionRunContext, SessionRunValues


class StopAtStepHook(SessionRunHook):
    """Hook that requests stop at a specified step, like TensorFlow's.

    With ``num_steps``, the last step is the global step read when the session is
    created plus ``num_steps`` (so a restored run trains ``num_steps`` more); with
    ``last_step``, training stops once the global step reaches it. The check uses
    the global step fetched with each step; only when that value says the last
    step may have been reached is the step re-read (one extra session run, off
    the event loop), exactly where TensorFlow needs the exact value.

    Args:
      num_steps: Number of steps to execute.
      last_step: Step after which to stop.

    Raises:
      ValueError: if both or neither of ``num_steps`` and ``last_step`` are
        given, or one is negative.
      TypeError: if one is not a number.

    Cancellation: ``after_create_session`` and ``after_run`` are cancelled at
    their global-step read, which then finishes on the session's worker thread;
    a cancelled ``after_run`` requests no stop for that step.
    """

    def __init__(
        self, num_steps: int | None = None, last_step: int | None = None
    ) -> None:
        check_one_of(
            ("num_steps", "last_step"),
            (num_steps, last_step),
            # TensorFlow's texts.
            neither="One of num_steps or last_step must be specified.",
            both="Only one of num_steps or last_step can be specified.",
            what="a number of steps (an int)",
        )
        self._num_steps = num_steps
        self._last_step = last_step
        self._global_step_tensor: Any = None

    async def begin(self) -> None:
        self._global_step_tensor = required_global_step("StopAtStepHook")

    async def after_create_session(self, session: Any, coord: Any) -> None:
        # Counted from the step the session starts at (restored or 0), once: a
        # session recreated after a preemption keeps the same last step.
        if self._last_step is None:
            assert self._num_steps is not None
            step = await run_in_session_thread(session.run, self._global_step_tensor)
            self._last_step = int(step) + self._num_steps

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs | None:
        return SessionRunArgs(self._global_step_tensor)

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        assert self._last_step is not None
        # The fetched value is the step *before* this run; +1 is only an estimate
        # (the fetches may not have incremented it), so confirm before stopping.
        if run_values.results + 1 < self._last_step:
            return
        session = run_context.session
        step = await run_in_session_thread(session.run, self._global_step_tensor)
        if step >= self._last_step:
            run_context.request_stop()
