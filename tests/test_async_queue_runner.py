"""AsyncQueueRunner: feeding TF queues from async sources, backpressure, stop."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest
import tensorflow as tf

import asyncsess

from .test_queues import AbortOnce, EndRecorder, assert_no_runner_threads

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


class SourceError(Exception):
    """Raised by a test source."""


async def numbers(count: int) -> AsyncIterator[float]:
    for i in range(count):
        yield float(i)


async def drain(sess: Any, fetch: Any, seen: list[Any] | None = None) -> None:
    """Run *fetch* until the session stops, appending the results to *seen*."""
    while not sess.should_stop():
        result = await sess.run(fetch)
        if seen is not None:
            seen.append(result)


class Counter:
    """An endless source that counts its pulls and can block before one."""

    def __init__(self, target: int = 0) -> None:
        self.pulled = 0
        self.closed = False
        self.gate: anyio.Event | None = None  # when set, pull waits for it
        self.target = target
        self.reached = anyio.Event()  # set once `target` items were pulled

    async def __call__(self) -> AsyncIterator[float]:
        try:
            while True:
                if self.gate is not None:
                    await self.gate.wait()
                self.pulled += 1
                if self.pulled >= self.target:
                    self.reached.set()
                yield float(self.pulled)
        finally:
            self.closed = True

    async def wait_for(self, target: int) -> None:
        """Wait until *target* items were pulled, then until every task blocks."""
        self.target = target
        if self.pulled < target:
            self.reached = anyio.Event()
            await self.reached.wait()
        await anyio.wait_all_tasks_blocked()


class TestFeeding:
    async def test_items_arrive_in_order_and_end_cleanly(self) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(3, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, numbers(10))
            dequeue = queue.dequeue()
            hook = EndRecorder()
            seen: list[Any] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
                    await drain(sess, dequeue, seen)
            assert seen == [float(i) for i in range(10)]
            assert hook.ended
        assert_no_runner_threads()

    async def test_enqueue_many_and_dequeue_many(self) -> None:
        async def batches() -> AsyncIterator[tuple[Any, Any]]:
            for i in range(3):
                x = np.full((4, 2), i, np.float32)
                yield x, np.arange(4, dtype=np.int64) + 4 * i

        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(8, [tf.float32, tf.int64], shapes=[[2], []])
            asyncsess.AsyncQueueRunner(queue, batches, enqueue_many=True)
            dequeue = queue.dequeue_many(6)
            seen: list[Any] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession() as sess:
                    await drain(sess, dequeue, seen)
        # 12 elements: two batches of 6, then end of input.
        assert [labels.tolist() for _, labels in seen] == [
            list(range(6)),
            list(range(6, 12)),
        ]

    async def test_dict_items_for_a_named_queue(self) -> None:
        async def rows() -> AsyncIterator[dict[str, Any]]:
            yield {"x": [1.0, 2.0], "y": 1}
            yield {"y": 0, "x": [3.0, 4.0]}

        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(
                4, [tf.float32, tf.int32], shapes=[[2], []], names=["x", "y"]
            )
            asyncsess.AsyncQueueRunner(queue, rows)
            dequeue = queue.dequeue()
            seen: list[Any] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession() as sess:
                    await drain(sess, dequeue, seen)
        assert [(r["x"].tolist(), int(r["y"])) for r in seen] == [
            ([1.0, 2.0], 1),
            ([3.0, 4.0], 0),
        ]

    @pytest.mark.parametrize("kind", ["padding", "shuffle", "priority"])
    async def test_queue_kinds(self, kind: str) -> None:
        async def source() -> AsyncIterator[Any]:
            for i in range(4):
                if kind == "padding":
                    yield [1] * (i + 1)  # a bare value: one component
                elif kind == "priority":
                    yield 4 - i, np.int32(i)
                else:
                    yield (np.int32(i),)  # a 1-tuple is the component

        with tf.Graph().as_default():
            if kind == "padding":
                queue = tf.queue.PaddingFIFOQueue(4, [tf.int32], shapes=[[None]])
            elif kind == "shuffle":
                queue = tf.queue.RandomShuffleQueue(4, 0, [tf.int32], shapes=[[]])
            else:
                queue = tf.queue.PriorityQueue(4, [tf.int32], shapes=[[]])
            asyncsess.AsyncQueueRunner(queue, source)
            dequeue = queue.dequeue_up_to(4)
            seen: list[Any] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession() as sess:
                    await drain(sess, dequeue, seen)
        if kind == "padding":
            assert [len(row) for row in seen[0]] == [4, 4, 4, 4]  # padded
            assert seen[0].sum() == 10
        elif kind == "priority":
            (priorities, values) = seen[0]
            assert sorted(values.tolist()) == [0, 1, 2, 3]
            assert priorities.tolist() == sorted(priorities.tolist())
        else:
            assert sorted(np.concatenate(seen).tolist()) == [0, 1, 2, 3]

    async def test_a_source_slower_than_the_device(self) -> None:
        async def slow() -> AsyncIterator[float]:
            for i in range(5):
                await anyio.sleep(0.01)  # the consumer's dequeue waits meanwhile
                yield float(i)

        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, slow)
            dequeue = queue.dequeue()
            seen: list[Any] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession() as sess:
                    await drain(sess, dequeue, seen)
        assert seen == [0.0, 1.0, 2.0, 3.0, 4.0]

    async def test_a_consumer_slower_than_the_source_bounds_pulls(self) -> None:
        capacity, taken = 4, 0
        source = Counter()
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(capacity, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, source)
            dequeue = queue.dequeue()
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(stop_grace_period_secs=10) as s:
                    for _ in range(3):
                        # The queue is full, one more item waits in a blocked
                        # enqueue and one (the look-ahead) waits for that enqueue:
                        # the source is suspended until a dequeue.
                        await source.wait_for(capacity + taken + 2)
                        assert source.pulled == capacity + taken + 2
                        assert await s.run(dequeue) == taken + 1
                        taken += 1
            assert source.closed
        assert source.pulled <= capacity + taken + 2
        assert_no_runner_threads()


class TestErrors:
    async def test_a_source_error_surfaces_from_run_with_its_type(self) -> None:
        async def failing() -> AsyncIterator[float]:
            yield 1.0
            raise SourceError("the feed broke")

        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, failing)
            dequeue = queue.dequeue()
            hook = EndRecorder()
            seen: list[float] = []
            with anyio.fail_after(30), pytest.raises(SourceError, match="broke"):
                async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
                    while not sess.should_stop():
                        seen.append(await sess.run(dequeue))
            # An error, not end of input. Either the dequeue found the queue
            # closed and run() raised the error the coordinator held, or, as in
            # TensorFlow, should_stop() turned True first, the block ended, the
            # hooks' end ran and close raised that error.
            assert sess.stop_reason is not None
            assert sess.stop_reason.kind in ("error", "coordinator")
            assert hook.ended == (sess.stop_reason.kind == "coordinator")
        assert_no_runner_threads()

    @pytest.mark.parametrize(
        ("item", "error", "match"),
        [
            ((1.0, 2.0, 3.0), ValueError, "item 2: component 0 has shape \\(3,\\)"),
            ("abc", TypeError, "item 2: component 0 has dtype <U3"),
            ({"a": 1.0}, TypeError, "item 2 is a dict"),
        ],
    )
    async def test_a_bad_item_names_the_runner_and_its_index(
        self, item: Any, error: type[Exception], match: str
    ) -> None:
        async def source() -> AsyncIterator[Any]:
            yield [1.0, 2.0]
            yield [3.0, 4.0]
            yield item

        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(4, tf.float32, shapes=[[2]])
            asyncsess.AsyncQueueRunner(queue, source, name="feeder")
            dequeue = queue.dequeue()
            with (
                anyio.fail_after(30),
                pytest.raises(error, match=f"AsyncQueueRunner 'feeder', {match}"),
            ):
                async with asyncsess.MonitoredSession() as sess:
                    await drain(sess, dequeue)

    async def test_batches_of_different_sizes(self) -> None:
        async def source() -> AsyncIterator[Any]:
            yield np.zeros((4, 2), np.float32), np.zeros(3, np.int64)

        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(8, [tf.float32, tf.int64], shapes=[[2], []])
            asyncsess.AsyncQueueRunner(queue, source, enqueue_many=True, name="b")
            dequeue = queue.dequeue()
            with (
                anyio.fail_after(30),
                pytest.raises(ValueError, match="'b', item 0: the components' batch"),
            ):
                async with asyncsess.MonitoredSession() as sess:
                    await drain(sess, dequeue)

    async def test_wrong_component_count(self) -> None:
        async def source() -> AsyncIterator[Any]:
            yield (1.0,)

        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(4, [tf.float32, tf.float32], shapes=[[], []])
            asyncsess.AsyncQueueRunner(queue, source, name="pairs")
            dequeue = queue.dequeue()
            with (
                anyio.fail_after(30),
                pytest.raises(ValueError, match="'pairs', item 0 must be a tuple"),
            ):
                async with asyncsess.MonitoredSession() as sess:
                    await drain(sess, dequeue)

    async def test_a_source_that_is_not_async_iterable(self) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(4, tf.float32, shapes=[])
            with pytest.raises(TypeError, match="Received: source=\\[1, 2\\]"):
                asyncsess.AsyncQueueRunner(queue, [1, 2])


class TestStop:
    async def test_cancel_while_the_queue_is_full(self) -> None:
        source = Counter()
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, source, name="full")
            with anyio.fail_after(30), anyio.CancelScope() as scope:
                async with asyncsess.MonitoredSession(stop_grace_period_secs=10):
                    await source.wait_for(3)  # queue full, the third enqueue blocks
                    assert [
                        t.name
                        for t in threading.enumerate()
                        if t.name == "asyncsess-queue-runner-full"
                    ]
                    scope.cancel()
                    await anyio.sleep_forever()
            assert scope.cancelled_caught
        assert source.closed
        assert_no_runner_threads()

    async def test_cancel_while_the_queue_is_empty(self) -> None:
        source = Counter()
        source.gate = anyio.Event()  # never set: the source never yields
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, source)
            dequeue = queue.dequeue()
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(stop_grace_period_secs=10) as s:
                    with anyio.move_on_after(0.2) as scope:
                        await s.run(dequeue)  # blocks inside TensorFlow
                    assert scope.cancelled_caught
        assert source.closed
        assert source.pulled == 0
        assert_no_runner_threads()

    async def test_recovery_restarts_the_runner(self) -> None:
        calls = 0

        async def stream() -> AsyncIterator[float]:
            nonlocal calls
            calls += 1
            for i in range(100):
                yield float(i)

        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, stream)
            dequeue = queue.dequeue()
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(
                    hooks=[AbortOnce(at=3)], stop_grace_period_secs=10
                ) as sess:
                    assert await sess.run(dequeue) == 0.0
                    assert await sess.run(dequeue) == 1.0
                    # Preempted: a new TF session and a fresh stream from the callable.
                    assert await sess.run(dequeue) == 0.0
                    assert sess.recovery_count == 1
            assert calls == 2
        assert_no_runner_threads()

    async def test_a_shared_generator_continues_after_recovery(self) -> None:
        source = Counter()
        generator = source()
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(1, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, generator)
            dequeue = queue.dequeue()
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(
                    hooks=[AbortOnce(at=2)], stop_grace_period_secs=10
                ) as sess:
                    assert await sess.run(dequeue) == 1.0
                    # The generator goes on (a callable would start again at
                    # 1.0); items queued in the lost TF session are lost with it.
                    assert await sess.run(dequeue) >= 2.0
                    assert not source.closed
            assert source.closed  # closed with the session
        assert_no_runner_threads()

    async def test_end_of_input_saves_the_final_checkpoint(self, tmp_path: Any) -> None:
        with tf.Graph().as_default():
            step = v1.train.get_or_create_global_step()
            queue = tf.queue.FIFOQueue(4, tf.float32, shapes=[])
            asyncsess.AsyncQueueRunner(queue, numbers(6))
            train = v1.assign_add(step, 1 + 0 * tf.cast(queue.dequeue(), tf.int64))
            saver = v1.train.CheckpointSaverHook(str(tmp_path), save_steps=1000)
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(hooks=[saver]) as sess:
                    await drain(sess, train)
            latest = tf.train.latest_checkpoint(str(tmp_path))
            assert latest is not None
            assert latest.endswith("-6")


class TestExample:
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncio streams
    async def test_async_pipeline_example(self, tmp_path: Any) -> None:
        path = Path(__file__).parent.parent / "examples" / "async_pipeline.py"
        spec = importlib.util.spec_from_file_location("async_pipeline", path)
        assert spec is not None
        assert spec.loader is not None
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        with anyio.fail_after(60):
            summary = await example.main(records=640, logdir=str(tmp_path))
        assert summary["examples"] == 640  # every record trained on, in 20 steps
        assert summary["final_loss"] < summary["first_loss"]
        assert summary["checkpoint"].endswith("model.ckpt-20")
        assert summary["stop_reason"] == "End of input (OutOfRangeError)."
        assert_no_runner_threads()
