"""NanTensorHook: fail (or stop) when the loss fetched with a step is NaN."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from .._hook import SessionRunHook
from .._tf import NanLossDuringTrainingError as NanLossDuringTrainingError
from .._tf import SessionRunArgs

if TYPE_CHECKING:
    from .._tf import SessionRunContext, SessionRunValues

logger = logging.getLogger("asyncsess.hooks")


class NanTensorHook(SessionRunHook):
    """Monitors the loss tensor and stops training if the loss is NaN.

    The loss is fetched with every step. On NaN the hook logs ``Model diverged with
    loss = NaN.`` on the ``asyncsess.hooks`` logger and either raises
    `NanLossDuringTrainingError` from ``after_run`` (``fail_on_nan_loss=True``;
    the session then ends with that error and hooks' ``end`` is not called, their
    ``on_error`` is) or requests a stop. `NanLossDuringTrainingError` is
    TensorFlow's own class, so ``except`` clauses written for either hook work.

    Args:
      loss_tensor: `Tensor`, the loss tensor (or its name).
      fail_on_nan_loss: `bool`, whether to raise an exception when the loss is
        NaN; otherwise request a stop.

    Raises:
      TypeError: if ``loss_tensor`` is None.

    Cancellation: the hook never awaits anything; cancelling the step it belongs
    to cancels the step, not the check.
    """

    def __init__(self, loss_tensor: Any, fail_on_nan_loss: bool = True) -> None:
        if loss_tensor is None:
            raise TypeError(
                "loss_tensor must be a tensor (or tensor name) to watch for NaN. "
                "Received: loss_tensor=None"
            )
        self._loss_tensor = loss_tensor
        self._fail_on_nan_loss = fail_on_nan_loss

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs | None:
        return SessionRunArgs(self._loss_tensor)

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        if not np.any(np.isnan(run_values.results)):
            return
        failure_message = "Model diverged with loss = NaN."
        if self._fail_on_nan_loss:
            logger.error(failure_message)
            raise NanLossDuringTrainingError
        logger.warning(failure_message)
        run_context.request_stop()
