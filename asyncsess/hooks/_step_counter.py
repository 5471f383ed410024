"""StepCounterHook: log and record global steps per second, as TF does."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._hook import SessionRunHook
from .._tf import SecondOrStepTimer, SessionRunArgs, Summary, v1
from .._worker import run_in_session_thread
from ._checks import check_one_of, required_global_step
from ._writers import StepEstimate, flush_writer, open_writer

if TYPE_CHECKING:
    from .._tf import SessionRunContext, SessionRunValues

logger = logging.getLogger("asyncsess.hooks")

#: TensorFlow warns this many times when the global step does not increase.
_MAX_WARNINGS = 5
#: TensorFlow's StepCounterHook text for both or neither interval.
_ONE_OF = "exactly one of every_n_steps and every_n_secs should be provided."


class StepCounterHook(SessionRunHook):
    """Counts global steps per second, like TensorFlow's.

    Same arguments, tag (``<global step op name>/sec``) and triggers as
    `tf.compat.v1.train.StepCounterHook`: the first trigger only records the
    time, later ones log the rate and write it as a summary. The global step
    fetched with each step decides when to trigger; it is read again (off the
    event loop) only on the steps that may trigger. The writer is flushed at
    `end` and when an error or a cancellation ends the session.

    Args:
      every_n_steps: Count every N steps.
      every_n_secs: Count every N seconds.
      output_dir: Directory for the event file, used when no ``summary_writer``.
      summary_writer: A `tf.compat.v1.summary.FileWriter`.

    Raises:
      ValueError: both or neither of ``every_n_steps`` and ``every_n_secs``, or
        a negative one.
      TypeError: an interval that is not a number.

    Cancellation: a cancelled ``after_run`` records nothing for that step.
    """

    def __init__(
        self,
        every_n_steps: int | None = 100,
        every_n_secs: float | None = None,
        output_dir: Any = None,
        summary_writer: Any = None,
    ) -> None:
        check_one_of(
            ("every_n_steps", "every_n_secs"),
            (every_n_steps, every_n_secs),
            neither=_ONE_OF,
            both=_ONE_OF,
        )
        self._timer = SecondOrStepTimer(
            every_steps=every_n_steps, every_secs=every_n_secs
        )
        self._summary_writer = summary_writer
        self._output_dir = output_dir
        self._last_global_step: int | None = None
        self._estimate = StepEstimate()
        self._warnings = 0
        self._global_step_tensor: Any = None
        self._summary_tag = ""

    async def begin(self) -> None:
        if self._summary_writer is None and self._output_dir:
            self._summary_writer = await open_writer(self._output_dir)
        self._global_step_tensor = required_global_step("StepCounterHook")
        self._summary_tag = v1.train.get_global_step().op.name + "/sec"

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self._estimate.reset()

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs:
        return SessionRunArgs(self._global_step_tensor)

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        stale_global_step = int(run_values.results)
        if self._timer.should_trigger_for_step(self._estimate.after(stale_global_step)):
            # Get the real value after the train op, as TF does.
            session = run_context.session
            global_step = int(
                await run_in_session_thread(session.run, self._global_step_tensor)
            )
            self._estimate.confirm(stale_global_step, global_step)
            if self._timer.should_trigger_for_step(global_step):
                elapsed_time, elapsed_steps = self._timer.update_last_triggered_step(
                    global_step
                )
                if elapsed_time is not None:
                    await self._log_and_record(elapsed_steps, elapsed_time, global_step)
        self._warn_if_not_increased(stale_global_step)
        self._last_global_step = stale_global_step

    async def end(self, session: Any) -> None:
        await flush_writer(self._summary_writer)

    async def on_error(self, exc: BaseException, session: Any) -> None:
        """Flush the event writer, so a short or failed run keeps its events.

        Cancellation: the session calls it shielded and bounded by its
        ``stop_grace_period_secs``.
        """
        await flush_writer(self._summary_writer)

    async def _log_and_record(
        self, elapsed_steps: int, elapsed_time: float, global_step: int
    ) -> None:
        steps_per_sec = elapsed_steps / elapsed_time
        if self._summary_writer is not None:
            summary = Summary(
                value=[Summary.Value(tag=self._summary_tag, simple_value=steps_per_sec)]
            )
            # add_summary blocks when the writer's queue is full: off the loop.
            await run_in_session_thread(
                self._summary_writer.add_summary, summary, global_step
            )
        logger.info("%s: %g", self._summary_tag, steps_per_sec)

    def _warn_if_not_increased(self, stale_global_step: int) -> None:
        # Some optimizers (SyncReplicasOptimizer) do not increase the step on
        # every run by design, so this is only a warning, and only five times.
        if stale_global_step != self._last_global_step:
            return
        if self._warnings >= _MAX_WARNINGS:
            return
        self._warnings += 1
        logger.warning(
            "It seems that global step (tf.train.get_global_step) has not been "
            "increased. Current value (could be stable): %s vs previous value: %s. "
            "You could increase the global step by passing "
            "tf.train.get_global_step() to Optimizer.apply_gradients or "
            "Optimizer.minimize.",
            stale_global_step,
            self._last_global_step,
        )
