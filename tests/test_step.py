"""run_step_fn with plain and async step functions, and StepContext."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import asyncsess

from .conftest import Model

pytestmark = pytest.mark.anyio


class Counting(asyncsess.SessionRunHook):
    def __init__(self) -> None:
        self.calls = 0

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        self.calls += 1


class TestRunStepFn:
    async def test_async_step_fn_runs_with_hooks(self, model: Model) -> None:
        hook = Counting()

        async def step_fn(step_context: asyncsess.StepContext) -> Any:
            raw = step_context.session.run(model.global_step)
            value = await step_context.run_with_hooks(model.inc)
            return raw, value

        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            assert await sess.run_step_fn(step_fn) == (0, 1)
        assert hook.calls == 1

    async def test_plain_step_fn_runs_off_the_loop(self, model: Model) -> None:
        hook = Counting()
        loop_thread = threading.current_thread()
        threads = []

        def step_fn(step_context: asyncsess.StepContext) -> Any:
            threads.append(threading.current_thread())
            step_context.session.run(model.inc)  # raw: no hooks
            return step_context.run_with_hooks(model.inc)

        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            assert await sess.run_step_fn(step_fn) == 2
        assert hook.calls == 1
        assert threads[0] is not loop_thread

    @pytest.mark.parametrize("kind", ["async", "plain"])
    async def test_request_stop_returns_none_and_stops(
        self, model: Model, kind: str
    ) -> None:
        async def async_fn(step_context: asyncsess.StepContext) -> Any:
            await step_context.run_with_hooks(model.inc)
            step_context.request_stop()
            return "unreachable"

        def plain_fn(step_context: asyncsess.StepContext) -> Any:
            step_context.run_with_hooks(model.inc)
            step_context.request_stop()
            return "unreachable"

        step_fn = async_fn if kind == "async" else plain_fn
        async with asyncsess.MonitoredSession() as sess:
            assert await sess.run_step_fn(step_fn) is None
            assert sess.should_stop()
            assert sess.stop_reason is not None
            assert sess.stop_reason.kind == "step_fn"

    async def test_method_step_fn(self, model: Model) -> None:
        class Trainer:
            async def step(self, step_context: asyncsess.StepContext) -> Any:
                return await step_context.run_with_hooks(model.inc)

        async with asyncsess.MonitoredSession() as sess:
            assert await sess.run_step_fn(Trainer().step) == 1

    async def test_bad_signature(self, model: Model) -> None:
        async def step_fn(ctx: Any) -> None:
            pass

        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(ValueError, match="`step_fn` may either have one"):
                await sess.run_step_fn(step_fn)

    async def test_errors_keep_their_type(self, model: Model) -> None:
        async def step_fn(step_context: asyncsess.StepContext) -> Any:
            raise LookupError("mine")

        with pytest.raises(LookupError, match="mine"):
            async with asyncsess.MonitoredSession() as sess:
                await sess.run_step_fn(step_fn)
