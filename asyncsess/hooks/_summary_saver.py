"""SummarySaverHook: write summaries every N steps or seconds, as TF does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._hook import SessionRunHook, describe
from .._tf import SecondOrStepTimer, SessionLog, SessionRunArgs
from .._worker import run_in_session_thread
from ._checks import check_one_of, required_global_step
from ._writers import flush_writer, open_writer

if TYPE_CHECKING:
    from .._tf import SessionRunContext, SessionRunValues


class SummarySaverHook(SessionRunHook):
    """Saves summaries every N steps or seconds, like TensorFlow's.

    Same arguments, triggers and events as `tf.compat.v1.train.SummarySaverHook`:
    the first step always writes its summaries and a ``SessionLog.START``;
    summaries are stamped with the global step after the step. Writing (and
    the step read TF makes on the steps that write) runs off the event loop, and
    the writer is flushed at `end` and when an error or a cancellation ends the
    session.

    Args:
      save_steps: Save summaries every N steps.
      save_secs: Save summaries every N seconds.
      output_dir: Directory to write the event file to, used when no
        ``summary_writer`` is given.
      summary_writer: A `tf.compat.v1.summary.FileWriter`.
      scaffold: A `Scaffold` to get the summary op from (its ``summary_op``).
      summary_op: A string tensor holding a serialized `Summary`, or a list of
        them.

    Raises:
      ValueError: both or neither of ``scaffold`` and ``summary_op``, both or
        neither of ``save_steps`` and ``save_secs``, or a negative one.
      TypeError: an interval that is not a number.

    Cancellation: a cancelled ``after_run`` writes this step's summaries or not
    at all (the write is one job on the worker thread, which completes).
    """

    def __init__(
        self,
        save_steps: int | None = None,
        save_secs: float | None = None,
        output_dir: Any = None,
        summary_writer: Any = None,
        scaffold: Any = None,
        summary_op: Any = None,
    ) -> None:
        if (scaffold is None) == (summary_op is None):
            raise ValueError(
                "Exactly one of scaffold or summary_op must be provided. "
                f"Received: scaffold={describe(scaffold)}, "
                f"summary_op={describe(summary_op)}"
            )
        check_one_of(("save_secs", "save_steps"), (save_secs, save_steps))
        self._summary_op = summary_op
        self._summary_writer = summary_writer
        self._output_dir = output_dir
        self._scaffold = scaffold
        self._timer = SecondOrStepTimer(every_secs=save_secs, every_steps=save_steps)
        self._next_step: int | None = None
        self._request_summary = False
        self._global_step_tensor: Any = None

    async def begin(self) -> None:
        if self._summary_writer is None and self._output_dir:
            self._summary_writer = await open_writer(self._output_dir)
        self._next_step = None
        self._global_step_tensor = required_global_step("SummarySaverHook")

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs:
        self._request_summary = self._next_step is None or (
            self._timer.should_trigger_for_step(self._next_step)
        )
        requests = {"global_step": self._global_step_tensor}
        if self._request_summary:
            summary_op = self._get_summary_op()
            if summary_op is not None:
                requests["summary"] = summary_op
        return SessionRunArgs(requests)

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        if not self._summary_writer:
            return
        global_step = int(run_values.results["global_step"]) + 1
        first = self._next_step is None
        if first or self._request_summary:
            summaries = run_values.results.get("summary", ())
            global_step = await run_in_session_thread(
                self._record, run_context.session, first, summaries
            )
            if self._request_summary:
                self._timer.update_last_triggered_step(global_step)
        self._next_step = global_step + 1

    async def end(self, session: Any = None) -> None:
        await flush_writer(self._summary_writer)

    async def on_error(self, exc: BaseException, session: Any) -> None:
        """Flush the event writer, so a short or failed run keeps its events.

        Cancellation: the session calls it shielded and bounded by its
        ``stop_grace_period_secs``.
        """
        await flush_writer(self._summary_writer)

    def _record(self, session: Any, first: bool, summaries: Any) -> int:
        """Read the step after the run; write the START log and summaries."""
        global_step = int(session.run(self._global_step_tensor))
        writer = self._summary_writer
        if first:
            writer.add_session_log(SessionLog(status=SessionLog.START), global_step)
        for summary in summaries:
            writer.add_summary(summary, global_step)
        return global_step

    def _get_summary_op(self) -> list[Any] | None:
        """The summary tensors: ``summary_op`` or the scaffold's, as a list."""
        summary_op = self._summary_op
        if summary_op is None:
            summary_op = self._scaffold.summary_op
        if summary_op is None:
            return None
        return summary_op if isinstance(summary_op, list) else [summary_op]
