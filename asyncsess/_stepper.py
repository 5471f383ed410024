"""The per-step path of `MonitoredSession.run`: hooks, one hand-off, cancellation.

A `Stepper` is built when a session opens and owns everything one step touches:
the hooks' before_run and after_run (through the dispatcher), the merge of their
requests, the device step on the worker thread, the overlapped after_runs still
pending, and what happens to a step whose caller is cancelled. It talks back to
its session through one callback (a hook asked to stop).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._runargs import merge
from ._stop import RunContext
from ._tf import SessionRunArgs

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backend import Completion
    from ._dispatch import Dispatcher
    from ._runargs import MergedRun, StepOutcome
    from ._worker import WorkerThread

logger = logging.getLogger("asyncsess")


class DeviceStep(Protocol):
    """Runs one step of a TF session: ``Session.run``'s arguments and results.

    `asyncsess._run_cache.RunCache` is the one in use; it runs on the worker thread.
    """

    def run(
        self,
        sess: Any,
        fetches: Any,
        feed_dict: Any = None,
        options: Any = None,
        run_metadata: Any = None,
    ) -> Any: ...


class Stepper:
    """Runs the steps of one open session, one at a time (the session serialises).

    Args:
      dispatch: The session's hooks, classified.
      worker: The session's worker thread.
      device: Runs the device step on the worker thread.
      on_hook_stop: Called with a step's run context when a hook asked to stop.
      cancel_grace: Seconds a cancelled step is given to finish before it is
        abandoned.

    Cancellation: see `run`.
    """

    def __init__(
        self,
        dispatch: Dispatcher,
        worker: WorkerThread,
        device: DeviceStep,
        on_hook_stop: Callable[[RunContext], None],
        cancel_grace: float,
    ) -> None:
        self._on_hook_stop = on_hook_stop
        #: Seconds a cancelled step is given to finish (the session's option).
        self.cancel_grace: float = cancel_grace
        self._dispatch = dispatch
        self._worker = worker
        self._device = device
        #: The TF session the steps run in (replaced after a recovery).
        self.session: Any = None
        #: The previous step's run context and the overlapping hooks' after_run
        #: arguments, not yet awaited.
        self._pending: tuple[RunContext, list[Any]] | None = None

    @property
    def device(self) -> DeviceStep:
        """What runs the device step."""
        return self._device

    async def run_without_hooks(
        self, fetches: Any, feed_dict: Any, options: Any, run_metadata: Any
    ) -> Any:
        """One device step and nothing else. Cancellation: as `run`."""
        completion = self._worker.submit(
            self._device.run, self.session, fetches, feed_dict, options, run_metadata
        )
        return await self._finish(completion)

    async def run(
        self, fetches: Any, feed_dict: Any, options: Any, run_metadata: Any
    ) -> Any:
        """One step with its hooks; returns the caller's results.

        Cancellation: cancelled during ``before_run``, no step runs. Cancelled
        during the device step, the step is given
        `cancel_grace` seconds, then abandoned (`_finish`); this step's
        ``after_run`` is not called. Cancelled during ``after_run``, the step ran.
        """
        dispatch = self._dispatch
        if dispatch.idle:  # no hook takes part in steps: one hand-off, nothing else
            completion = self._worker.submit(
                self._device.run,
                self.session,
                fetches,
                feed_dict,
                options,
                run_metadata,
            )
            return await self._finish(completion)
        run_context = RunContext(
            original_args=SessionRunArgs(fetches, feed_dict), session=self.session
        )
        args = (run_context, fetches, feed_dict, options, run_metadata)
        pending, self._pending = self._pending, None
        try:
            # 1-2. before_run and the device step, while the previous step's
            #      overlapping after_runs run.
            if pending is None:
                step = await self._before_and_step(*args)
            else:
                step = await self._overlapped(pending, *args)
            # 3. after_run: async hooks concurrently, with their own results;
            #    overlapping hooks' after_run waits for the next step.
            if dispatch.async_after:
                await dispatch.after_run(
                    dispatch.async_after,
                    dispatch.after_run_args(dispatch.async_after, run_context, step),
                )
            if dispatch.overlap_after:
                overlap = dispatch.overlap_after
                self._pending = (
                    run_context,
                    dispatch.after_run_args(overlap, run_context, step),
                )
        finally:
            # 4. Honour a stop request even if a later after_run raised (TF loses it).
            if run_context.stop_requested:
                self._on_hook_stop(run_context)
        return step.result

    async def _before_and_step(
        self,
        run_context: RunContext,
        fetches: Any,
        feed_dict: Any,
        options: Any,
        run_metadata: Any,
    ) -> StepOutcome:
        dispatch = self._dispatch
        # 1. before_run: async hooks concurrently, here on the loop.
        requests: list[Any] = [None] * len(dispatch.requesters)
        await dispatch.before_run(run_context, requests)
        if dispatch.sync_before or dispatch.sync_after:
            # 2. TF hooks' before_run, merge, device step and TF hooks' after_run,
            #    all in one hand-off to the worker thread.
            args = (run_context, requests, fetches, feed_dict, options, run_metadata)
            job = self._worker.submit(self._step_on_worker, self.session, *args)
        else:  # 2. Merge here; the worker runs nothing but the device step.
            merged = self._merge(requests, fetches, feed_dict, options, run_metadata)
            job = self._worker.submit(self._device_step, self.session, merged)
        step: StepOutcome = await self._finish(job)
        return step

    def _step_on_worker(
        self, sess: Any, run_context: RunContext, requests: list[Any], *run_args: Any
    ) -> StepOutcome:
        """TF hooks' before_run, the merge, the step and TF hooks' after_run.

        *run_args*: the caller's fetches, feed_dict, options and run_metadata.
        """
        dispatch = self._dispatch
        if dispatch.sync_before:
            dispatch.sync_before_run(run_context, requests)
        merged = self._merge(requests, *run_args)
        step = self._device_step(sess, merged)
        if dispatch.sync_after:
            dispatch.sync_after_run(run_context, step)
        return step

    def _merge(
        self,
        requests: list[Any],
        fetches: Any,
        feed_dict: Any,
        options: Any,
        run_metadata: Any,
    ) -> MergedRun:
        """The caller's arguments merged with the hooks' *requests*, in hook order."""
        hooks = self._dispatch.requester_hooks
        return merge(fetches, feed_dict, options, run_metadata, hooks, requests)

    def _device_step(self, sess: Any, merged: MergedRun) -> StepOutcome:
        """Run *merged* on the worker thread: what the hooks' after_run see."""
        outputs = self._device.run(
            sess, merged.fetches, merged.feed_dict, merged.options, merged.run_metadata
        )
        return merged.split(outputs, self._dispatch.wants_values)

    async def _overlapped(
        self, pending: tuple[RunContext, list[Any]], *args: Any
    ) -> StepOutcome:
        """Run this step while the previous step's overlapping after_runs run.

        Both finish before this returns (at most one after_run pending per hook).
        An error from those after_runs is raised here, after the step; a step
        error waits for them and wins. Tested in tests/test_overlap.py.
        """
        previous_context, arglists = pending
        errors: list[BaseException] = []

        async def drain() -> None:
            try:
                await self._dispatch.after_run(self._dispatch.overlap_after, arglists)
            except Exception as exc:
                errors.append(exc)

        step_error: BaseException | None = None
        result: Any = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            try:
                result = await self._before_and_step(*args)
            except Exception as exc:
                step_error = exc
        if previous_context.stop_requested:
            self._on_hook_stop(previous_context)
        if step_error is not None:
            raise step_error
        if errors:
            raise errors[0]
        return result  # type: ignore[no-any-return]

    async def drain(self) -> None:
        """Await the overlapping after_runs still pending (before hooks' end).

        Cancellation: cancels them; they are not run again.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            await self._dispatch.after_run(self._dispatch.overlap_after, pending[1])
            if pending[0].stop_requested:
                self._on_hook_stop(pending[0])

    async def _finish(self, completion: Completion) -> Any:
        """Wait for a step handed to the worker; settle it if its caller is gone."""
        try:
            await self._worker.bridge.wait(completion)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._settle_cancelled(completion)
            raise
        return completion.result()

    async def _settle_cancelled(self, completion: Completion) -> None:
        """A step's caller was cancelled: let it finish briefly, else abandon it.

        An abandoned step keeps running on the worker thread (TF cannot stop it)
        and its outcome is dropped; the next step queues behind it, and closing the
        session interrupts it (`interrupt_stuck_step`). Pinned by
        tests/test_cancellation.py.
        """
        grace = self.cancel_grace
        if await self._worker.settle(completion, grace):
            completion.error = None  # the caller is gone; its outcome is dropped
            return
        logger.warning(
            "A cancelled step is still running inside TensorFlow after %.2fs; its "
            "result is dropped and its effects are unknown. The next step waits for "
            "it; closing the session interrupts it.",
            grace,
        )

    async def interrupt_stuck_step(self, coord: Any, grace: float) -> None:
        """Close the TF session to interrupt an abandoned step, and wait for it.

        Cancellation: call it shielded; it is bounded by *grace*.
        """
        if coord is not None:
            # Stop the queue runners first, so the interrupted enqueues they see are
            # not reported as errors.
            coord.request_stop()
        logger.info("Closing the TF session to interrupt an abandoned step.")
        # Session.close() cancels the steps running in it; it does not wait. The
        # worker is held by the step, so this runs on its spare thread.
        await self._worker.free().call_within(grace, self.session.close)
        await self._worker.barrier(grace)
