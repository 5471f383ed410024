"""LoggingTensorHook: log tensors every N local steps, every N seconds, or at end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._hook import SessionRunHook
from .._tf import SecondOrStepTimer, SessionRunArgs, as_graph_element, v1
from .._worker import run_in_session_thread
from ._checks import check_number

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .._tf import SessionRunContext, SessionRunValues

#: The tensor lines go where TensorFlow's hook puts them: TensorFlow's logger
#: ("tensorflow"), at INFO, so `tf.compat.v1.logging.set_verbosity(INFO)` and
#: existing log scrapers keep working unchanged after the move to asyncsess.
#: Through tf_logging's own function: TF's logger attributes a record to the first
#: frame outside the file that called it, which is right only from there.
log_info = v1.logging.info


def _check_every_n_iter(value: Any) -> None:
    if value is None:
        return
    check_number("every_n_iter", value, minimum=None)
    if value <= 0:
        raise ValueError(
            "Invalid every_n_iter: it must be a positive number of steps. "
            f"Received: every_n_iter={value!r}"
        )


class LoggingTensorHook(SessionRunHook):
    """Logs the given tensors every N local steps, every N seconds, or at end.

    TensorFlow's hook, async, with the same log lines: ``tag = value, ...`` with
    ``(x.xxx sec)`` since the previous line appended from the second line on,
    dict tags sorted, list tags in their order, numpy's ``suppress=True`` print
    option, or the ``formatter``'s string. Lines go to TensorFlow's logger
    (``"tensorflow"``) at INFO, where TF's hook logs them: if you see nothing, call
    ``tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.INFO)``.

    Steps are counted locally (``run()`` calls since ``begin``), not by global
    step. The tensors are fetched with the steps that log; with ``at_end``, `end`
    runs them once more off the event loop. The print options are set in a
    context (numpy's are context-local), never process-wide as TF does.

    Args:
      tensors: `dict` that maps string-valued tags to tensors/tensor names, or
        `iterable` of tensors/tensor names.
      every_n_iter: `int`, log the values once every N local steps.
      every_n_secs: `int` or `float`, log the values once every N seconds.
        Exactly one of ``every_n_iter`` and ``every_n_secs`` should be provided
        (or neither, with ``at_end``).
      at_end: `bool`, whether to log the values at the end of the run.
      formatter: function, takes dict of ``tag``->value and returns a string.
        If None, the default line is logged.

    Raises:
      ValueError: if neither or both of ``every_n_iter`` and ``every_n_secs`` are
        given (without ``at_end``), ``every_n_iter`` is not positive or
        ``every_n_secs`` is negative.
      TypeError: if ``tensors`` is a string, ``formatter`` is not callable, or an
        interval is not a number.

    Cancellation: only `end` awaits (the final run on the session's worker
    thread); cancelled, it returns at once and logs nothing.
    """

    def __init__(
        self,
        tensors: Mapping[str, Any] | Iterable[Any],
        every_n_iter: int | None = None,
        every_n_secs: float | None = None,
        at_end: bool = False,
        formatter: Callable[[dict[Any, Any]], str] | None = None,
    ) -> None:
        only_log_at_end = at_end and every_n_iter is None and every_n_secs is None
        if not only_log_at_end and (every_n_iter is None) == (every_n_secs is None):
            raise ValueError(
                "either at_end and/or exactly one of every_n_iter and every_n_secs "
                f"must be provided. Received: every_n_iter={every_n_iter!r}, "
                f"every_n_secs={every_n_secs!r}, at_end={at_end!r}"
            )
        _check_every_n_iter(every_n_iter)
        if every_n_secs is not None:
            check_number("every_n_secs", every_n_secs)
        if isinstance(tensors, (str, bytes)):
            raise TypeError(
                "tensors must be a dict of tag to tensor or a list of tensors "
                f"(or names). Received: tensors={tensors!r}"
            )
        if formatter is not None and not callable(formatter):
            raise TypeError(
                f"formatter must be callable or None. Received: formatter={formatter!r}"
            )
        if isinstance(tensors, dict):
            self._tag_order: list[Any] = sorted(tensors.keys())
            self._tensors: dict[Any, Any] = dict(tensors)
        else:
            self._tag_order = list(tensors)
            self._tensors = {item: item for item in self._tag_order}
        self._formatter = formatter
        self._timer = (
            None
            if only_log_at_end
            else SecondOrStepTimer(every_secs=every_n_secs, every_steps=every_n_iter)
        )
        self._log_at_end = at_end
        self._iter_count = 0
        self._should_trigger = False
        self._current_tensors: dict[Any, Any] = {}

    async def begin(self) -> None:
        if self._timer is not None:
            self._timer.reset()
        self._iter_count = 0
        # Names become tensors of the session's graph (the default graph here).
        self._current_tensors = {
            tag: as_graph_element(tensor) for tag, tensor in self._tensors.items()
        }

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs | None:
        timer = self._timer
        self._should_trigger = timer is not None and timer.should_trigger_for_step(
            self._iter_count
        )
        return SessionRunArgs(self._current_tensors) if self._should_trigger else None

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        if self._should_trigger:
            self._log_tensors(run_values.results)
        self._iter_count += 1

    async def end(self, session: Any) -> None:
        if self._log_at_end:
            values = await run_in_session_thread(session.run, self._current_tensors)
            self._log_tensors(values)

    def _log_tensors(self, tensor_values: dict[Any, Any]) -> None:
        elapsed_secs = None
        if self._timer is not None:
            elapsed_secs, _ = self._timer.update_last_triggered_step(self._iter_count)
        with np.printoptions(suppress=True):
            if self._formatter is not None:
                log_info("%s", self._formatter(tensor_values))
                return
            line = ", ".join(
                f"{tag} = {tensor_values[tag]!s}" for tag in self._tag_order
            )
        if elapsed_secs is not None:
            log_info("%s (%.3f sec)", line, elapsed_secs)
        else:
            log_info("%s", line)
