"""ProfilerHook: Chrome-trace timelines and run metadata every N steps or seconds."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import anyio

from .._hook import SessionRunHook
from .._tf import (
    FULL_TRACE,
    FileWriterCache,
    RunOptions,
    SecondOrStepTimer,
    SessionRunArgs,
    chrome_trace,
    tf,
)
from .._worker import run_in_session_thread
from ._checks import check_one_of, required_global_step

if TYPE_CHECKING:
    from .._tf import SessionRunContext, SessionRunValues

logger = logging.getLogger("asyncsess.hooks")


#: TensorFlow's docstring rule, as the message for both or neither interval.
_ONE_OF = "Exactly one of save_steps and save_secs should be provided."


class ProfilerHook(SessionRunHook):
    """Captures CPU/GPU profiling information every N steps or seconds.

    TensorFlow's hook, async. On a trigger step it asks for
    ``RunOptions(trace_level=FULL_TRACE)``, then writes ``timeline-<step>.json``
    (Chrome trace format) to ``output_dir`` and adds the run metadata to the
    directory's event file under the tag ``step_<step>``. The first step is never
    traced. The trace is converted and written, and the exact global step read,
    on the session's worker thread, never on the event loop. The event writer
    (TensorFlow's ``FileWriterCache`` writer for ``output_dir``, opened in
    `begin`) is flushed at `end` and when an error or a cancellation ends the
    session (TensorFlow's never flushes, so short runs lose the metadata).

    Args:
      save_steps: `int`, save profile traces every N steps. Exactly one of
        ``save_secs`` and ``save_steps`` should be set.
      save_secs: `int` or `float`, save profile traces every N seconds.
      output_dir: `string`, the directory to save the profile traces to.
        Defaults to the current directory.
      show_dataflow: `bool`, if True, add flow events to the trace connecting
        producers and consumers of tensors.
      show_memory: `bool`, if True, add object snapshot events to the trace
        showing the sizes and lifetimes of tensors.

    Raises:
      ValueError: if both or neither of ``save_steps`` and ``save_secs`` are
        given, or the one given is negative.
      TypeError: if it is not a number.

    Cancellation: a cancelled ``after_run`` returns at once while the timeline
    write in flight finishes on the worker thread; the flush in ``on_error`` is
    shielded and bounded by the session's ``stop_grace_period_secs``.
    """

    def __init__(
        self,
        save_steps: int | None = None,
        save_secs: float | None = None,
        output_dir: str = "",
        show_dataflow: bool = True,
        show_memory: bool = False,
    ) -> None:
        check_one_of(
            ("save_steps", "save_secs"),
            (save_steps, save_secs),
            neither=_ONE_OF,
            both=_ONE_OF,
        )
        self._output_dir = output_dir
        self._output_file = os.path.join(output_dir, "timeline-{}.json")
        self._show_dataflow = show_dataflow
        self._show_memory = show_memory
        self._timer = SecondOrStepTimer(every_secs=save_secs, every_steps=save_steps)
        self._file_writer: Any = None
        self._global_step_tensor: Any = None
        self._next_step: int | None = None
        self._request_summary = False

    async def begin(self) -> None:
        self._next_step = None
        self._global_step_tensor = required_global_step("ProfilerHook")
        if self._file_writer is None:
            # Opening a writer creates the event file (and writes the graph): off
            # the loop, on the worker thread whose default graph is the session's.
            self._file_writer = await run_in_session_thread(
                FileWriterCache.get, self._output_dir
            )

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs | None:
        self._request_summary = (
            self._next_step is not None
            and self._timer.should_trigger_for_step(self._next_step)
        )
        options = RunOptions(trace_level=FULL_TRACE) if self._request_summary else None
        return SessionRunArgs(
            {"global_step": self._global_step_tensor}, options=options
        )

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        stale_global_step = int(run_values.results["global_step"])
        if self._next_step is None:
            # Do not trigger until N steps or seconds have passed.
            self._timer.update_last_triggered_step(stale_global_step)
        global_step = stale_global_step + 1
        if self._request_summary:
            # A traced step is rare and costly anyway: read the exact step (the
            # fetched one may precede this step's increment) for the file name.
            global_step = await run_in_session_thread(
                self._profile, run_context.session, run_values.run_metadata
            )
            self._timer.update_last_triggered_step(global_step)
        self._next_step = global_step + 1

    def _profile(self, session: Any, run_metadata: Any) -> int:
        """Read the step, write the timeline and the run metadata (worker thread)."""
        step = int(session.run(self._global_step_tensor))
        save_path = self._output_file.format(step)
        logger.info("Saving timeline for %d into '%s'.", step, save_path)
        trace = chrome_trace(
            run_metadata.step_stats, self._show_dataflow, self._show_memory
        )
        with tf.io.gfile.GFile(save_path, "w") as f:
            f.write(trace)
        self._file_writer.add_run_metadata(run_metadata, f"step_{step}")
        return step

    async def end(self, session: Any) -> None:
        if self._file_writer is not None:
            await run_in_session_thread(self._file_writer.flush)

    async def on_error(self, exc: BaseException, session: Any) -> None:
        # Not on the session's worker: it may still be stuck in the step that
        # failed. A flush needs no graph and FileWriter is thread-safe.
        if self._file_writer is not None:
            await anyio.to_thread.run_sync(
                self._file_writer.flush, abandon_on_cancel=True
            )
