"""Hooks with overlap_after_run: after_run of step k runs while step k+1 proceeds."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import tensorflow as tf

import asyncsess

from .conftest import Model

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


class Overlapping(asyncsess.SessionRunHook):
    overlap_after_run = True

    def __init__(self, model: Model) -> None:
        self.model = model
        self.seen: list[int] = []
        self.events: list[str] = []

    async def before_run(self, run_context: Any) -> Any:
        return asyncsess.SessionRunArgs(self.model.global_step)

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        await anyio.sleep(0.001)
        self.seen.append(int(run_values.results))
        self.events.append(f"after_run {run_values.results}")

    async def end(self, session: Any) -> None:
        self.events.append("end")


class TestOverlap:
    async def test_after_runs_stay_in_order_and_end_waits(self, model: Model) -> None:
        hook = Overlapping(model)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(5):
                await sess.run(model.inc)
            # step 5's after_run is still pending: at most one per hook.
            assert hook.seen == [0, 1, 2, 3]
        assert hook.seen == [0, 1, 2, 3, 4]
        assert hook.events[-1] == "end"

    async def test_after_run_overlaps_the_next_device_step(self, model: Model) -> None:
        with model.graph.as_default():
            queue = v1.FIFOQueue(1, tf.float32)
            dequeue = queue.dequeue()
            enqueue = queue.enqueue(1.0)

        class Feeder(asyncsess.SessionRunHook):
            overlap_after_run = True

            async def after_run(self, run_context: Any, run_values: Any) -> None:
                # The next step blocks on the dequeue until this enqueue runs: it
                # can only finish if this after_run runs during that step.
                raw = run_context.session
                await anyio.to_thread.run_sync(raw.run, enqueue)

        async with asyncsess.MonitoredSession(hooks=[Feeder()]) as sess:
            with anyio.fail_after(20):
                await sess.run(model.inc)
                assert await sess.run(dequeue) == 1.0
                assert await sess.run(dequeue) == 1.0

    async def test_errors_surface_from_the_next_run(self, model: Model) -> None:
        class Failing(asyncsess.SessionRunHook):
            overlap_after_run = True

            async def after_run(self, run_context: Any, run_values: Any) -> None:
                raise KeyError("late failure")

        sess = asyncsess.MonitoredSession(hooks=[Failing()])
        with pytest.raises(KeyError, match="late failure"):
            async with sess:
                assert await sess.run(model.inc) == 1
                await sess.run(model.inc)

    async def test_stop_is_honoured_after_the_step_in_flight(
        self, model: Model
    ) -> None:
        class Stopper(asyncsess.SessionRunHook):
            overlap_after_run = True

            async def after_run(self, run_context: Any, run_values: Any) -> None:
                run_context.request_stop()

        async with asyncsess.MonitoredSession(hooks=[Stopper()]) as sess:
            await sess.run(model.inc)
            assert not sess.should_stop()
            await sess.run(model.inc)
            assert sess.should_stop()
            assert sess.stop_reason is not None
            assert "Stopper" in str(sess.stop_reason)
