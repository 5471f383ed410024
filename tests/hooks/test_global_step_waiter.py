"""GlobalStepWaiterHook: waits off the loop, cancellable, ends on stop requests."""

from __future__ import annotations

import logging
import types
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import tensorflow as tf

import asyncsess
from asyncsess.hooks import GlobalStepWaiterHook, _global_step_waiter

from ..conftest import Model

if TYPE_CHECKING:
    from collections.abc import Iterator

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


class Waiting(logging.Handler):
    """Sets an event when the hook logs that it starts waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.event = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Waiting for global step"):
            self.event.set()


@pytest.fixture
def waiting() -> Iterator[Waiting]:
    handler = Waiting()
    logger = logging.getLogger("asyncsess.hooks")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


class Coord(asyncsess.SessionRunHook):
    """Hands the test the session's coordinator."""

    coord: Any = None

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self.coord = coord


def test_wait_until_step_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="Received: wait_until_step='10'"):
        GlobalStepWaiterHook("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Received: wait_until_step=None"):
        GlobalStepWaiterHook(None)  # type: ignore[arg-type]


async def test_needs_a_global_step() -> None:
    with tf.Graph().as_default():
        v1.constant(1.0)
        hook = GlobalStepWaiterHook(wait_until_step=3)
        with pytest.raises(RuntimeError, match="Global step should be created"):
            async with asyncsess.MonitoredSession(hooks=[hook]):
                pass


async def test_not_wait_for_step_zero(model: Model) -> None:
    hook = GlobalStepWaiterHook(wait_until_step=0)
    await hook.begin()

    class NoRuns:
        def run(self, *args: Any) -> Any:
            raise AssertionError("must not read the global step")

    context = asyncsess.SessionRunContext(original_args=None, session=NoRuns())
    assert await hook.before_run(context) is None


async def test_wait_for_step(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = GlobalStepWaiterHook(wait_until_step=1000)
    await hook.begin()
    value = v1.placeholder(tf.int64, shape=[])
    assign = v1.assign(model.global_step, value)
    sleeps: list[float] = []
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())

        async def fake_sleep(seconds: float) -> None:
            # As TF's test mocks time.sleep: the step moves while the hook sleeps.
            sleeps.append(seconds)
            if len(sleeps) > 2:
                raise AssertionError("before_run must end after the second sleep")
            sess.run(assign, {value: 500 if len(sleeps) == 1 else 1100})

        monkeypatch.setattr(
            _global_step_waiter, "anyio", types.SimpleNamespace(sleep=fake_sleep)
        )
        context = asyncsess.SessionRunContext(original_args=None, session=sess)
        assert await hook.before_run(context) is None
        assert sleeps == [0.5, 0.5]
        # Started: later steps do not read the step again.
        sess.run(assign, {value: 0})
        assert await hook.before_run(context) is None
        assert len(sleeps) == 2


async def test_logs_progress_every_1000_steps(
    model: Model, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncsess.hooks")
    hook = GlobalStepWaiterHook(wait_until_step=2500)
    await hook.begin()
    inc = v1.assign_add(model.global_step, 600)
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())

        async def fake_sleep(seconds: float) -> None:
            sess.run(inc)

        monkeypatch.setattr(
            _global_step_waiter, "anyio", types.SimpleNamespace(sleep=fake_sleep)
        )
        await hook.before_run(asyncsess.SessionRunContext(None, sess))
    assert [r.getMessage() for r in caplog.records] == [
        "Waiting for global step 2500 before starting training.",
        "Waiting for global step 2500 before starting training. Current step is 1200.",
        "Waiting for global step 2500 before starting training. Current step is 2400.",
    ]


async def test_waits_without_blocking_the_loop(model: Model) -> None:
    hook = GlobalStepWaiterHook(wait_until_step=3)
    hook.poll_interval = 0.001
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        raw = sess.raw_session()
        trained = anyio.Event()

        async def train() -> None:
            await sess.run(model.train_op)
            trained.set()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(train)
                # This task keeps running while the hook waits, and moves the
                # global step (as the chief would) until the waiter lets go.
                for _ in range(3):
                    assert not trained.is_set()
                    await anyio.to_thread.run_sync(raw.run, model.inc)
                await trained.wait()
        assert await sess.run_without_hooks(model.global_step) == 4
        # Started: the next steps do not wait.
        with anyio.fail_after(30):
            await sess.run(model.train_op)


async def test_wait_is_cancellable(model: Model, waiting: Waiting) -> None:
    hook = GlobalStepWaiterHook(wait_until_step=5)
    hook.poll_interval = 3600  # only a cancellation can end this wait
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sess.run, model.train_op)
                await waiting.event.wait()
                tg.cancel_scope.cancel()
        # No step ran; the session is usable and the next run waits again.
        assert await sess.run_without_hooks(model.global_step) == 0
        hook.poll_interval = 0.001
        for _ in range(5):
            await sess.run_without_hooks(model.inc)
        with anyio.fail_after(30):
            await sess.run(model.train_op)
        assert await sess.run_without_hooks(model.global_step) == 6


async def test_stop_request_ends_the_wait(model: Model, waiting: Waiting) -> None:
    hook, probe = GlobalStepWaiterHook(wait_until_step=100), Coord()
    hook.poll_interval = 0.001
    async with asyncsess.MonitoredSession(hooks=[hook, probe]) as sess:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sess.run, model.train_op)
                await waiting.event.wait()
                probe.coord.request_stop()
        assert sess.should_stop()
