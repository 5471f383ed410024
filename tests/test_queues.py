"""TensorFlow's QueueRunners and tf.data under asyncsess: start, stop, end of input."""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

import anyio
import numpy as np
import pytest
import tensorflow as tf

import asyncsess

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio

RUNNER_PREFIX = "asyncsess-queue-runner"


def runner_threads() -> list[str]:
    """Names of the live threads asyncsess starts for queue runners."""
    return sorted(
        t.name for t in threading.enumerate() if t.name.startswith(RUNNER_PREFIX)
    )


def assert_no_runner_threads() -> None:
    for t in threading.enumerate():
        if t.name.startswith(RUNNER_PREFIX):
            t.join(timeout=5)
    assert runner_threads() == []


class EndRecorder(asyncsess.SessionRunHook):
    """Records whether end() ran, and every session it saw created."""

    def __init__(self) -> None:
        self.ended = False
        self.sessions: list[Any] = []

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self.sessions.append(session)

    async def end(self, session: Any) -> None:
        self.ended = True


class AbortOnce(asyncsess.SessionRunHook):
    """Raises AbortedError (a preemption) from the before_run of step *at*."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    async def before_run(self, run_context: Any) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise tf.errors.AbortedError(None, None, "injected preemption")


def is_noise(record: logging.LogRecord) -> bool:
    """An error from anyone, or a warning from asyncsess."""
    return record.levelno >= logging.ERROR or (
        record.name == "asyncsess" and record.levelno >= logging.WARNING
    )


def fill_forever(queue: Any, capacity: int) -> threading.Event:
    """Add a runner enqueueing 7s; the event is set once the queue is full."""
    full, calls = threading.Event(), itertools.count(1)

    def produce() -> Any:
        if next(calls) > capacity:  # this enqueue waits for room
            full.set()
        return np.int32(7)

    add_runner(queue, v1.py_func(produce, [], tf.int32, stateful=True))
    return full


def add_runner(queue: Any, value: Any) -> Any:
    """A TensorFlow QueueRunner enqueueing *value* forever, registered."""
    runner = v1.train.QueueRunner(queue, [queue.enqueue(value)])
    v1.train.add_queue_runner(runner)
    return runner


class TestTFQueueRunners:
    async def test_string_input_producer_and_batch_end_cleanly(self) -> None:
        with tf.Graph().as_default():
            names = v1.train.string_input_producer(
                ["a", "b", "c"], num_epochs=1, shuffle=False
            )
            batch = v1.train.batch([names.dequeue()], batch_size=1)
            hook = EndRecorder()
            seen: list[bytes] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
                    while not sess.should_stop():
                        seen.extend(await sess.run(batch))
            assert seen == [b"a", b"b", b"c"]
            assert hook.ended
            assert sess.stop_reason is not None
            assert sess.stop_reason.kind == "end_of_input"
        assert_no_runner_threads()

    async def test_one_thread_per_enqueue_op_named_after_it(self) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(4, tf.int32, shapes=[], name="q")
            runner = v1.train.QueueRunner(
                queue, [queue.enqueue(1, name="one"), queue.enqueue(2, name="two")]
            )
            v1.train.add_queue_runner(runner)
            dequeue = queue.dequeue()
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession() as sess:
                    assert await sess.run(dequeue) in (1, 2)
                    assert runner_threads() == [
                        "asyncsess-queue-runner-q-one",
                        "asyncsess-queue-runner-q-two",
                        "asyncsess-queue-runners-close-on-stop",
                    ]
        assert_no_runner_threads()

    async def test_failing_runner_surfaces_its_error_type(self) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(4, tf.float32, shapes=[])
            bad = tf.debugging.check_numerics(tf.constant(np.nan), "bad input")
            add_runner(queue, bad)
            dequeue = queue.dequeue()
            with anyio.fail_after(30):
                with pytest.raises(tf.errors.InvalidArgumentError, match="bad input"):
                    async with asyncsess.MonitoredSession() as sess:
                        while not sess.should_stop():
                            await sess.run(dequeue)
        assert_no_runner_threads()

    async def test_end_of_input_saves_the_final_checkpoint(self, tmp_path: Any) -> None:
        with tf.Graph().as_default():
            step = v1.train.get_or_create_global_step()
            data = v1.train.input_producer(
                tf.range(5), num_epochs=1, shuffle=False, capacity=2
            )
            item = tf.cast(data.dequeue(), tf.int64)
            train = v1.assign_add(step, 1 + 0 * item)
            saver = v1.train.CheckpointSaverHook(str(tmp_path), save_steps=1000)
            hook = EndRecorder()
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(hooks=[saver, hook]) as sess:
                    while not sess.should_stop():
                        await sess.run(train)
            assert hook.ended
            latest = tf.train.latest_checkpoint(str(tmp_path))
            assert latest is not None
            assert latest.endswith("-5")
        assert_no_runner_threads()


class TestStop:
    async def test_exit_while_the_queue_is_full(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.int32, shapes=[])
            full = fill_forever(queue, 2)
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(stop_grace_period_secs=10):
                    await anyio.to_thread.run_sync(full.wait)  # enqueues now block
        # TF's CancelledError from the cancelled enqueue is shutdown, not an error.
        assert not [r for r in caplog.records if is_noise(r)]
        assert_no_runner_threads()

    async def test_cancel_while_the_queue_is_full(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.int32, shapes=[])
            full = fill_forever(queue, 2)
            with anyio.fail_after(30), anyio.CancelScope() as scope:
                async with asyncsess.MonitoredSession(stop_grace_period_secs=10):
                    await anyio.to_thread.run_sync(full.wait)
                    scope.cancel()
                    await anyio.sleep_forever()
            assert scope.cancelled_caught
        assert not [r for r in caplog.records if is_noise(r)]
        assert_no_runner_threads()

    async def test_cancel_a_step_blocked_on_an_empty_queue(self) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.int32, shapes=[])
            side = tf.queue.FIFOQueue(2, tf.int32, shapes=[])  # never fed
            add_runner(queue, side.dequeue())  # its enqueue blocks on `side`
            dequeue = queue.dequeue()
            started = anyio.Event()

            class Started(asyncsess.SessionRunHook):
                async def before_run(self, run_context: Any) -> None:
                    started.set()

            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(
                    hooks=[Started()], stop_grace_period_secs=10
                ) as sess:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(sess.run, dequeue)
                        await started.wait()
                        tg.cancel_scope.cancel()
        assert_no_runner_threads()

    async def test_a_runner_that_does_not_stop_is_named_at_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.int32, shapes=[], name="stuck")
            side = tf.queue.FIFOQueue(2, tf.int32, shapes=[])  # nobody closes it
            blocked = threading.Event()
            signal = v1.py_func(lambda: blocked.set() or np.int32(0), [], tf.int32)
            with tf.control_dependencies([signal]):
                add_runner(queue, side.dequeue(name="wait"))
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(stop_grace_period_secs=0.2):
                    await anyio.to_thread.run_sync(blocked.wait)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("asyncsess-queue-runner-stuck-" in r.getMessage() for r in warnings)
        # Closing the TF session interrupted the blocked enqueue.
        assert_no_runner_threads()

    async def test_recovery_restarts_the_runners(self) -> None:
        with tf.Graph().as_default():
            queue = tf.queue.FIFOQueue(2, tf.int32, shapes=[])
            add_runner(queue, 3)
            dequeue = queue.dequeue()
            hook = EndRecorder()
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(
                    hooks=[hook, AbortOnce(at=2)], stop_grace_period_secs=10
                ) as sess:
                    assert await sess.run(dequeue) == 3
                    # Step 2 is preempted: a new TF session, whose fresh queue is
                    # fed only if the runners started again.
                    assert await sess.run(dequeue) == 3
                    assert sess.recovery_count == 1
                    assert len(hook.sessions) == 2
                    assert runner_threads() == [
                        f"{RUNNER_PREFIX}-fifo_queue-fifo_queue_enqueue",
                        "asyncsess-queue-runners-close-on-stop",
                    ]
        assert_no_runner_threads()


class TestTFData:
    async def test_one_shot_iterator_ends_cleanly(self) -> None:
        with tf.Graph().as_default():
            dataset = tf.data.Dataset.range(5).batch(2)
            batch = v1.data.make_one_shot_iterator(dataset).get_next()
            hook = EndRecorder()
            seen: list[int] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
                    while not sess.should_stop():
                        seen.extend((await sess.run(batch)).tolist())
            assert seen == [0, 1, 2, 3, 4]
            assert hook.ended

    async def test_initializable_iterator_through_the_scaffold(self) -> None:
        with tf.Graph().as_default():
            limit = v1.placeholder_with_default(np.int64(3), shape=[])
            iterator = v1.data.make_initializable_iterator(tf.data.Dataset.range(limit))
            scaffold = asyncsess.Scaffold(
                local_init_op=tf.group(
                    iterator.initializer, v1.local_variables_initializer()
                )
            )
            creator = asyncsess.ChiefSessionCreator(scaffold=scaffold)
            next_item = iterator.get_next()
            hook = EndRecorder()
            seen: list[int] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(creator, hooks=[hook]) as sess:
                    while not sess.should_stop():
                        seen.append(int(await sess.run(next_item)))
            assert seen == [0, 1, 2]
            assert hook.ended

    async def test_initializable_iterator_through_a_hook(self) -> None:
        with tf.Graph().as_default():
            data = v1.placeholder(tf.int64, shape=[None])
            iterator = v1.data.make_initializable_iterator(
                tf.data.Dataset.from_tensor_slices(data)
            )
            next_item = iterator.get_next()

            class Init(asyncsess.SessionRunHook):
                async def after_create_session(self, session: Any, coord: Any) -> None:
                    await asyncsess.run_in_session_thread(
                        session.run, iterator.initializer, {data: [4, 5]}
                    )

            seen: list[int] = []
            with anyio.fail_after(30):
                async with asyncsess.MonitoredSession(hooks=[Init()]) as sess:
                    while not sess.should_stop():
                        seen.append(int(await sess.run(next_item)))
            assert seen == [4, 5]
