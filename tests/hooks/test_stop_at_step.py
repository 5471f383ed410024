"""StopAtStepHook: TensorFlow's trigger rules, validation and parity with TF's hook."""

from __future__ import annotations

from typing import Any

import pytest
import tensorflow as tf

import asyncsess
from asyncsess.hooks import StopAtStepHook, _stop_at_step

from ..conftest import Model

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


class StepSetter:
    """Sets the global step from outside the hooks (ops built before finalizing)."""

    def __init__(self, model: Model) -> None:
        self.value = v1.placeholder(tf.int64, shape=[])
        self.op = v1.assign(model.global_step, self.value)

    async def __call__(self, sess: Any, step: int) -> None:
        await sess.run_without_hooks(self.op, feed_dict={self.value: step})


def scaffold_starting_at(model: Model, step: int) -> Any:
    """A Scaffold whose init_fn sets the global step, as a restore would."""
    with model.graph.as_default():
        assign = v1.assign(model.global_step, step)
    return v1.train.Scaffold(init_fn=lambda _scaffold, sess: sess.run(assign))


class TestArguments:
    def test_neither(self) -> None:
        with pytest.raises(ValueError, match="One of num_steps or last_step"):
            StopAtStepHook()

    def test_both(self) -> None:
        with pytest.raises(
            ValueError, match=r"Only one of .*Received: num_steps=10, last_step=20"
        ):
            StopAtStepHook(num_steps=10, last_step=20)

    def test_negative(self) -> None:
        with pytest.raises(ValueError, match="Received: num_steps=-1"):
            StopAtStepHook(num_steps=-1)
        with pytest.raises(ValueError, match="Received: last_step=-5"):
            StopAtStepHook(last_step=-5)

    def test_not_a_number(self) -> None:
        with pytest.raises(TypeError, match="Received: last_step='10'"):
            StopAtStepHook(last_step="10")  # type: ignore[arg-type]

    def test_tf_raises_the_same_types(self) -> None:
        with pytest.raises(ValueError, match="One of num_steps or last_step"):
            v1.train.StopAtStepHook()
        with pytest.raises(ValueError, match="Only one of num_steps or last_step"):
            v1.train.StopAtStepHook(num_steps=10, last_step=20)


async def test_needs_a_global_step() -> None:
    with tf.Graph().as_default():
        v1.constant(1.0)
        hook = StopAtStepHook(last_step=3)
        with pytest.raises(RuntimeError, match="Global step should be created"):
            async with asyncsess.MonitoredSession(hooks=[hook]):
                pass


async def test_stop_based_on_last_step(model: Model) -> None:
    hook = StopAtStepHook(last_step=10)
    no_op = tf.no_op()
    set_step = StepSetter(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
        for step, stops in ((5, False), (9, False), (10, True)):
            await set_step(sess, step)
            await sess.run(no_op)
            assert sess.should_stop() is stops, step
        # TF's test resets the stop flag: past the last step it stops again.
        await set_step(sess, 11)
        context = asyncsess.SessionRunContext(None, sess.raw_session())
        values = asyncsess.SessionRunValues(results=11, options=None, run_metadata=None)
        await hook.after_run(context, values)
        assert context.stop_requested
    assert sess.stop_reason is not None
    assert sess.stop_reason.source == "StopAtStepHook"


async def test_stop_based_on_num_steps_counts_from_the_start(model: Model) -> None:
    hook = StopAtStepHook(num_steps=10)
    scaffold = scaffold_starting_at(model, 5)
    no_op = tf.no_op()
    set_step = StepSetter(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook], scaffold=scaffold) as s:
        await s.run(no_op)
        assert not s.should_stop()
        for step, stops in ((13, False), (14, False), (15, True)):
            await set_step(s, step)
            await s.run(no_op)
            assert s.should_stop() is stops, step


async def test_stop_based_with_multiple_steps(model: Model) -> None:
    hook = StopAtStepHook(num_steps=10)
    scaffold = scaffold_starting_at(model, 5)
    no_op = tf.no_op()
    set_step = StepSetter(model)
    async with asyncsess.SingularMonitoredSession(hooks=[hook], scaffold=scaffold) as s:
        await s.run(no_op)
        assert not s.should_stop()
        await set_step(s, 15)
        await s.run(no_op)
        assert s.should_stop()


async def test_reads_the_step_only_when_it_may_be_the_last(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    real = asyncsess.run_in_session_thread

    async def counting(fn: Any, *args: Any) -> Any:
        value = await real(fn, *args)
        reads.append(int(value))
        return value

    monkeypatch.setattr(_stop_at_step, "run_in_session_thread", counting)
    hook = StopAtStepHook(num_steps=20)
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        assert reads == [0]  # after_create_session: the starting step
        while not sess.should_stop():
            await sess.run(model.train_op)
    # The early steps were decided from the step fetched with them; only the last
    # one or two (the fetched read may land before or after the increment, as in
    # TensorFlow) re-read it.
    assert reads[0] == 0
    assert reads[-1] == 20
    assert 2 <= len(reads) <= 3
    assert all(step >= 19 for step in reads[1:])


def run_tf(kwargs: dict[str, int], start: int) -> tuple[int, int]:
    """(runs, final global step) under TensorFlow's MonitoredSession and hook."""
    with Model() as m:
        final = v1.train.FinalOpsHook(m.global_step)
        hooks = [v1.train.StopAtStepHook(**kwargs), final]
        creator = v1.train.ChiefSessionCreator(scaffold=scaffold_starting_at(m, start))
        runs = 0
        with v1.train.MonitoredSession(creator, hooks=hooks) as sess:
            while not sess.should_stop():
                sess.run(m.train_op)
                runs += 1
        return runs, int(final.final_ops_values)


async def run_ours(kwargs: dict[str, int], start: int) -> tuple[int, int]:
    with Model() as m:
        final = v1.train.FinalOpsHook(m.global_step)
        hooks = [StopAtStepHook(**kwargs), final]
        creator = asyncsess.ChiefSessionCreator(scaffold=scaffold_starting_at(m, start))
        runs = 0
        async with asyncsess.MonitoredSession(creator, hooks=hooks) as sess:
            while not sess.should_stop():
                await sess.run(m.train_op)
                runs += 1
        return runs, int(final.final_ops_values)


@pytest.mark.parametrize(
    "kwargs",
    [{"last_step": 7}, {"num_steps": 3}, {"num_steps": 0}, {"last_step": 2}],
    ids=str,
)
@pytest.mark.parametrize("start", [0, 4])
async def test_stops_where_tensorflow_stops(kwargs: dict[str, int], start: int) -> None:
    assert await run_ours(kwargs, start) == run_tf(kwargs, start)
