"""FinalOpsHook: evaluate tensors once when the session ends."""

from __future__ import annotations

import logging
from typing import Any

from .._hook import SessionRunHook
from .._tf import OutOfRangeError
from .._worker import run_in_session_thread

logger = logging.getLogger("asyncsess.hooks")

_INPUT_DEPENDENCY_WARNING = (
    "An OutOfRangeError or StopIteration exception is raised by the code in "
    "FinalOpsHook. This typically means the Ops running by the FinalOpsHook have a "
    "dependency back to some input source, which should not happen. For example, "
    "for metrics in tf.estimator.Estimator, all metrics functions return two Ops: "
    "`value_op` and  `update_op`. Estimator.evaluate calls the `update_op` for each "
    "batch of the data in input source and, once it is exhausted, it call the "
    "`value_op` to get the metric values. The `value_op` here should have "
    "dependency back to variables reading only, rather than reading another batch "
    "from input. Otherwise, the `value_op`, executed by `FinalOpsHook`, triggers "
    "another data reading, which ends OutOfRangeError/StopIteration. Please fix that."
)


class FinalOpsHook(SessionRunHook):
    """A hook which evaluates tensors at the end of a session, like TensorFlow's.

    `end` runs ``final_ops`` (with ``final_ops_feed_dict``) on the session's worker
    thread, off the event loop, and keeps the result in `final_ops_values`. An
    ``OutOfRangeError`` or ``StopIteration`` there logs TensorFlow's warning (the
    ops depend on an input source) on ``asyncsess.hooks`` and is re-raised, so the
    session's exit raises it.

    Args:
      final_ops: A single `Tensor`, a list of `Tensors` or a dictionary of names
        to `Tensors` (None: nothing is run).
      final_ops_feed_dict: A feed dictionary to use when running ``final_ops``.

    Cancellation: a cancelled `end` returns at once; the run finishes on the worker
    thread and its values are dropped (`final_ops_values` stays None).
    """

    def __init__(self, final_ops: Any, final_ops_feed_dict: Any = None) -> None:
        self._final_ops = final_ops
        self._final_ops_feed_dict = final_ops_feed_dict
        self._final_ops_values: Any = None

    @property
    def final_ops_values(self) -> Any:
        """The values of ``final_ops`` computed by `end`, or None before that."""
        return self._final_ops_values

    async def end(self, session: Any) -> None:
        if self._final_ops is None:
            return
        try:
            self._final_ops_values = await run_in_session_thread(
                session.run, self._final_ops, self._final_ops_feed_dict
            )
        except (OutOfRangeError, StopIteration):
            logger.warning(_INPUT_DEPENDENCY_WARNING)
            raise
