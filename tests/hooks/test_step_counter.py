"""StepCounterHook: TensorFlow's triggers, tag and warnings; flushing on errors."""

from __future__ import annotations

import glob
import logging
import os
from typing import TYPE_CHECKING, Any

import pytest
import tensorflow as tf
from tensorflow.python.training import basic_session_run_hooks

import asyncsess
from asyncsess._tf import global_step_read
from asyncsess.hooks import StepCounterHook

from .test_summary_saver import FakeTime, FakeWriter

if TYPE_CHECKING:
    from pathlib import Path

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime(1484695987.209386)
    monkeypatch.setattr(basic_session_run_hooks, "time", clock)
    return clock


def counting_graph(increment: int) -> Any:
    """A default graph whose train op adds *increment* to the global step.

    The increment waits for the global-step read the hooks fetch (as
    tf.estimator's train ops do), so the fetched value is deterministically the
    step before the run; otherwise the read races the increment.
    """
    step = v1.train.get_or_create_global_step()
    with tf.control_dependencies([global_step_read()]):
        return v1.assign_add(step, increment)


async def run_steps(
    hooks: list[Any], train_op: Any, runs: list[float], clock: Any
) -> None:
    """One run per entry of *runs*, advancing the clock by it first."""
    async with asyncsess.SingularMonitoredSession(hooks=hooks) as sess:
        for advance in runs:
            clock.now += advance
            await sess.run(train_op)


class TestArguments:
    def test_both(self) -> None:
        with pytest.raises(
            ValueError, match="Received: every_n_steps=100, every_n_secs=5"
        ):
            StepCounterHook(every_n_secs=5)

    def test_neither(self) -> None:
        with pytest.raises(ValueError, match="exactly one of every_n_steps"):
            StepCounterHook(every_n_steps=None)

    def test_negative(self) -> None:
        with pytest.raises(ValueError, match="Received: every_n_steps=-1"):
            StepCounterHook(every_n_steps=-1)

    def test_tf_raises_the_same_type(self) -> None:
        with pytest.raises(ValueError, match="exactly one of every_n_steps"):
            v1.train.StepCounterHook(every_n_secs=5)


async def test_every_n_steps(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    with tf.Graph().as_default():
        writer = FakeWriter()
        hook = StepCounterHook(summary_writer=writer, every_n_steps=10)
        await run_steps([hook], counting_graph(1), [0.01] * 30, fake_time)
    assert sorted(writer.summaries) == [11, 21]
    for values in writer.summaries.values():
        assert list(values) == ["global_step/sec"]
        assert values["global_step/sec"] > 0
    assert "has not been increased" not in caplog.text
    assert writer.flushes == 1


async def test_every_n_secs(fake_time: FakeTime) -> None:
    with tf.Graph().as_default():
        writer = FakeWriter()
        hook = StepCounterHook(
            summary_writer=writer, every_n_steps=None, every_n_secs=0.1
        )
        await run_steps([hook], counting_graph(1), [0.0, 0.2, 0.2], fake_time)
    assert sorted(writer.summaries) == [2, 3]


async def test_global_step_name(fake_time: FakeTime) -> None:
    with tf.Graph().as_default():
        with v1.variable_scope("bar"):
            v1.get_variable(
                "foo",
                initializer=0,
                trainable=False,
                collections=[v1.GraphKeys.GLOBAL_STEP, v1.GraphKeys.GLOBAL_VARIABLES],
            )
        train_op = v1.assign_add(v1.train.get_global_step(), 1)
        writer = FakeWriter()
        hook = StepCounterHook(summary_writer=writer, every_n_steps=1)
        await run_steps([hook], train_op, [0.01, 0.01], fake_time)
    assert list(writer.summaries) == [2]
    assert list(writer.summaries[2]) == ["bar/foo/sec"]


async def test_warns_if_global_step_not_increased(
    fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    with tf.Graph().as_default(), caplog.at_level(logging.WARNING, "asyncsess.hooks"):
        hook = StepCounterHook(every_n_steps=1)
        await run_steps([hook], counting_graph(0), [0.01] * 10, fake_time)
    warnings = [r for r in caplog.records if "has not been increased" in r.message]
    assert len(warnings) == 5  # TF's log_first_n(..., 5)


@pytest.mark.parametrize(
    ("every_n_steps", "increment", "expected"),
    [(10, 5, [15, 25]), (5, 5, [10, 15, 20, 25]), (5, 10, [20, 30, 40, 50])],
)
async def test_several_steps_per_run(
    fake_time: FakeTime, every_n_steps: int, increment: int, expected: list[int]
) -> None:
    # TF's test_steps_per_run_*: the same summary steps, without telling the
    # hook how many steps a run makes.
    with tf.Graph().as_default():
        writer = FakeWriter()
        hook = StepCounterHook(summary_writer=writer, every_n_steps=every_n_steps)
        await run_steps([hook], counting_graph(increment), [0.01] * 5, fake_time)
    assert sorted(writer.summaries) == expected


def tags_and_steps(directory: Path) -> list[tuple[str, int]]:
    return [
        (value.tag, event.step)
        for path in sorted(glob.glob(os.path.join(str(directory), "events.out.*")))
        for event in v1.train.summary_iterator(path)
        for value in event.summary.value
    ]


class Boom(Exception):
    pass


async def test_flushes_when_an_error_ends_the_session(
    fake_time: FakeTime, tmp_path: Path
) -> None:
    with tf.Graph().as_default():
        train_op = counting_graph(1)
        hook = StepCounterHook(every_n_steps=1, output_dir=str(tmp_path))
        with pytest.raises(Boom):
            async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
                for _ in range(3):
                    fake_time.now += 0.5
                    await sess.run(train_op)
                raise Boom
    assert tags_and_steps(tmp_path) == [("global_step/sec", 2), ("global_step/sec", 3)]
