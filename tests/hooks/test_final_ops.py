"""FinalOpsHook: values at end, feeds, TensorFlow's input-source warning, off-loop."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import tensorflow as tf

import asyncsess
from asyncsess.hooks import FinalOpsHook

from ..conftest import Model

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


async def test_final_ops_is_scalar_tensor() -> None:
    with tf.Graph().as_default() as g:
        hook = FinalOpsHook(tf.constant(4))
        await hook.begin()
        with v1.Session(graph=g) as session:
            assert hook.final_ops_values is None
            await hook.end(session)
    assert hook.final_ops_values == 4


async def test_final_ops_is_tensor() -> None:
    expected = [1, 6, 3, 5, 2, 4]
    with tf.Graph().as_default() as g:
        hook = FinalOpsHook(tf.constant(expected))
        with v1.Session(graph=g) as session:
            await hook.end(session)
    assert hook.final_ops_values.tolist() == expected


async def test_final_ops_with_feed_dict() -> None:
    with tf.Graph().as_default() as g:
        final_ops = v1.placeholder(dtype=tf.float32)
        hook = FinalOpsHook(final_ops, {final_ops: [4, -3]})
        with v1.Session(graph=g) as session:
            await hook.end(session)
    assert hook.final_ops_values.tolist() == [4, -3]


async def test_final_ops_with_dictionary_in_a_session(model: Model) -> None:
    hook = FinalOpsHook({"step": model.global_step, "w": model.w})
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        for _ in range(3):
            await sess.run(model.train_op)
        assert hook.final_ops_values is None
    assert hook.final_ops_values["step"] == 3
    assert hook.final_ops_values["w"] == pytest.approx(1.0 + 0.4 + 0.32 + 0.256)


async def test_none_runs_nothing() -> None:
    hook = FinalOpsHook(None)
    await hook.end(object())
    assert hook.final_ops_values is None


async def test_final_ops_triggers_out_of_range_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncsess.hooks")
    with tf.Graph().as_default():
        dataset = tf.data.Dataset.range(1)
        read_ops = v1.data.make_one_shot_iterator(dataset).get_next()
        hook = FinalOpsHook(read_ops)
        with pytest.raises(tf.errors.OutOfRangeError, match="End of sequence"):
            async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
                await sess.run(read_ops)
    [record] = [r for r in caplog.records if r.name == "asyncsess.hooks"]
    assert record.levelno == logging.WARNING
    assert "dependency back to some input source" in record.getMessage()


async def test_end_runs_off_the_event_loop() -> None:
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []

    class Session:
        def run(self, fetches: Any, feed_dict: Any = None) -> Any:
            threads.append(threading.current_thread())
            return fetches

    hook = FinalOpsHook("value")
    await hook.end(Session())
    assert hook.final_ops_values == "value"
    assert threads
    assert threads[0] is not loop_thread


async def test_same_values_as_tensorflow() -> None:
    def build() -> tuple[Any, Any]:
        v = v1.get_variable("v", initializer=2.0)
        return v1.assign(v, v * 3.0), {"v": v, "twice": v * 2.0}

    with tf.Graph().as_default():
        train_op, ops = build()
        tf_hook = v1.train.FinalOpsHook(ops)
        with v1.train.MonitoredSession(hooks=[tf_hook]) as tf_sess:
            tf_sess.run(train_op)
    with tf.Graph().as_default():
        train_op, ops = build()
        hook = FinalOpsHook(ops)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(train_op)
    assert (
        hook.final_ops_values == tf_hook.final_ops_values == {"v": 6.0, "twice": 12.0}
    )
