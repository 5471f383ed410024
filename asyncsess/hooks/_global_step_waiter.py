"""GlobalStepWaiterHook: hold the first step until the global step is reached."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from .._hook import SessionRunHook
from .._worker import run_in_session_thread
from ._checks import check_number, required_global_step

if TYPE_CHECKING:
    from .._tf import SessionRunArgs, SessionRunContext

logger = logging.getLogger("asyncsess.hooks")


class GlobalStepWaiterHook(SessionRunHook):
    """Delays the first step until the global step reaches ``wait_until_step``.

    Used to start workers gradually in distributed training (for example
    ``wait_until_step=int(K * log(task_id + 1))``, task 0 being the chief). Like
    TensorFlow's, the first ``before_run`` polls the global step; unlike it, each
    read runs on the session's worker thread and the wait between reads is an
    ``anyio.sleep`` of `poll_interval` seconds, so the event loop keeps running
    and the wait can be cancelled. It also ends when a stop is requested: by the
    coordinator (``coord.request_stop()``, a failed queue runner) or by another
    hook of the same step; the step then runs as TensorFlow runs a step whose
    ``before_run`` requested a stop, and the loop ends after it. (A user's
    ``sess.request_stop()`` is not visible to hooks: cancel the task awaiting
    ``run()`` to stop waiting from outside.) Progress is logged on
    ``asyncsess.hooks`` at INFO every 1000 steps, as TF does.

    Args:
      wait_until_step: an `int`, the global step to wait for; 0 or less means no
        wait.

    Raises:
      TypeError: if ``wait_until_step`` is not a number.

    Cancellation: cancelling the task awaiting ``run()`` ends the wait at once
    (a step read in flight finishes on the worker thread); no step runs and the
    next ``run()`` waits again.
    """

    #: Seconds between two global-step reads while waiting (TensorFlow: 0.5).
    poll_interval: float = 0.5

    def __init__(self, wait_until_step: int) -> None:
        check_number(
            "wait_until_step",
            wait_until_step,
            what="an int (a global step)",
            minimum=None,  # 0 or less: no wait, as in TensorFlow
        )
        self._wait_until_step = wait_until_step
        self._worker_is_started = False
        self._global_step_tensor: Any = None
        self._coord: Any = None

    async def begin(self) -> None:
        self._worker_is_started = False
        self._global_step_tensor = required_global_step("GlobalStepWaiterHook")

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self._coord = coord

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs | None:
        if self._worker_is_started:
            return None
        if self._wait_until_step <= 0:
            self._worker_is_started = True
            return None
        logger.info(
            "Waiting for global step %d before starting training.",
            self._wait_until_step,
        )
        await self._wait(run_context)
        return None

    async def _wait(self, run_context: SessionRunContext) -> None:
        session, tensor = run_context.session, self._global_step_tensor
        last_logged_step = 0
        while True:
            current_step = await run_in_session_thread(session.run, tensor)
            if current_step >= self._wait_until_step:
                self._worker_is_started = True
                return
            if self._stop_requested(run_context):
                logger.info(
                    "Stopped waiting for global step %d at step %d: a stop was "
                    "requested.",
                    self._wait_until_step,
                    current_step,
                )
                return
            if current_step - last_logged_step > 1000:
                logger.info(
                    "Waiting for global step %d before starting training. "
                    "Current step is %d.",
                    self._wait_until_step,
                    current_step,
                )
                last_logged_step = current_step
            await anyio.sleep(self.poll_interval)

    def _stop_requested(self, run_context: SessionRunContext) -> bool:
        coord = self._coord
        return bool(run_context.stop_requested) or (
            coord is not None and coord.should_stop()
        )
