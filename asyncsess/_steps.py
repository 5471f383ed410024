"""The per-step path of `MonitoredSession.run`: hooks, one hand-off, cancellation.

A mixin of `MonitoredSession` (``_session.py`` owns the lifecycle, this module the
step): before_run, the device step on the worker thread, after_run, overlapped
after_runs, and what happens to a step whose caller is cancelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ._runargs import MergedRun, merge
from ._stop import RunContext
from ._tf import RunMetadata, RunOptions, SessionRunArgs

if TYPE_CHECKING:
    from ._backend import Completion, LoopBridge
    from ._dispatch import Dispatcher
    from ._run_cache import RunCache
    from ._worker import WorkerThread

logger = logging.getLogger("asyncsess")


@dataclass(slots=True)  # not frozen: built every step, frozen init costs 2x
class StepOutcome:
    """One device step's outputs, as the hooks' after_run need them."""

    result: Any
    outputs: Any
    slots: tuple[int | None, ...]
    options: Any
    run_metadata: Any


class StepPath:
    """`MonitoredSession`'s device-step methods (a mixin; state lives there)."""

    _dispatch: Dispatcher
    _worker: WorkerThread | None
    _bridge: LoopBridge | None
    _tf_sess: Any
    _coord: Any
    _run_cache: RunCache
    _pending: tuple[Any, list[Any]] | None
    step_cancel_grace: float

    if TYPE_CHECKING:

        def _note_hook_stop(self, run_context: Any) -> None: ...

        async def _wait_bounded(self, completion: Completion) -> None: ...

    async def _plain_run(
        self, fetches: Any, feed_dict: Any, options: Any, meta: Any
    ) -> Any:
        assert self._worker is not None
        completion = self._worker.submit(
            self._run_cache.run, self._tf_sess, fetches, feed_dict, options, meta
        )
        return await self._await_step(completion)

    async def _hooked_run(
        self, fetches: Any, feed_dict: Any, options: Any, run_metadata: Any
    ) -> Any:
        dispatch, worker, sess = self._dispatch, self._worker, self._tf_sess
        assert worker is not None
        if dispatch.idle:  # no hook takes part in steps: one hand-off, nothing else
            completion = worker.submit(
                self._run_cache.run, sess, fetches, feed_dict, options, run_metadata
            )
            return await self._await_step(completion)
        run_context = RunContext(
            original_args=SessionRunArgs(fetches, feed_dict), session=sess
        )
        args = (run_context, fetches, feed_dict, options, run_metadata)
        pending, self._pending = self._pending, None
        try:
            if pending is None:
                step = await self._before_and_step(*args)
            else:  # the previous step's overlapping after_runs run meanwhile
                step = await self._overlapped(pending, self._before_and_step, *args)
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
            # Honour a stop request even if a later after_run raised (TF loses it).
            if run_context.stop_requested:
                self._note_hook_stop(run_context)
        return step.result

    async def _before_and_step(
        self,
        run_context: Any,
        fetches: Any,
        feed_dict: Any,
        options: Any,
        run_metadata: Any,
    ) -> StepOutcome:
        # 1. before_run: async hooks concurrently, here on the loop.
        requests: list[Any] = [None] * len(self._dispatch.requesters)
        await self._dispatch.before_run(run_context, requests)
        dispatch, worker = self._dispatch, self._worker
        assert worker is not None
        if dispatch.sync_before or dispatch.sync_after:
            # 2. TF hooks' before_run, merge, device step and TF hooks' after_run,
            #    all in one hand-off to the worker thread.
            args = (run_context, requests, fetches, feed_dict, options, run_metadata)
            job = worker.submit(self._step_on_worker, self._tf_sess, *args)
        else:  # 2. Merge here; the worker runs nothing but the device step.
            merged = self._merge(requests, fetches, feed_dict, options, run_metadata)
            job = worker.submit(self._device_step, self._tf_sess, merged)
        step: StepOutcome = await self._await_step(job)
        return step

    async def _overlapped(self, pending: Any, step_fn: Any, *args: Any) -> Any:
        """Run *step_fn* while the previous step's overlapping after_runs run.

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
                result = await step_fn(*args)
            except Exception as exc:
                step_error = exc
        if previous_context.stop_requested:
            self._note_hook_stop(previous_context)
        if step_error is not None:
            raise step_error
        if errors:
            raise errors[0]
        return result

    async def _drain_pending(self) -> None:
        """Await the overlapping after_runs still pending (before hooks' end)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await self._dispatch.after_run(self._dispatch.overlap_after, pending[1])
            if pending[0].stop_requested:
                self._note_hook_stop(pending[0])

    def _step_on_worker(
        self,
        sess: Any,
        run_context: Any,
        requests: list[Any],
        fetches: Any,
        feed_dict: Any,
        options: Any,
        run_metadata: Any,
    ) -> StepOutcome:
        dispatch = self._dispatch
        if dispatch.sync_before:
            dispatch.sync_before_run(run_context, requests)
        merged = self._merge(requests, fetches, feed_dict, options, run_metadata)
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
        hooks = self._dispatch.requester_hooks
        return merge(fetches, feed_dict, options, run_metadata, hooks, requests)

    def _device_step(self, sess: Any, merged: MergedRun) -> StepOutcome:
        """Run *merged* on the worker thread: what the hooks' after_run see."""
        outputs = self._run_cache.run(
            sess,
            merged.fetches,
            merged.feed_dict,
            merged.options,
            merged.run_metadata,
        )
        return self._outcome(merged, outputs)

    def _outcome(self, merged: MergedRun, outputs: Any) -> StepOutcome:
        options, run_metadata = merged.options, merged.run_metadata
        if self._dispatch.wants_values:
            # Hooks' SessionRunValues carry a RunOptions and a RunMetadata even when
            # the step had none, as in TensorFlow; built only when an after_run runs.
            options = RunOptions() if options is None else options
            run_metadata = RunMetadata() if run_metadata is None else run_metadata
        return StepOutcome(
            result=outputs[0] if merged.wrapped else outputs,
            outputs=outputs,
            slots=merged.slots,
            options=options,
            run_metadata=run_metadata,
        )

    async def _await_step(self, completion: Completion) -> Any:
        bridge = self._bridge
        assert bridge is not None
        try:
            await bridge.wait(completion)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._settle_cancelled_step(completion)
            raise
        return completion.result()

    async def _settle_cancelled_step(self, completion: Completion) -> None:
        """A step's caller was cancelled: let it finish briefly, else abandon it.

        An abandoned step keeps running on the worker thread (TF cannot stop it)
        and its outcome is dropped; the next step queues behind it, and closing the
        session interrupts it. Pinned by tests/test_cancellation.py.
        """
        bridge, worker = self._bridge, self._worker
        assert bridge is not None
        assert worker is not None
        with anyio.move_on_after(self.step_cancel_grace):
            await bridge.wait(completion)
        if completion.done:
            completion.error = None  # the caller is gone; its outcome is dropped
            return
        worker.abandon(completion)
        logger.warning(
            "A cancelled step is still running inside TensorFlow after %.2fs; its "
            "result is dropped and its effects are unknown. The next step waits for "
            "it; closing the session interrupts it.",
            self.step_cancel_grace,
        )

    async def _interrupt_stuck_step(self, sess: Any) -> None:
        """Close the TF session to interrupt an abandoned step, and wait for it."""
        worker = self._worker
        assert worker is not None
        if self._coord is not None:
            # Stop the queue runners first, so the interrupted enqueues they see are
            # not reported as errors.
            self._coord.request_stop()
        logger.info("Closing the TF session to interrupt an abandoned step.")
        # Session.close() cancels the steps running in it; it does not wait.
        await anyio.to_thread.run_sync(sess.close, abandon_on_cancel=True)
        # A no-op job runs once the abandoned one has returned.
        await self._wait_bounded(worker.submit(_nothing))


def _nothing() -> None:
    """A no-op job: its completion marks that earlier jobs have returned."""
