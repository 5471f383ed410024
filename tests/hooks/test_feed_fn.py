"""FeedFnHook: plain and async feed functions, every step, TensorFlow's clash rules."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import tensorflow as tf

import asyncsess
from asyncsess.hooks import FeedFnHook

from ..conftest import Model

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


def test_feed_fn_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"Received: feed_fn=\{\}"):
        FeedFnHook({})  # type: ignore[arg-type]


async def test_feeding_placeholder() -> None:
    with tf.Graph().as_default():
        x = v1.placeholder(dtype=tf.float32)
        y = x + 1
        hook = FeedFnHook(feed_fn=lambda: {x: 1.0})
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            assert await sess.run(y) == 2
        tf_hook = v1.train.FeedFnHook(feed_fn=lambda: {x: 1.0})
        with v1.train.MonitoredSession(hooks=[tf_hook]) as tf_sess:
            assert tf_sess.run(y) == 2


async def test_async_feed_fn_is_awaited_each_step(model: Model) -> None:
    send, receive = anyio.create_memory_object_stream[float](10)
    for value in (1.0, 2.0, 5.0):
        send.send_nowait(value)

    async def feed_fn() -> dict[Any, float]:
        return {model.x: await receive.receive()}

    hook = FeedFnHook(feed_fn)
    assert hook.feed_fn is feed_fn
    async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
        assert [await sess.run(model.y) for _ in range(3)] == [1.0, 2.0, 5.0]
    send.close()
    receive.close()


async def test_callable_returning_an_awaitable(model: Model) -> None:
    class Feeder:
        def __call__(self) -> Any:
            async def feed() -> dict[Any, float]:
                await anyio.lowlevel.checkpoint()
                return {model.x: 4.0}

            return feed()

    async with asyncsess.MonitoredSession(hooks=[FeedFnHook(Feeder())]) as sess:
        assert await sess.run(model.y) == 4.0


async def test_called_for_run_with_hooks_in_step_fn(model: Model) -> None:
    calls: list[int] = []

    def feed_fn() -> dict[Any, float]:
        calls.append(1)
        return {model.x: 3.0}

    async def step_fn(step_context: Any) -> Any:
        return await step_context.run_with_hooks(model.y)

    async with asyncsess.MonitoredSession(hooks=[FeedFnHook(feed_fn)]) as sess:
        assert await sess.run_step_fn(step_fn) == 3.0
        assert await sess.run_without_hooks(model.y, feed_dict={model.x: 7.0}) == 7.0
    assert calls == [1]


async def test_feeding_what_the_caller_feeds_raises(model: Model) -> None:
    hook = FeedFnHook(lambda: {model.x: 1.0})
    with pytest.raises(RuntimeError, match="Same tensor is fed by a SessionRunHook"):
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(model.y, feed_dict={model.x: 2.0})


async def test_two_feeders_of_one_tensor_raise(model: Model) -> None:
    hooks = [FeedFnHook(lambda: {model.x: 1.0}), FeedFnHook(lambda: {model.x: 2.0})]
    with pytest.raises(RuntimeError, match="Same tensor is fed by two hooks"):
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            await sess.run(model.y)
