"""TensorFlow parity: TF's own MonitoredSession and standard-hook tests, ported.

Each test names the TensorFlow test it comes from, in
``tensorflow/python/training/monitored_session_test.py`` (``ms_test``) or
``tensorflow/python/training/basic_session_run_hooks_test.py`` (``hooks_test``).
TensorFlow's behaviour is the reference; where a case is cheap, the TF original
runs first, synchronously, in the same test. Where asyncsess differs on purpose
(``../shared/API.md``, ``docs/migration.md``), the test follows asyncsess and says so.
TF's tests of private classes (``_HookedSession``, ``_CoordinatedSession``) are
ported through the public session.
"""

from __future__ import annotations

import collections
import glob
import os
import threading
from typing import TYPE_CHECKING, Any

import anyio.lowlevel
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, debug_pb2
from tensorflow.python.platform import tf_logging
from tensorflow.python.training import training_util

import asyncsess
from asyncsess import SessionRunArgs, SessionRunValues

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

v1 = tf.compat.v1
errors = tf.errors
pytestmark = pytest.mark.anyio

GRACE = 10  # stop_grace_period_secs: a stuck thread fails fast instead of in 120 s
HOOK_KINDS = ["tf", "async"]


@pytest.fixture
def graph() -> Iterator[tf.Graph]:
    """A fresh graph, the default graph during the test."""
    g = tf.Graph()
    with g.as_default():
        yield g


def std_hook(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """TF's standard hook *name* (kind "tf") or asyncsess's counterpart ("async")."""
    module: Any = v1.train if kind == "tf" else asyncsess.hooks
    return getattr(module, name)(*args, **kwargs)


def gstep_and_inc(n: int = 1) -> tuple[Any, Any]:
    """The global step and its increment, ordered after the hooks' read of it.

    As TF's own tests build it (``training_util._increment_global_step``): a
    plain ``assign_add`` is unordered with the read the hooks fetch, so which
    value they see would be TensorFlow's scheduling (a flaky step number).
    """
    gstep = v1.train.get_or_create_global_step()
    return gstep, training_util._increment_global_step(n)


def scalar_events(logdir: Any) -> dict[int, dict[str, float]]:
    """{step: {tag: simple_value}} from every event file under *logdir*."""
    out: dict[int, dict[str, float]] = {}
    pattern = os.path.join(str(logdir), "**", "events.out.tfevents.*")
    for path in sorted(glob.glob(pattern, recursive=True)):
        for event in v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(event.step, {})[value.tag] = value.simple_value
    return out


# -- TF's test helpers, with an async twin where the hook kind matters ----------------


class FakeHook(v1.train.SessionRunHook):
    """ms_test.FakeHook."""

    def __init__(self) -> None:
        self.should_stop = False
        self.request: Any = None
        self.call_counter: collections.Counter[str] = collections.Counter()
        self.last_run_context: Any = None
        self.last_run_values: Any = None
        self.run_values: list[Any] = []

    def begin(self) -> None:
        self.call_counter["begin"] += 1

    def after_create_session(self, session: Any, coord: Any) -> None:
        self.call_counter["after_create_session"] += 1

    def before_run(self, run_context: Any) -> Any:
        self.call_counter["before_run"] += 1
        self.last_run_context = run_context
        return self.request

    def after_run(self, run_context: Any, run_values: Any) -> None:
        self.call_counter["after_run"] += 1
        self.last_run_values = run_values
        self.run_values.append(run_values)
        if self.should_stop:
            run_context.request_stop()

    def end(self, session: Any) -> None:
        self.call_counter["end"] += 1


class AsyncFakeHook(asyncsess.SessionRunHook):
    """FakeHook, as an asyncsess hook."""

    def __init__(self) -> None:
        self.should_stop = False
        self.request: Any = None
        self.call_counter: collections.Counter[str] = collections.Counter()
        self.last_run_context: Any = None
        self.last_run_values: Any = None
        self.run_values: list[Any] = []

    async def begin(self) -> None:
        self.call_counter["begin"] += 1

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self.call_counter["after_create_session"] += 1

    async def before_run(self, run_context: Any) -> Any:
        self.call_counter["before_run"] += 1
        self.last_run_context = run_context
        await anyio.lowlevel.checkpoint()
        return self.request

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        self.call_counter["after_run"] += 1
        self.last_run_values = run_values
        self.run_values.append(run_values)
        if self.should_stop:
            run_context.request_stop()

    async def end(self, session: Any) -> None:
        self.call_counter["end"] += 1


def fake_hook(kind: str) -> Any:
    return FakeHook() if kind == "tf" else AsyncFakeHook()


class RaiseOnceAtCountN(v1.train.SessionRunHook):
    """ms_test.RaiseOnceAtCountN: raises *ex* from before_run at its n-th call."""

    def __init__(self, n: int, ex: Any) -> None:
        self.n, self.ex, self.raised = n, ex, False

    def before_run(self, run_context: Any) -> None:
        self.n -= 1
        if self.n == 0 and not self.raised:
            self.raised = True
            raise self.ex


class RaiseOnceInAfterRunAtCountN(v1.train.SessionRunHook):
    """RaiseOnceAtCountN, raising from after_run instead."""

    def __init__(self, n: int, ex: Any) -> None:
        self.n, self.ex, self.raised = n, ex, False

    def after_run(self, run_context: Any, run_values: Any) -> None:
        self.n -= 1
        if self.n == 0 and not self.raised:
            self.raised = True
            raise self.ex


class RunOptionsMetadataHook(v1.train.SessionRunHook):
    """ms_test.RunOptionsMetadataHook."""

    def __init__(
        self,
        trace_level: int,
        timeout_in_ms: int,
        output_partition_graphs: bool,
        debug_tensor_watch: Any,
        report_tensor_allocations_upon_oom: bool,
    ) -> None:
        self._trace_level = trace_level
        self._timeout_in_ms = timeout_in_ms
        self._output_partition_graphs = output_partition_graphs
        self._debug_tensor_watch = debug_tensor_watch
        self._report_oom = report_tensor_allocations_upon_oom
        self.run_options_list: list[Any] = []
        self.run_metadata_list: list[Any] = []

    def before_run(self, run_context: Any) -> Any:
        options = config_pb2.RunOptions(
            trace_level=self._trace_level,
            timeout_in_ms=self._timeout_in_ms,
            output_partition_graphs=self._output_partition_graphs,
            report_tensor_allocations_upon_oom=self._report_oom,
        )
        options.debug_options.debug_tensor_watch_opts.extend([self._debug_tensor_watch])
        return SessionRunArgs(None, None, options=options)

    def after_run(self, run_context: Any, run_values: Any) -> None:
        self.run_options_list.append(run_values.options)
        self.run_metadata_list.append(run_values.run_metadata)


class StopCoordinatorWithException(v1.train.SessionRunHook):
    """ms_test.StopCoordinatorWithException: after N runs, a thread registered with
    the coordinator reports an exception to it, and that run's after_run waits
    until it has.

    TF's thread spins on a lock; this one waits on an event (and gives up when the
    coordinator stops for another reason, so a failing test cannot hang).
    """

    def __init__(self, calls_before_stopping: int, exception_to_raise: Any = None):
        self._started_the_side_thread_already = False
        self._lock = threading.Lock()
        self._trigger = threading.Event()
        self._stored_exception_event = threading.Event()
        self._calls_before_stopping = calls_before_stopping
        self._exception_to_raise = exception_to_raise or errors.AbortedError(
            None, None, "Aborted at N"
        )

    def _maybe_stop_with_exception(self, coord: Any) -> None:
        try:
            while not self._trigger.wait(0.01):
                if coord.should_stop():
                    return
            try:
                raise self._exception_to_raise
            except Exception as e:
                coord.request_stop(e)
        finally:
            self._stored_exception_event.set()

    def after_create_session(self, session: Any, coord: Any) -> None:
        if self._started_the_side_thread_already:
            return
        thread = threading.Thread(target=self._maybe_stop_with_exception, args=(coord,))
        coord.register_thread(thread)
        thread.start()
        self._started_the_side_thread_already = True

    def after_run(self, run_context: Any, run_values: Any) -> None:
        with self._lock:
            self._calls_before_stopping -= 1
            stopping_now = self._calls_before_stopping == 0
        if stopping_now:
            self._trigger.set()
            self._stored_exception_event.wait()


class FailTrainingAfterCoordinatorStopped(StopCoordinatorWithException):
    """ms_test.FailTrainingAfterCoordinatorStopped: the step then fails, as a
    session stuck on the stopped coordinator would (CancelledError)."""

    def __init__(self, calls_before_stopping: int) -> None:
        super().__init__(calls_before_stopping)
        self._coord: Any = None

    def after_create_session(self, session: Any, coord: Any) -> None:
        self._coord = coord
        super().after_create_session(session, coord)

    def after_run(self, run_context: Any, run_values: Any) -> None:
        super().after_run(run_context, run_values)
        try:
            self._coord.raise_requested_exception()
        except errors.AbortedError:
            raise errors.CancelledError(
                None, None, "Session got garbage-collected."
            ) from None


class CountingSessionCreator:
    """ms_test.CountingSessionCreator: hands out one raw session, never closed."""

    def __init__(self, session: Any) -> None:
        self._initial_session = session
        session.close = lambda *args: None
        self.number_of_sessions_created = 0

    def create_session(self) -> Any:
        self.number_of_sessions_created += 1
        return self._initial_session


@pytest.fixture
def raw_session(graph: tf.Graph) -> Iterator[Any]:
    """A raw TF session on the test's graph, closed for real at the end."""
    sess = v1.Session(graph=graph)
    yield sess
    v1.Session.close(sess)


class CoordGrabber(asyncsess.SessionRunHook):
    """Keeps the coordinator (TF's tests reach it through private attributes)."""

    def __init__(self) -> None:
        self.coords: list[Any] = []

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self.coords.append(coord)

    @property
    def coord(self) -> Any:
        return self.coords[-1]


class TFCoordGrabber(v1.train.SessionRunHook):
    def __init__(self) -> None:
        self.coord: Any = None

    def after_create_session(self, session: Any, coord: Any) -> None:
        self.coord = coord


def report(coord: Any, exc: BaseException) -> None:
    """Report *exc* to *coord* from an except block, as a thread would."""
    try:
        raise exc
    except type(exc) as e:
        coord.request_stop(e)


def grabber_and_hooks(step_hooks: bool) -> tuple[CoordGrabber, list[Any]]:
    grabber = CoordGrabber()
    hooks: list[Any] = [grabber]
    if step_hooks:  # hooks taking part in every step (not the hook-less fast path)
        hooks += [FakeHook(), AsyncFakeHook()]
    return grabber, hooks


def stop_state(sess: Any) -> Any:
    """``sess.should_stop()``, or a description of what it raised."""
    try:
        return sess.should_stop()
    except Exception as exc:
        return f"should_stop() raised {type(exc).__name__}: {exc}"


async def run_outcome(sess: Any, *args: Any) -> Any:
    """``await sess.run(*args)``, or a description of what it raised."""
    try:
        return await sess.run(*args)
    except Exception as exc:
        return f"run() raised {type(exc).__name__}: {exc}"


# -- MonitoredTrainingSessionTest --------------------------------------------------


class TestMonitoredTrainingSession:
    async def test_saving_restoring_checkpoint(
        self, graph: tf.Graph, tmp_path: Path
    ) -> None:
        """ms_test MonitoredTrainingSessionTest.test_saving_restoring_checkpoint."""
        gstep, do_step = gstep_and_inc()
        logdir = str(tmp_path)
        async with asyncsess.MonitoredTrainingSession(
            is_chief=True, checkpoint_dir=logdir
        ) as session:
            assert await session.run(gstep) == 0
            assert await session.run(do_step) == 1
            assert await session.run(do_step) == 2
        # A restart finds the checkpoint and recovers automatically.
        async with asyncsess.MonitoredTrainingSession(
            is_chief=True, checkpoint_dir=logdir
        ) as session:
            assert await session.run(gstep) == 2

    async def test_save_checkpoint_steps(self, graph: tf.Graph, tmp_path: Path) -> None:
        """ms_test MonitoredTrainingSessionTest.test_save_checkpoint_steps."""
        gstep, new_gstep = gstep_and_inc()
        logdir = str(tmp_path)
        async with asyncsess.MonitoredTrainingSession(
            is_chief=True,
            checkpoint_dir=logdir,
            save_checkpoint_steps=100,
            log_step_count_steps=10,
        ) as session:
            for _ in range(100):
                await session.run(new_gstep)
        async with asyncsess.MonitoredTrainingSession(
            is_chief=True, checkpoint_dir=logdir
        ) as session:
            assert await session.run(gstep) == 100

    async def test_summaries_steps(self, graph: tf.Graph, tmp_path: Path) -> None:
        """ms_test MonitoredTrainingSessionTest.test_summaries_steps."""
        _, new_gstep = gstep_and_inc()
        v1.summary.scalar("my_summary_tag", new_gstep * 2)
        async with asyncsess.MonitoredTrainingSession(
            is_chief=True,
            checkpoint_dir=str(tmp_path),
            save_summaries_steps=100,
            log_step_count_steps=10,
        ) as session:
            for _ in range(101):
                await session.run(new_gstep)
        tags = {tag for values in scalar_events(tmp_path).values() for tag in values}
        assert "my_summary_tag" in tags
        assert "global_step/sec" in tags

    @pytest.mark.parametrize("kind", HOOK_KINDS)
    async def test_custom_saving(
        self, graph: tf.Graph, tmp_path: Path, kind: str
    ) -> None:
        """ms_test MonitoredTrainingSessionTest.test_custom_saving."""
        hook = fake_hook(kind)
        gstep, do_step = gstep_and_inc()
        logdir = str(tmp_path)
        async with asyncsess.MonitoredTrainingSession(
            is_chief=True,
            checkpoint_dir=logdir,
            chief_only_hooks=[hook],
            save_checkpoint_secs=0,
        ) as session:
            assert await session.run(gstep) == 0
            assert await session.run(do_step) == 1
            assert await session.run(do_step) == 2
        assert hook.call_counter["begin"] == 1
        # A restart does not find a checkpoint: none was saved.
        async with asyncsess.MonitoredTrainingSession(
            is_chief=True, checkpoint_dir=logdir
        ) as session:
            assert await session.run(gstep) == 0

    @pytest.mark.parametrize("save_graph_def", [True, False])
    async def test_save_graph_def(
        self, graph: tf.Graph, tmp_path: Path, save_graph_def: bool
    ) -> None:
        """ms_test MonitoredTrainingSessionTest.test_save_graph_def(_false)."""
        _, new_gstep = gstep_and_inc()
        logdir = str(tmp_path)
        metas = os.path.join(logdir, "*.meta")
        async with asyncsess.MonitoredTrainingSession(
            is_chief=True,
            checkpoint_dir=logdir,
            save_checkpoint_steps=1,
            save_graph_def=save_graph_def,
        ) as session:
            assert ("graph.pbtxt" in os.listdir(logdir)) is save_graph_def
            assert len(glob.glob(metas)) == (1 if save_graph_def else 0)
            await session.run(new_gstep)
            assert len(glob.glob(metas)) == (2 if save_graph_def else 0)


# -- WrappedSessionTest / CoordinatedSessionTest ------------------------------------


def busy_wait_for_coord_stop(coord: Any) -> None:
    coord.wait_for_stop()


class TestCoordinatedSession:
    async def test_should_stop_on_close(self, graph: tf.Graph) -> None:
        """ms_test
        WrappedSessionTest/CoordinatedSessionTest.test_should_stop_on_close."""
        sess = asyncsess.MonitoredSession()
        async with sess:
            assert not sess.should_stop()
            await sess.close()
            assert sess.should_stop()

    async def test_close_twice(self, graph: tf.Graph) -> None:
        """ms_test WrappedSessionTest.test_close_twice."""
        sess = asyncsess.MonitoredSession()
        await sess.open()
        await sess.close()
        assert sess.should_stop()
        await sess.close()
        assert sess.should_stop()

    @pytest.mark.parametrize("step_hooks", [False, True])
    async def test_should_stop_on_coord_stop(
        self, graph: tf.Graph, step_hooks: bool
    ) -> None:
        """ms_test CoordinatedSessionTest.test_should_stop_on_coord_stop."""
        grabber, hooks = grabber_and_hooks(step_hooks)
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            assert not sess.should_stop()
            grabber.coord.request_stop()
            assert sess.should_stop()

    async def test_dont_request_stop_on_exception_in_main_thread(
        self, graph: tf.Graph
    ) -> None:
        """ms_test
        CoordinatedSessionTest.test_dont_request_stop_on_exception_in_main_thread."""
        c = tf.constant(0)
        v = tf.identity(c)
        grabber = CoordGrabber()
        async with asyncsess.MonitoredSession(hooks=[grabber]) as sess:
            assert not sess.should_stop()
            assert await sess.run(c) == 0
            assert await sess.run(v, feed_dict={c: 1}) == 1
            with pytest.raises(TypeError, match="None has invalid type"):
                await sess.run([None], feed_dict={c: 2})
            assert not grabber.coord.should_stop()
            assert not sess.should_stop()
            assert await sess.run(v, feed_dict={c: 3}) == 3

    @pytest.mark.parametrize("after_exception", [False, True])
    async def test_stop_threads_on_close(
        self, graph: tf.Graph, after_exception: bool
    ) -> None:
        """ms_test
        CoordinatedSessionTest.test_stop_threads_on_close(_after_exception)."""
        c = tf.constant(0)
        v = tf.identity(c)
        threads: list[threading.Thread] = []

        class StartThreads(v1.train.SessionRunHook):
            def after_create_session(self, session: Any, coord: Any) -> None:
                self.coord = coord
                for _ in range(3):
                    t = threading.Thread(target=busy_wait_for_coord_stop, args=(coord,))
                    coord.register_thread(t)
                    t.start()
                    threads.append(t)

        hook = StartThreads()
        sess = asyncsess.MonitoredSession(hooks=[hook], stop_grace_period_secs=GRACE)
        async with sess:
            assert not sess.should_stop()
            assert all(t.is_alive() for t in threads)
            assert await sess.run(c) == 0
            assert await sess.run(v, feed_dict={c: 1}) == 1
            assert all(t.is_alive() for t in threads)
            if after_exception:
                with pytest.raises(TypeError, match="None has invalid type"):
                    await sess.run([None], feed_dict={c: 2})
        assert len(threads) == 3
        assert not any(t.is_alive() for t in threads)
        assert hook.coord.should_stop()
        assert sess.should_stop()


# -- RecoverableSessionTest ----------------------------------------------------------


def feed_step_fn(c: Any, v: Any, value: int) -> Any:
    def step_fn(step_context: Any) -> Any:
        return step_context.run_with_hooks(fetches=v, feed_dict={c: value})

    return step_fn


def tf_run_via(sess: Any, via: str, c: Any, v: Any, value: int) -> Any:
    if via == "run":
        return sess.run(v, feed_dict={c: value})
    return sess.run_step_fn(feed_step_fn(c, v, value))


def tf_reference(raw_session: Any, hook: Any, via: str, c: Any, v: Any) -> Any:
    """TF's MonitoredSession through the two runs of TF's test; returns it open."""
    creator = CountingSessionCreator(raw_session)
    tf_sess = v1.train.MonitoredSession(creator, [hook], stop_grace_period_secs=GRACE)
    assert creator.number_of_sessions_created == 1
    assert not tf_sess.should_stop()
    assert tf_run_via(tf_sess, via, c, v, 51) == 51
    assert not tf_sess.should_stop()
    assert tf_run_via(tf_sess, via, c, v, 42) == 42
    tf_sess.creator = creator
    return tf_sess


async def run_via(sess: Any, via: str, c: Any, v: Any, value: int) -> Any:
    if via == "run":
        return await sess.run(v, feed_dict={c: value})
    return await sess.run_step_fn(feed_step_fn(c, v, value))


class TestRecoverableSession:
    async def test_recovery(self, graph: tf.Graph) -> None:
        """ms_test RecoverableSessionTest.test_recovery (AbortAtNSession fakes)."""
        c = tf.constant(0)
        v = tf.identity(c)
        real = v1.Session(graph=graph)

        class AbortAtNSession:
            def __init__(self, n: int) -> None:
                self._count = n

            def close(self) -> None:
                pass

            def run(self, *args: Any, **kwargs: Any) -> Any:
                if self._count == 0:
                    raise errors.AbortedError(None, None, "Aborted at N")
                self._count -= 1
                return real.run(*args, **kwargs)

        class StackSessionCreator:
            def __init__(self) -> None:
                self.sessions_to_use = [AbortAtNSession(x + 1) for x in range(3)]

            def create_session(self) -> Any:
                return self.sessions_to_use.pop(0)

        creator = StackSessionCreator()
        try:
            async with asyncsess.MonitoredSession(creator) as sess:
                assert len(creator.sessions_to_use) == 2
                assert await sess.run(v, feed_dict={c: 51}) == 51
                assert len(creator.sessions_to_use) == 2
                assert await sess.run(v, feed_dict={c: 42}) == 42
                assert len(creator.sessions_to_use) == 1
                assert await sess.run(v, feed_dict={c: 33}) == 33
                assert len(creator.sessions_to_use) == 1
                assert await sess.run(v, feed_dict={c: 24}) == 24
                assert len(creator.sessions_to_use) == 0
                assert await sess.run(v, feed_dict={c: 11}) == 11
                assert await sess.run(v, feed_dict={c: 0}) == 0
                with pytest.raises(IndexError, match="pop from empty list"):
                    await sess.run(v, feed_dict={c: -12})
        finally:
            real.close()

    @pytest.mark.parametrize("via", ["run", "run_step_fn"])
    async def test_recovery_from_coordinator_exception(
        self, graph: tf.Graph, raw_session: Any, via: str
    ) -> None:
        """ms_test RecoverableSessionTest.test_recovery_from_coordinator_exception
        and test_step_fn_recovery_from_coordinator_exception_when_run_hooks.

        TF: a preemption error the coordinator holds is found by should_stop(),
        which recreates the session and returns False: training goes on.
        """
        c = tf.constant(0)
        v = tf.identity(c)
        ref = StopCoordinatorWithException(calls_before_stopping=2)
        tf_sess = tf_reference(raw_session, ref, via, c, v)
        assert not tf_sess.should_stop()
        assert tf_sess.creator.number_of_sessions_created == 2
        tf_sess.close()

        creator = CountingSessionCreator(raw_session)
        hook = StopCoordinatorWithException(calls_before_stopping=2)
        sess = asyncsess.MonitoredSession(creator, [hook], stop_grace_period_secs=GRACE)
        async with sess:
            assert creator.number_of_sessions_created == 1
            assert not sess.should_stop()
            # Not during call number 0.
            assert await run_via(sess, via, c, v, 51) == 51
            assert not sess.should_stop()
            # The coordinator is stopped with AbortedError during call number 1.
            assert await run_via(sess, via, c, v, 42) == 42
            # Training continues; should_stop() is a plain method, so the session
            # is recreated by the next call rather than inside it, as TF does.
            assert not sess.should_stop()
            assert creator.number_of_sessions_created == 1
            assert await run_via(sess, via, c, v, 7) == 7
            assert creator.number_of_sessions_created == 2
            assert not sess.should_stop()

    @pytest.mark.parametrize("via", ["run", "run_step_fn"])
    async def test_recovery_from_non_preemption_in_coordinator(
        self, graph: tf.Graph, raw_session: Any, via: str
    ) -> None:
        """ms_test
        RecoverableSessionTest.test_recovery_from_non_preemption_in_coordinator
        and ..._when_run_hooks.

        TF: should_stop() returns True, the session is not recreated, and close()
        raises the coordinator's error.
        """
        c = tf.constant(0)
        v = tf.identity(c)

        def fatal() -> Any:
            return errors.UnknownError(
                None, None, "Some fatal exception inside the coordinator."
            )

        ref = StopCoordinatorWithException(2, exception_to_raise=fatal())
        tf_sess = tf_reference(raw_session, ref, via, c, v)
        assert tf_sess.should_stop()
        assert tf_sess.creator.number_of_sessions_created == 1
        with pytest.raises(errors.UnknownError, match="fatal exception"):
            tf_sess.close()

        creator = CountingSessionCreator(raw_session)
        hook = StopCoordinatorWithException(2, exception_to_raise=fatal())
        sess = asyncsess.MonitoredSession(creator, [hook], stop_grace_period_secs=GRACE)
        await sess.open()
        try:
            assert creator.number_of_sessions_created == 1
            assert not sess.should_stop()
            assert await run_via(sess, via, c, v, 51) == 51
            assert not sess.should_stop()
            assert await run_via(sess, via, c, v, 42) == 42
            # Stopped by a non-redeemable error: stop, do not recreate.
            assert stop_state(sess) is True
            assert creator.number_of_sessions_created == 1
        finally:
            with pytest.raises(errors.UnknownError, match="fatal exception"):
                await sess.close()

    @pytest.mark.parametrize("via", ["run", "run_step_fn"])
    async def test_recovery_from_session_getting_stuck(
        self, graph: tf.Graph, raw_session: Any, via: str
    ) -> None:
        """ms_test RecoverableSessionTest.test_recovery_from_session_getting_stuck
        and ..._when_run_hooks: the step's CancelledError has the coordinator's
        AbortedError as root cause, so the session is recreated."""
        c = tf.constant(0)
        v = tf.identity(c)
        ref = FailTrainingAfterCoordinatorStopped(calls_before_stopping=2)
        tf_sess = tf_reference(raw_session, ref, via, c, v)
        assert not tf_sess.should_stop()
        assert tf_sess.creator.number_of_sessions_created == 2
        tf_sess.close()

        creator = CountingSessionCreator(raw_session)
        hook = FailTrainingAfterCoordinatorStopped(calls_before_stopping=2)
        sess = asyncsess.MonitoredSession(creator, [hook], stop_grace_period_secs=GRACE)
        async with sess:
            assert creator.number_of_sessions_created == 1
            assert not sess.should_stop()
            assert await run_via(sess, via, c, v, 51) == 51
            assert not sess.should_stop()
            assert await run_via(sess, via, c, v, 42) == 42
            assert not sess.should_stop()
            assert creator.number_of_sessions_created == 2


# -- HookedSessionTest (through the public session) ----------------------------------


@pytest.mark.parametrize("kind", HOOK_KINDS)
class TestHookedSession:
    async def test_run_passes_all_arguments(self, graph: tf.Graph, kind: str) -> None:
        """ms_test HookedSessionTest.testRunPassesAllArguments."""
        a_tensor = tf.constant([0], name="a_tensor")
        out = a_tensor * 2
        hook = fake_hook(kind)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            options = config_pb2.RunOptions(output_partition_graphs=True)
            metadata = config_pb2.RunMetadata()
            result = await sess.run(
                fetches=out,
                feed_dict={a_tensor: [21]},
                options=options,
                run_metadata=metadata,
            )
            assert result == [42]
            assert len(metadata.partition_graphs) > 0
            assert hook.last_run_values.run_metadata is metadata

    async def test_calls_hooks_before_and_after_run(
        self, graph: tf.Graph, kind: str
    ) -> None:
        """ms_test HookedSessionTest.testCallsHooksBeginEnd (several steps)."""
        hooks = [fake_hook(kind), fake_hook(kind)]
        a_tensor = tf.constant([0], name="a_tensor")
        sess = asyncsess.MonitoredSession(hooks=hooks)
        async with sess:
            for _ in range(10):
                await sess.run(a_tensor)
            for hook in hooks:
                for values in hook.run_values:
                    assert values == SessionRunValues(
                        results=None,
                        options=config_pb2.RunOptions(),
                        run_metadata=config_pb2.RunMetadata(),
                    )
                assert hook.last_run_context.original_args == SessionRunArgs(a_tensor)
                assert isinstance(hook.last_run_context.session, v1.Session)
                assert hook.call_counter["begin"] == 1
                assert hook.call_counter["after_create_session"] == 1
                assert hook.call_counter["before_run"] == 10
                assert hook.call_counter["after_run"] == 10

    async def test_should_stop(self, graph: tf.Graph, kind: str) -> None:
        """ms_test HookedSessionTest.testShouldStop."""
        hooks = [fake_hook(kind), fake_hook(kind)]
        tf.constant([0], name="a_tensor")
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            await sess.run(fetches="a_tensor:0")
            assert not sess.should_stop()
            hooks[0].should_stop = True
            await sess.run(fetches="a_tensor:0")
            assert sess.should_stop()
            with pytest.raises(RuntimeError, match="Run called even after should_stop"):
                await sess.run(fetches="a_tensor:0")

    async def test_fetches_hook_requests(self, graph: tf.Graph, kind: str) -> None:
        """ms_test HookedSessionTest.testFetchesHookRequests."""
        hooks = [fake_hook(kind), fake_hook(kind)]
        a_tensor = tf.constant([0], name="a_tensor")
        another_tensor = tf.constant([5], name="another_tensor")
        third_tensor = tf.constant([10], name="third_tensor")
        hooks[0].request = SessionRunArgs([another_tensor])
        hooks[1].request = SessionRunArgs([third_tensor])
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            assert await sess.run(fetches=a_tensor) == [0]
            assert hooks[0].last_run_values.results == [5]
            assert hooks[1].last_run_values.results == [10]

    async def test_only_hooks_have_feeds(self, graph: tf.Graph, kind: str) -> None:
        """ms_test HookedSessionTest.testOnlyHooksHaveFeeds."""
        hooks = [fake_hook(kind), fake_hook(kind)]
        a_tensor = tf.constant([0], name="a_tensor")
        b_tensor = tf.constant([0], name="b_tensor")
        add_tensor = a_tensor + b_tensor
        hooks[0].request = SessionRunArgs(None, feed_dict={a_tensor: [5]})
        hooks[1].request = SessionRunArgs(None, feed_dict={b_tensor: [10]})
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            assert await sess.run(fetches=add_tensor) == [15]

    async def test_both_hooks_and_user_have_feeds(
        self, graph: tf.Graph, kind: str
    ) -> None:
        """ms_test HookedSessionTest.testBothHooksAndUserHaveFeeds."""
        hooks = [fake_hook(kind), fake_hook(kind)]
        a_tensor = tf.constant([0], name="a_tensor")
        b_tensor = tf.constant([0], name="b_tensor")
        c_tensor = tf.constant([0], name="c_tensor")
        add_tensor = a_tensor + b_tensor + c_tensor
        hooks[0].request = SessionRunArgs(None, feed_dict={a_tensor: [5]})
        hooks[1].request = SessionRunArgs(None, feed_dict={b_tensor: [10]})
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            feed_dict = {c_tensor: [20]}
            assert await sess.run(fetches=add_tensor, feed_dict=feed_dict) == [35]
            # The user's feed_dict is not changed.
            assert len(feed_dict) == 1

    async def test_hooks_feed_conflicts(self, graph: tf.Graph, kind: str) -> None:
        """ms_test HookedSessionTest.testHooksFeedConflicts."""
        hooks = [fake_hook(kind), fake_hook(kind)]
        a_tensor = tf.constant([0], name="a_tensor")
        b_tensor = tf.constant([0], name="b_tensor")
        add_tensor = a_tensor + b_tensor
        hooks[0].request = SessionRunArgs(None, feed_dict={a_tensor: [5]})
        hooks[1].request = SessionRunArgs(None, feed_dict={a_tensor: [10]})
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            with pytest.raises(RuntimeError, match="Same tensor is fed by two hooks"):
                await sess.run(fetches=add_tensor)

    async def test_hooks_and_user_feed_conflicts(
        self, graph: tf.Graph, kind: str
    ) -> None:
        """ms_test HookedSessionTest.testHooksAndUserFeedConflicts."""
        hooks = [fake_hook(kind), fake_hook(kind)]
        a_tensor = tf.constant([0], name="a_tensor")
        b_tensor = tf.constant([0], name="b_tensor")
        add_tensor = a_tensor + b_tensor
        hooks[0].request = SessionRunArgs(None, feed_dict={a_tensor: [5]})
        hooks[1].request = SessionRunArgs(None, feed_dict={b_tensor: [10]})
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            with pytest.raises(
                RuntimeError, match="Same tensor is fed by a SessionRunHook and user"
            ):
                await sess.run(fetches=add_tensor, feed_dict={b_tensor: [10]})


# -- MonitoredSessionTest: steps, checkpoints, retries ------------------------------


async def save_with(sess: Any, saver: Any, path: str) -> str:
    """Save through the raw session of *sess* (TF reads
    session._coordinated_creator)."""

    def step_fn(step_context: Any) -> str:
        return str(saver.save(step_context.session, path))

    return str(await sess.run_step_fn(step_fn))


def load_ckpt_creator(saver: Any, path: str) -> Any:
    def load_ckpt(scaffold: Any, sess: Any) -> None:
        saver.restore(sess, path)

    return asyncsess.ChiefSessionCreator(v1.train.Scaffold(init_fn=load_ckpt))


class TestMonitoredSession:
    async def test_defaults(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_defaults."""
        a_var = v1.Variable(0)
        async with asyncsess.MonitoredSession() as session:
            assert await session.run(a_var) == 0

    @pytest.mark.parametrize("kind", HOOK_KINDS)
    async def test_last_step(self, graph: tf.Graph, tmp_path: Path, kind: str) -> None:
        """ms_test MonitoredSessionTest.test_last_step."""
        gstep, do_step = gstep_and_inc()
        saver = v1.train.Saver()
        hooks = [std_hook(kind, "StopAtStepHook", last_step=3)]
        async with asyncsess.MonitoredSession(hooks=hooks) as session:
            assert await session.run(gstep) == 0
            assert not session.should_stop()
            assert await session.run(do_step) == 1
            assert not session.should_stop()
            assert await session.run(do_step) == 2
            assert not session.should_stop()
            assert await session.run(do_step) == 3
            assert session.should_stop()
            save_path = await save_with(session, saver, str(tmp_path / "step-3"))
        hooks = [std_hook(kind, "StopAtStepHook", last_step=5)]
        creator = load_ckpt_creator(saver, save_path)
        async with asyncsess.MonitoredSession(creator, hooks) as session:
            assert await session.run(gstep) == 3
            assert not session.should_stop()
            assert await session.run(do_step) == 4
            assert not session.should_stop()
            assert await session.run(do_step) == 5
            assert session.should_stop()

    @pytest.mark.parametrize("kind", HOOK_KINDS)
    async def test_num_steps(self, graph: tf.Graph, tmp_path: Path, kind: str) -> None:
        """ms_test MonitoredSessionTest.test_num_steps."""
        _, do_step = gstep_and_inc()
        saver = v1.train.Saver()
        hooks = [std_hook(kind, "StopAtStepHook", num_steps=3)]
        async with asyncsess.MonitoredSession(hooks=hooks) as session:
            await session.run(do_step)
            assert not session.should_stop()
            await session.run(do_step)
            assert not session.should_stop()
            await session.run(do_step)
            assert session.should_stop()
            save_path = await save_with(session, saver, str(tmp_path / "step-3"))
        hooks = [std_hook(kind, "StopAtStepHook", num_steps=4)]
        creator = load_ckpt_creator(saver, save_path)
        async with asyncsess.MonitoredSession(creator, hooks) as session:
            assert await session.run(do_step) == 4
            assert not session.should_stop()
            await session.run(do_step)
            assert not session.should_stop()
            await session.run(do_step)
            assert not session.should_stop()
            await session.run(do_step)
            assert session.should_stop()

    @pytest.mark.parametrize("kind", HOOK_KINDS)
    async def test_recovery(self, graph: tf.Graph, tmp_path: Path, kind: str) -> None:
        """ms_test MonitoredSessionTest.test_recovery."""
        gstep, do_step = gstep_and_inc()
        logdir = str(tmp_path)
        scaffold = v1.train.Scaffold()
        hooks = [
            std_hook(
                kind, "CheckpointSaverHook", logdir, save_steps=1, scaffold=scaffold
            )
        ]
        creator = asyncsess.ChiefSessionCreator(scaffold, checkpoint_dir=logdir)
        async with asyncsess.MonitoredSession(creator, hooks) as session:
            assert await session.run(gstep) == 0
            assert await session.run(do_step) == 1
            assert await session.run(do_step) == 2
        creator = asyncsess.ChiefSessionCreator(scaffold, checkpoint_dir=logdir)
        async with asyncsess.MonitoredSession(creator) as session:
            assert await session.run(gstep) == 2
        creator = asyncsess.ChiefSessionCreator(
            scaffold, checkpoint_filename_with_path=v1.train.latest_checkpoint(logdir)
        )
        async with asyncsess.MonitoredSession(creator) as session:
            assert await session.run(gstep) == 2

    async def test_retry_initialization_on_aborted_error(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_retry_initialization_on_aborted_error."""
        gstep = v1.train.get_or_create_global_step()
        raised: list[bool] = []

        def _init_fn(scaffold: Any, session: Any) -> None:
            if not raised:
                raised.append(True)
                raise errors.AbortedError(None, None, "Abort")

        creator = asyncsess.ChiefSessionCreator(
            scaffold=v1.train.Scaffold(init_fn=_init_fn)
        )
        async with asyncsess.MonitoredSession(creator) as session:
            assert not session.should_stop()
            assert await session.run(gstep) == 0
        assert raised

    @pytest.mark.parametrize("error", [errors.AbortedError, errors.UnavailableError])
    async def test_retry_on_preemption(self, graph: tf.Graph, error: Any) -> None:
        """ms_test MonitoredSessionTest.test_retry_on_aborted_error and
        test_retry_on_unavailable_error (_retry_test)."""
        gstep, do_step = gstep_and_inc()
        hook = RaiseOnceAtCountN(4, error(None, None, "preempted"))
        async with asyncsess.MonitoredSession(hooks=[hook]) as session:
            assert await session.run(gstep) == 0
            assert await session.run(do_step) == 1
            assert await session.run(do_step) == 2
            assert not session.should_stop()
            # Step 3 raises: a fresh, initialized session, so back at 0 + 1.
            assert await session.run(do_step) == 1
            assert not session.should_stop()
            assert hook.raised
            assert await session.run(do_step) == 2
            assert not session.should_stop()

    @pytest.mark.parametrize("kind", HOOK_KINDS)
    async def test_recover_and_retry_on_aborted_error(
        self, graph: tf.Graph, tmp_path: Path, kind: str
    ) -> None:
        """ms_test MonitoredSessionTest.test_recover_and_retry_on_aborted_error."""
        gstep, do_step = gstep_and_inc()
        logdir = str(tmp_path)
        scaffold = v1.train.Scaffold()
        abort_hook = RaiseOnceAtCountN(4, errors.AbortedError(None, None, "Abort"))
        ckpt_hook = std_hook(
            kind, "CheckpointSaverHook", logdir, save_steps=1, scaffold=scaffold
        )
        creator = asyncsess.ChiefSessionCreator(scaffold, checkpoint_dir=logdir)
        async with asyncsess.MonitoredSession(creator, [abort_hook, ckpt_hook]) as sess:
            assert await sess.run(gstep) == 0
            assert await sess.run(do_step) == 1
            assert await sess.run(do_step) == 2
            assert not sess.should_stop()
            # Step 3 raises: restored from the checkpoint at 2, retried.
            assert await sess.run(do_step) == 3
            assert abort_hook.raised
            assert not sess.should_stop()
            assert await sess.run(do_step) == 4
            assert not sess.should_stop()


# -- MonitoredSessionTest / SingularMonitoredSessionTest: exits and errors ---------

SESSION_CLASSES = [asyncsess.MonitoredSession, asyncsess.SingularMonitoredSession]
SESSION_IDS = ["monitored", "singular"]


def make_session(cls: Any, hooks: Any = None) -> Any:
    return cls(hooks=hooks, stop_grace_period_secs=GRACE)


class TestExits:
    @pytest.mark.parametrize("cls", SESSION_CLASSES, ids=SESSION_IDS)
    async def test_exit_cleanly_on_out_of_range_exception(
        self, graph: tf.Graph, cls: Any
    ) -> None:
        """ms_test
        (Singular)MonitoredSessionTest.test_exit_cleanly_on_out_of_range_exception."""
        gstep, do_step = gstep_and_inc()
        hook = RaiseOnceAtCountN(2, errors.OutOfRangeError(None, None, "EOI"))
        session = make_session(cls, [hook])
        after_the_raise = False
        async with session:
            assert await session.run(gstep) == 0
            assert not session.should_stop()
            await session.run(do_step)
            after_the_raise = True
        assert not after_the_raise
        assert session.should_stop()

    @pytest.mark.parametrize("where", ["before_run", "after_run"])
    async def test_exit_cleanly_on_stop_iteration_exception(
        self, graph: tf.Graph, where: str
    ) -> None:
        """ms_test MonitoredSessionTest.test_exit_cleanly_on_stop_iteration_exception
        (before_run, as TF's test; after_run as well).

        TF: a TF hook raising StopIteration ends the with block cleanly and
        should_stop() is True.
        """
        gstep, do_step = gstep_and_inc()
        cls = (
            RaiseOnceAtCountN if where == "before_run" else RaiseOnceInAfterRunAtCountN
        )
        # TensorFlow's own session, for reference.
        tf_session = v1.train.MonitoredSession(hooks=[cls(2, StopIteration)])
        tf_after_the_raise = False
        with tf_session:
            assert tf_session.run(gstep) == 0
            tf_session.run(do_step)
            tf_after_the_raise = True
        assert not tf_after_the_raise
        assert tf_session.should_stop()

        hook = cls(2, StopIteration)
        session = make_session(asyncsess.MonitoredSession, [hook])
        after_the_raise = False
        async with session:
            assert await session.run(gstep) == 0
            assert not session.should_stop()
            await session.run(do_step)
            after_the_raise = True
        assert hook.raised
        assert not after_the_raise
        assert session.should_stop()

    async def test_stop_iteration_in_with_body_exits_cleanly(
        self, graph: tf.Graph
    ) -> None:
        """MonitoredSession.__exit__ swallows StopIteration from the block itself."""
        hook = FakeHook()
        session = make_session(asyncsess.MonitoredSession, [hook])
        async with session:
            raise StopIteration
        assert session.should_stop()
        assert hook.call_counter["end"] == 1

    async def test_regular_exception_pass_through_run(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_regular_exception_pass_through_run."""
        gstep, do_step = gstep_and_inc()
        hook = RaiseOnceAtCountN(4, RuntimeError("regular exception"))
        session = make_session(asyncsess.MonitoredSession, [hook])
        with pytest.raises(RuntimeError, match="regular exception"):
            async with session:
                assert await session.run(gstep) == 0
                assert await session.run(do_step) == 1
                assert await session.run(do_step) == 2
                assert not session.should_stop()
                await session.run(do_step)
                pytest.fail("not reached")
        assert hook.raised
        assert session.should_stop()

    @pytest.mark.parametrize("cls", SESSION_CLASSES, ids=SESSION_IDS)
    async def test_regular_exception_reported_to_coord_pass_through_run(
        self, graph: tf.Graph, cls: Any
    ) -> None:
        """ms_test (Singular)MonitoredSessionTest.
        test_regular_exception_reported_to_coord_pass_through_run.

        TF: after a thread reports an error to the coordinator, run() still
        performs normally; the error is raised when the with block exits.
        """
        gstep = v1.train.get_or_create_global_step()
        tf_cls = (
            v1.train.MonitoredSession
            if cls is asyncsess.MonitoredSession
            else v1.train.SingularMonitoredSession
        )
        tf_grabber = TFCoordGrabber()
        tf_ran = False
        with pytest.raises(RuntimeError, match="a thread wants to stop"):
            with tf_cls(hooks=[tf_grabber]) as tf_session:
                assert tf_session.run(gstep) == 0
                report(tf_grabber.coord, RuntimeError("a thread wants to stop"))
                assert tf_session.run(gstep) == 0
                tf_ran = True
        assert tf_ran

        grabber = CoordGrabber()
        session = make_session(cls, [grabber])
        second: Any = None
        with pytest.raises(RuntimeError, match="a thread wants to stop"):
            async with session:
                assert await session.run(gstep) == 0
                report(grabber.coord, RuntimeError("a thread wants to stop"))
                # run() performs normally.
                second = await run_outcome(session, gstep)
        assert second == 0

    @pytest.mark.parametrize("step_hooks", [False, True])
    async def test_regular_exception_reported_to_coord_pass_through_return(
        self, graph: tf.Graph, step_hooks: bool
    ) -> None:
        """ms_test MonitoredSessionTest.
        test_regular_exception_reported_to_coord_pass_through_return.

        TF: should_stop() is True (it does not raise); leaving the block raises.
        """
        gstep = v1.train.get_or_create_global_step()
        grabber, hooks = grabber_and_hooks(step_hooks)
        session = make_session(asyncsess.MonitoredSession, hooks)
        stopped: Any = None
        with pytest.raises(RuntimeError, match="a thread wants to stop"):
            async with session:
                assert await session.run(gstep) == 0
                report(grabber.coord, RuntimeError("a thread wants to stop"))
                stopped = stop_state(session)
        assert stopped is True

    @pytest.mark.parametrize("step_hooks", [False, True])
    async def test_non_preemption_error_requested_in_after_create_session(
        self, graph: tf.Graph, step_hooks: bool
    ) -> None:
        """The coordinator gets an UnknownError in after_create_session (as a
        thread started there would report it): TF's rule of
        test_recovery_from_non_preemption_in_coordinator.

        TF: should_stop() is True, the session is not recreated, and the with
        exit raises the error.
        """
        gstep = v1.train.get_or_create_global_step()

        class TFRequestStop(v1.train.SessionRunHook):
            created = 0

            def after_create_session(self, session: Any, coord: Any) -> None:
                self.created += 1
                report(coord, errors.UnknownError(None, None, "fatal in a thread"))

        tf_hook = TFRequestStop()
        tf_stopped = False
        with pytest.raises(errors.UnknownError, match="fatal in a thread"):
            with v1.train.MonitoredSession(hooks=[tf_hook]) as tf_session:
                assert tf_session.should_stop()
                tf_stopped = True
        assert tf_stopped
        assert tf_hook.created == 1

        class RequestStop(asyncsess.SessionRunHook):
            created = 0

            async def after_create_session(self, session: Any, coord: Any) -> None:
                self.created += 1
                report(coord, errors.UnknownError(None, None, "fatal in a thread"))

        hook = RequestStop()
        _, others = grabber_and_hooks(step_hooks)
        session = make_session(asyncsess.MonitoredSession, [hook, *others])
        stopped: Any = None
        with pytest.raises(errors.UnknownError, match="fatal in a thread"):
            async with session:
                stopped = stop_state(session)
        assert stopped is True
        assert hook.created == 1
        del gstep

    async def test_non_preemption_error_from_a_queue_runner(
        self, graph: tf.Graph
    ) -> None:
        """No hooks: a TF QueueRunner whose enqueue op fails reports the error to
        the coordinator and closes the queue.

        TF: the blocked dequeue ends (OutOfRangeError), should_stop() is True,
        and the with exit raises the runner's error. (asyncsess raises the
        runner's error from that run() instead; both are accepted here.)
        """
        queue = tf.queue.FIFOQueue(4, tf.float32, shapes=[])
        bad = tf.debugging.check_numerics(tf.constant(np.nan), "bad input")
        v1.train.add_queue_runner(v1.train.QueueRunner(queue, [queue.enqueue(bad)]))
        dequeue = queue.dequeue()

        tf_stopped = False
        with pytest.raises(errors.InvalidArgumentError, match="bad input"):
            with v1.train.MonitoredSession(stop_grace_period_secs=GRACE) as tf_session:
                with pytest.raises(errors.OutOfRangeError):
                    tf_session.run(dequeue)
                assert tf_session.should_stop()
                tf_stopped = True
        assert tf_stopped

        stopped: Any = None
        with pytest.raises(errors.InvalidArgumentError, match="bad input"):
            async with make_session(asyncsess.MonitoredSession) as session:
                with pytest.raises(
                    (errors.OutOfRangeError, errors.InvalidArgumentError)
                ):
                    await session.run(dequeue)
                stopped = stop_state(session)
        assert stopped is True

    @pytest.mark.parametrize("cls", SESSION_CLASSES, ids=SESSION_IDS)
    async def test_stop_cleanly_when_no_exception_in_with_body(
        self, graph: tf.Graph, cls: Any
    ) -> None:
        """ms_test
        (Singular)MonitoredSessionTest.test_stop_cleanly_when_no_exception_in_with_body."""
        _, do_step = gstep_and_inc()
        session = make_session(cls)
        async with session:
            assert await session.run(do_step) == 1
            assert await session.run(do_step) == 2
            assert not session.should_stop()
        assert session.should_stop()
        with pytest.raises(RuntimeError):
            await session.run(do_step)  # closed (asyncsess: RuntimeError on purpose)

    @pytest.mark.parametrize("cls", SESSION_CLASSES, ids=SESSION_IDS)
    async def test_raises_regular_exceptions_in_with_body(
        self, graph: tf.Graph, cls: Any
    ) -> None:
        """ms_test
        (Singular)MonitoredSessionTest.test_raises_regular_exceptions_in_with_body."""
        _, do_step = gstep_and_inc()
        session = make_session(cls)
        with pytest.raises(RuntimeError, match="regular exception"):
            async with session:
                assert await session.run(do_step) == 1
                assert await session.run(do_step) == 2
                assert not session.should_stop()
                raise RuntimeError("regular exception")
        assert session.should_stop()

    async def test_with_statement_and_close(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_with_statement_and_close.

        TF raises 'Session is already closed'; asyncsess: closing twice is
        harmless (API.md, on purpose).
        """
        async with asyncsess.MonitoredSession() as session:
            await session.close()
        assert session.should_stop()

    async def test_do_not_handle_aborted_error(self, graph: tf.Graph) -> None:
        """ms_test SingularMonitoredSessionTest.test_do_not_handle_aborted_error."""
        gstep = v1.train.get_or_create_global_step()

        class _RaiseAbortedHook(v1.train.SessionRunHook):
            def before_run(self, run_context: Any) -> None:
                raise errors.AbortedError(None, None, "Abort")

        async with asyncsess.SingularMonitoredSession(
            hooks=[_RaiseAbortedHook()]
        ) as session:
            with pytest.raises(errors.AbortedError, match="Abort"):
                await session.run(gstep)

        with pytest.raises(errors.AbortedError, match="Abort"):
            async with asyncsess.SingularMonitoredSession(
                hooks=[_RaiseAbortedHook()]
            ) as session:
                await session.run(gstep)


# -- graph, run options, raw session -------------------------------------------------


class TestGraphAndOptions:
    @pytest.mark.parametrize("cls", SESSION_CLASSES, ids=SESSION_IDS)
    async def test_graph(self, graph: tf.Graph, cls: Any) -> None:
        """ms_test (Singular)MonitoredSessionTest.test_graph."""
        async with make_session(cls) as session:
            assert session.graph is graph

    async def test_graph_finalized_during_run_unfinalized_after_exit(
        self, graph: tf.Graph
    ) -> None:
        """ms_test
        MonitoredSessionTest.test_graph_finalized_during_run_unfinalized_after_exit."""
        a_var = v1.Variable(0)
        async with asyncsess.MonitoredSession() as session:
            assert await session.run(a_var) == 0
            assert graph.finalized
        assert not graph.finalized

    async def test_keep_finalized_graph_as_finalized(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_keep_finalized_graph_as_finalized."""
        a_var = v1.Variable(0)
        v1.train.Scaffold().finalize()
        async with asyncsess.MonitoredSession() as session:
            assert await session.run(a_var) == 0
            assert graph.finalized
        assert graph.finalized

    async def test_handles_initialization(self, graph: tf.Graph) -> None:
        """ms_test SingularMonitoredSessionTest.test_handles_initialization."""
        a_var = v1.Variable(0)
        async with asyncsess.SingularMonitoredSession() as session:
            assert await session.run(a_var) == 0

    async def test_raw_session(self, graph: tf.Graph) -> None:
        """ms_test SingularMonitoredSessionTest.test_raw_session."""
        a_var = v1.Variable(0)
        async with asyncsess.SingularMonitoredSession() as session:
            raw = session.raw_session()
            assert isinstance(raw, v1.Session)
            assert raw.run(a_var) == 0

    async def test_merge_run_options_from_hooks(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_merge_run_options_from_hooks."""
        my_const = tf.constant(42, name="my_const")
        tf.constant(24, name="my_const_2")
        watch_a = debug_pb2.DebugTensorWatch(
            node_name="my_const", output_slot=0, debug_ops=["DebugIdentity"]
        )
        hook_a = RunOptionsMetadataHook(2, 30000, False, watch_a, False)
        watch_b = debug_pb2.DebugTensorWatch(
            node_name="my_const_2", output_slot=0, debug_ops=["DebugIdentity"]
        )
        hook_b = RunOptionsMetadataHook(3, 60000, True, watch_b, True)
        async with asyncsess.MonitoredSession(hooks=[hook_a, hook_b]) as session:
            assert await session.run(my_const) == 42
        assert hook_b.run_options_list == [
            config_pb2.RunOptions(
                trace_level=3,
                timeout_in_ms=60000,
                output_partition_graphs=True,
                debug_options=debug_pb2.DebugOptions(
                    debug_tensor_watch_opts=[watch_a, watch_b]
                ),
                report_tensor_allocations_upon_oom=True,
            )
        ]
        assert len(hook_b.run_metadata_list) == 1
        assert isinstance(hook_b.run_metadata_list[0], config_pb2.RunMetadata)
        assert len(hook_b.run_metadata_list[0].partition_graphs) > 0

    async def test_merge_caller_and_hook_run_options(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_merge_caller_and_hook_run_options."""
        my_const = tf.constant(42, name="my_const")
        tf.constant(24, name="my_const_2")
        hook_watch = debug_pb2.DebugTensorWatch(
            node_name="my_const_2", output_slot=0, debug_ops=["DebugIdentity"]
        )
        hook = RunOptionsMetadataHook(2, 60000, False, hook_watch, False)
        async with asyncsess.MonitoredSession(hooks=[hook]) as session:
            caller_watch = debug_pb2.DebugTensorWatch(
                node_name="my_const", output_slot=0, debug_ops=["DebugIdentity"]
            )
            caller_options = config_pb2.RunOptions(
                trace_level=3,
                timeout_in_ms=30000,
                output_partition_graphs=True,
                report_tensor_allocations_upon_oom=True,
            )
            caller_options.debug_options.debug_tensor_watch_opts.extend([caller_watch])
            assert await session.run(my_const, options=caller_options) == 42
        assert hook.run_options_list == [
            config_pb2.RunOptions(
                trace_level=3,
                timeout_in_ms=60000,
                output_partition_graphs=True,
                debug_options=debug_pb2.DebugOptions(
                    debug_tensor_watch_opts=[caller_watch, hook_watch]
                ),
                report_tensor_allocations_upon_oom=True,
            )
        ]
        assert len(hook.run_metadata_list) == 1
        assert len(hook.run_metadata_list[0].partition_graphs) > 0


# -- run_step_fn ------------------------------------------------------------------


STEP_KINDS = ["plain", "async"]


class TestStepFn:
    @pytest.mark.parametrize("step_kind", STEP_KINDS)
    async def test_step_fn_example(self, graph: tf.Graph, step_kind: str) -> None:
        """ms_test MonitoredSessionTest.test_step_fn_example."""
        c = v1.placeholder(tf.float32)
        v = tf.identity(c)

        def step_fn(step_context: Any) -> Any:
            return step_context.run_with_hooks(fetches=v, feed_dict={c: 3.2})

        async def async_step_fn(step_context: Any) -> Any:
            return await step_context.run_with_hooks(fetches=v, feed_dict={c: 3.2})

        fn = step_fn if step_kind == "plain" else async_step_fn
        async with asyncsess.MonitoredSession() as session:
            assert await session.run_step_fn(fn) == pytest.approx(3.2)

    async def test_step_function_stops(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_step_function_stops."""

        def step_fn(step_context: Any) -> None:
            step_context.request_stop()

        async with asyncsess.MonitoredSession() as session:
            assert await session.run_step_fn(step_fn) is None
            assert session.should_stop()

    async def test_step_request_stop_without_a_with_block(
        self, graph: tf.Graph
    ) -> None:
        """ms_test MonitoredSessionTest.test_step_request_stop_without_a_with_block.

        TF raises StopIteration and should_stop() stays False; asyncsess (API.md,
        on purpose): run_step_fn returns None and should_stop() is True. A session
        opened with open() instead of async with.
        """

        def step_fn(step_context: Any) -> None:
            step_context.request_stop()

        session = asyncsess.MonitoredSession()
        await session.open()
        try:
            assert await session.run_step_fn(step_fn) is None
            assert session.should_stop()
        finally:
            await session.close()

    async def test_step_request_stop_in_a_loop(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_step_request_stop_in_a_loop (the loop
        ends after one step_fn; asyncsess returns None instead of raising)."""
        calls = 0

        def step_fn(step_context: Any) -> None:
            nonlocal calls
            calls += 1
            step_context.request_stop()

        async with asyncsess.MonitoredSession() as session:
            while not session.should_stop():
                assert await session.run_step_fn(step_fn) is None
        assert calls == 1

    async def test_step_request_stop_with_returning_a_type(
        self, graph: tf.Graph
    ) -> None:
        """ms_test MonitoredSessionTest.test_step_request_stop_with_returning_a_type."""

        def step_fn(step_context: Any) -> str:
            del step_context
            return "a type"

        async with asyncsess.MonitoredSession() as session:
            assert await session.run_step_fn(step_fn) == "a type"

    async def test_step_with_extra_arguments(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_step_with_extra_arguments."""

        def step_fn(step_context: Any, extra_foo: Any) -> None:
            del step_context, extra_foo

        async with asyncsess.MonitoredSession() as session:
            with pytest.raises(
                ValueError,
                match="`step_fn` may either have one `step_context` argument",
            ):
                await session.run_step_fn(step_fn)

    async def test_step_fn_belongs_to_a_class(self, graph: tf.Graph) -> None:
        """ms_test MonitoredSessionTest.test_step_fn_belongs_to_a_class."""
        c = v1.placeholder(tf.float32)
        v = tf.identity(c)

        class Model:
            def step_fn(self, step_context: Any) -> Any:
                return step_context.run_with_hooks(fetches=v, feed_dict={c: 3.2})

        async with asyncsess.MonitoredSession() as session:
            assert await session.run_step_fn(Model().step_fn) == pytest.approx(3.2)

    async def test_step_fn_belongs_to_a_class_and_has_extra_methods(
        self, graph: tf.Graph
    ) -> None:
        """ms_test
        MonitoredSessionTest.test_step_fn_belongs_to_a_class_and_has_extra_methods."""

        class Model:
            def step_fn(self, step_context: Any, extra_foo: Any) -> None:
                del step_context, extra_foo

        async with asyncsess.MonitoredSession() as session:
            with pytest.raises(
                ValueError,
                match="`step_fn` may either have one `step_context` argument",
            ):
                await session.run_step_fn(Model().step_fn)

    @pytest.mark.parametrize("cls", SESSION_CLASSES, ids=SESSION_IDS)
    async def test_step_fn_with_hooks(self, graph: tf.Graph, cls: Any) -> None:
        """ms_test MonitoredSessionTest.test_step_fn_with_hooks and
        test_step_fn_has_the_same_hooks_behavior_without_recovery (singular)."""
        var = v1.Variable(0.0, use_resource=True)
        stage_0 = v1.assign_add(var, 0.3)
        stage_1_0 = v1.assign_add(var, 0.7)
        with tf.control_dependencies([stage_1_0]):
            stage_1_1 = v1.assign_add(var, 0.5)
        stage_2 = v1.assign_add(var, 1.1)
        checks: list[tuple[float, float]] = []

        class Hook(v1.train.SessionRunHook):
            def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(fetches=stage_1_0)

            def after_run(self, run_context: Any, run_values: Any) -> None:
                checks.append(
                    (run_context.session.run(var), run_context.session.run(stage_2))
                )

        stage_0_seen: list[float] = []

        def step_fn(step_context: Any) -> Any:
            stage_0_seen.append(step_context.session.run(stage_0))
            return step_context.run_with_hooks(fetches=stage_1_1)

        async with make_session(cls, [Hook()]) as session:
            assert await session.run_step_fn(step_fn) == pytest.approx(0.3 + 0.5 + 0.7)
        assert stage_0_seen == [pytest.approx(0.3)]
        assert checks == [
            (pytest.approx(0.3 + 0.5 + 0.7), pytest.approx(0.3 + 0.5 + 0.7 + 1.1))
        ]

    @pytest.mark.parametrize("kind", HOOK_KINDS)
    async def test_step_fn_with_hooks_and_request_stop(
        self, graph: tf.Graph, kind: str
    ) -> None:
        """ms_test MonitoredSessionTest.test_step_fn_with_hooks_and_request_stop."""
        hook = fake_hook(kind)

        def step_fn(step_context: Any) -> None:
            step_context.request_stop()

        async with asyncsess.MonitoredSession(hooks=[hook]) as session:
            assert await session.run_step_fn(step_fn) is None
            assert session.should_stop()
            # request_stop() in a step_fn interrupts the flow of running the hooks.
            assert hook.call_counter["before_run"] == 0
            assert hook.call_counter["after_run"] == 0

    @pytest.mark.parametrize("step_kind", STEP_KINDS)
    async def test_recovers_from_an_exception_in_step_fn(
        self, graph: tf.Graph, step_kind: str
    ) -> None:
        """ms_test MonitoredSessionTest.test_recovers_from_an_exception_in_step_fn."""
        c = v1.placeholder(tf.float32)
        v = tf.identity(c)
        run_already: list[bool] = []

        def step_fn(step_context: Any) -> Any:
            if not run_already:
                run_already.append(True)
                raise errors.AbortedError(None, None, "Abort")
            return step_context.run_with_hooks(fetches=v, feed_dict={c: 3.2})

        async def async_step_fn(step_context: Any) -> Any:
            if not run_already:
                run_already.append(True)
                raise errors.AbortedError(None, None, "Abort")
            return await step_context.run_with_hooks(fetches=v, feed_dict={c: 3.2})

        fn = step_fn if step_kind == "plain" else async_step_fn
        async with asyncsess.MonitoredSession() as session:
            assert await session.run_step_fn(fn) == pytest.approx(3.2)
        assert run_already

    @pytest.mark.parametrize("step_kind", STEP_KINDS)
    async def test_recovers_from_an_exception_in_step_fn_after_hooks(
        self, graph: tf.Graph, raw_session: Any, step_kind: str
    ) -> None:
        """ms_test
        MonitoredSessionTest.test_recovers_from_an_exception_in_step_fn_after_hooks."""
        c = v1.placeholder(tf.float32)
        v = tf.identity(c)
        graph_state = v1.Variable(0.0)
        graph_side_effect = v1.assign_add(graph_state, 0.31)
        init = v1.global_variables_initializer()
        trace = {"run_already": False, "side_effect_counter": 0}

        def step_fn(step_context: Any) -> Any:
            trace["side_effect_counter"] += 1
            step_context.session.run(graph_side_effect)
            value = step_context.run_with_hooks(fetches=v, feed_dict={c: 3.2})
            if not trace["run_already"]:
                trace["run_already"] = True
                raise errors.AbortedError(None, None, "Abort")
            return value

        async def async_step_fn(step_context: Any) -> Any:
            trace["side_effect_counter"] += 1
            step_context.session.run(graph_side_effect)
            value = await step_context.run_with_hooks(fetches=v, feed_dict={c: 3.2})
            if not trace["run_already"]:
                trace["run_already"] = True
                raise errors.AbortedError(None, None, "Abort")
            return value

        fn = step_fn if step_kind == "plain" else async_step_fn
        creator = CountingSessionCreator(raw_session)
        async with asyncsess.MonitoredSession(creator) as session:
            await session.run(init)
            assert await session.run_step_fn(fn) == pytest.approx(3.2)
            assert trace["run_already"]
            # The rest of the step_fn's body is re-executed upon AbortedError.
            assert trace["side_effect_counter"] == 2
            assert await session.run(graph_state) == pytest.approx(0.62)

    async def test_step_fn_doesnt_recover_when_it_wasnt_asked_to(
        self, graph: tf.Graph
    ) -> None:
        """ms_test
        MonitoredSessionTest.test_step_fn_doesnt_recover_when_it_wasnt_asked_to."""
        c = v1.placeholder(tf.float32)
        v = tf.identity(c)
        run_already: list[bool] = []

        def step_fn(step_context: Any) -> Any:
            if not run_already:
                run_already.append(True)
                raise errors.AbortedError(None, None, "Abort")
            return step_context.run_with_hooks(fetches=v, feed_dict={c: 3.2})

        async with asyncsess.SingularMonitoredSession() as session:
            with pytest.raises(errors.AbortedError, match="Abort"):
                await session.run_step_fn(step_fn)
        assert run_already

    @pytest.mark.parametrize("step_kind", STEP_KINDS)
    async def test_step_fn_exception_from_before_run(
        self, graph: tf.Graph, raw_session: Any, step_kind: str
    ) -> None:
        """ms_test MonitoredSessionTest.test_step_fn_exception_from_before_run.

        TF: a hook's before_run raising AbortedError inside run_with_hooks
        recovers by calling the step_fn again: its side effects run twice.
        """
        c = v1.placeholder(tf.float32)
        v = tf.identity(c)
        vv = tf.constant(3.2)
        graph_state = v1.Variable(0.0)
        graph_side_effect = v1.assign_add(graph_state, 0.31)
        init = v1.global_variables_initializer()

        def make(trace: dict[str, Any]) -> tuple[Any, Any, Any]:
            class Hook(v1.train.SessionRunHook):
                def before_run(self, run_context: Any) -> Any:
                    if not trace["run_already"]:
                        trace["run_already"] = True
                        raise errors.AbortedError(None, None, "Abort")
                    return SessionRunArgs(fetches=vv)

                def after_run(self, run_context: Any, run_values: Any) -> None:
                    trace["hook_results"].append(run_values.results)

            def step_fn(step_context: Any) -> Any:
                trace["side_effect_counter"] += 1
                step_context.session.run(graph_side_effect)
                return step_context.run_with_hooks(fetches=v, feed_dict={c: 1.3})

            async def async_step_fn(step_context: Any) -> Any:
                trace["side_effect_counter"] += 1
                step_context.session.run(graph_side_effect)
                return await step_context.run_with_hooks(fetches=v, feed_dict={c: 1.3})

            return Hook(), step_fn, async_step_fn

        def new_trace() -> dict[str, Any]:
            return {"run_already": False, "side_effect_counter": 0, "hook_results": []}

        # TensorFlow's own session, for reference.
        tf_trace = new_trace()
        tf_hook, tf_step_fn, _ = make(tf_trace)
        raw_session.run(init)
        with v1.train.MonitoredSession(
            CountingSessionCreator(raw_session), hooks=[tf_hook]
        ) as tf_session:
            assert tf_session.run_step_fn(tf_step_fn) == pytest.approx(1.3)
            assert tf_trace["side_effect_counter"] == 2
            assert tf_session.run(graph_state) == pytest.approx(0.62)

        trace = new_trace()
        hook, step_fn, async_step_fn = make(trace)
        fn = step_fn if step_kind == "plain" else async_step_fn
        creator = CountingSessionCreator(raw_session)
        async with asyncsess.MonitoredSession(creator, hooks=[hook]) as session:
            raw_session.run(init)
            assert await session.run_step_fn(fn) == pytest.approx(1.3)
            assert trace["hook_results"] == [pytest.approx(3.2)]
            assert trace["side_effect_counter"] == 2
            assert await session.run(graph_state) == pytest.approx(0.62)

    @pytest.mark.parametrize("step_kind", STEP_KINDS)
    async def test_step_fn_rerun_after_preemption_in_run_with_hooks_step(
        self, graph: tf.Graph, raw_session: Any, step_kind: str
    ) -> None:
        """Same TF mechanism as test_step_fn_exception_from_before_run, with the
        preemption raised by the device step of run_with_hooks (a raw session that
        aborts once): TF's _RecoverableSession.run_step_fn recovers around the whole
        step_fn, so it is called again."""
        c = v1.placeholder(tf.float32)
        v = tf.identity(c)
        graph_state = v1.Variable(0.0)
        graph_side_effect = v1.assign_add(graph_state, 0.31)
        init = v1.global_variables_initializer()
        raw_session.run(init)

        class AbortOnceSession:
            """The raw session, whose first run fed with {c: 1.3} aborts."""

            def __init__(self) -> None:
                self.aborted = False
                self.graph = raw_session.graph
                self.sess_str = raw_session.sess_str

            def close(self) -> None:
                pass

            def run(
                self, fetches: Any, feed_dict: Any = None, *args: Any, **kw: Any
            ) -> Any:
                if feed_dict and c in feed_dict and not self.aborted:
                    self.aborted = True
                    raise errors.AbortedError(None, None, "Abort in the step")
                return raw_session.run(fetches, feed_dict, *args, **kw)

        class Creator:
            def __init__(self) -> None:
                self.session = AbortOnceSession()
                self.created = 0

            def create_session(self) -> Any:
                self.created += 1
                return self.session

        def make(counter: list[int]) -> tuple[Any, Any]:
            def step_fn(step_context: Any) -> Any:
                counter.append(1)
                step_context.session.run(graph_side_effect)
                return step_context.run_with_hooks(fetches=v, feed_dict={c: 1.3})

            async def async_step_fn(step_context: Any) -> Any:
                counter.append(1)
                step_context.session.run(graph_side_effect)
                return await step_context.run_with_hooks(fetches=v, feed_dict={c: 1.3})

            return step_fn, async_step_fn

        tf_counter: list[int] = []
        tf_creator = Creator()
        tf_step_fn, _ = make(tf_counter)
        with v1.train.MonitoredSession(tf_creator, hooks=[FakeHook()]) as tf_session:
            assert tf_session.run_step_fn(tf_step_fn) == pytest.approx(1.3)
        assert len(tf_counter) == 2
        assert tf_creator.created == 2

        raw_session.run(init)
        counter: list[int] = []
        creator = Creator()
        step_fn, async_step_fn = make(counter)
        fn = step_fn if step_kind == "plain" else async_step_fn
        async with asyncsess.MonitoredSession(creator, hooks=[FakeHook()]) as session:
            assert await session.run_step_fn(fn) == pytest.approx(1.3)
            assert creator.created == 2
            assert len(counter) == 2
            assert raw_session.run(graph_state) == pytest.approx(0.62)


# -- basic_session_run_hooks_test: TF's hooks (and asyncsess's) in the session ----


class TestStopAtStepHook:
    @pytest.mark.parametrize("kind", HOOK_KINDS)
    @pytest.mark.parametrize(
        ("kwargs", "steps"),
        [
            # hooks_test StopAtStepTest.test_stop_based_on_last_step
            ({"last_step": 10}, [(9, False), (10, True)]),
            # hooks_test StopAtStepTest.test_stop_based_on_num_step
            ({"num_steps": 10}, [(13, False), (14, False), (15, True)]),
            # hooks_test StopAtStepTest.test_stop_based_with_multiple_steps
            ({"num_steps": 10}, [(15, True)]),
        ],
        ids=["last_step", "num_steps", "multiple_steps"],
    )
    async def test_stop(
        self,
        graph: tf.Graph,
        kind: str,
        kwargs: dict[str, int],
        steps: list[tuple[int, bool]],
    ) -> None:
        global_step = v1.train.get_or_create_global_step()
        value = v1.placeholder(tf.int64, shape=[])
        assign = v1.assign(global_step, value)
        no_op = tf.no_op()

        def init_fn(scaffold: Any, sess: Any) -> None:
            sess.run(assign, {value: 5})  # before after_create_session, as TF's test

        hook = std_hook(kind, "StopAtStepHook", **kwargs)
        creator = asyncsess.ChiefSessionCreator(v1.train.Scaffold(init_fn=init_fn))
        async with asyncsess.MonitoredSession(creator, [hook]) as sess:
            await sess.run(no_op)
            assert not sess.should_stop()
            for step, stops in steps:
                await sess.run_without_hooks(assign, {value: step})
                await sess.run(no_op)
                assert sess.should_stop() is stops


class TestLoggingTensorHook:
    @pytest.fixture
    def logged(self, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
        messages: list[Any] = []
        actual = tf_logging.info

        def mock_log(*args: Any, **kwargs: Any) -> None:
            messages.append(args)
            actual(*args, **kwargs)

        monkeypatch.setattr(tf_logging, "info", mock_log)
        return messages

    async def test_print_at_end_only(self, graph: tf.Graph, logged: list[Any]) -> None:
        """hooks_test LoggingTensorHookTest.test_print_at_end_only."""
        t = tf.constant(42.0, name="foo")
        train_op = tf.constant(3)
        hook = v1.train.LoggingTensorHook(tensors=[t.name], at_end=True)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(3):
                await sess.run(train_op)
                assert t.name not in str(logged)
        assert t.name in str(logged)

    @pytest.mark.parametrize("at_end", [False, True])
    async def test_print_every_n_steps(
        self, graph: tf.Graph, logged: list[Any], at_end: bool
    ) -> None:
        """hooks_test LoggingTensorHookTest.test_print_every_n_steps(_and_end)."""
        t = tf.constant(42.0, name="foo")
        train_op = tf.constant(3)
        hook = v1.train.LoggingTensorHook(
            tensors=[t.name], every_n_iter=10, at_end=at_end
        )
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(train_op)
            assert t.name in str(logged)
            for _ in range(3):
                logged.clear()
                for _ in range(9):
                    await sess.run(train_op)
                    assert t.name not in str(logged)
                await sess.run(train_op)
                assert t.name in str(logged)
            logged.clear()
            await sess.run(train_op)
            assert t.name not in str(logged)
            logged.clear()
        assert (t.name in str(logged)) is at_end

    async def test_print_first_step(self, graph: tf.Graph, logged: list[Any]) -> None:
        """hooks_test LoggingTensorHookTest.test_print_first_step."""
        t = tf.constant(42.0, name="foo")
        train_op = tf.constant(3)
        hook = v1.train.LoggingTensorHook(tensors={"foo": t}, every_n_iter=1)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(train_op)
            assert "foo" in str(logged)
            assert "sec" not in str(logged)  # no elapsed time at the first run

    async def test_print_formatter(self, graph: tf.Graph, logged: list[Any]) -> None:
        """hooks_test LoggingTensorHookTest.test_print_formatter."""
        t = tf.constant(42.0, name="foo")
        train_op = tf.constant(3)
        hook = v1.train.LoggingTensorHook(
            tensors=[t.name],
            every_n_iter=10,
            formatter=lambda items: f"qqq={items[t.name]}",
        )
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(train_op)
        assert logged[-1][0] == "qqq=42.0"


class MockCheckpointSaverListener(v1.train.CheckpointSaverListener):
    """hooks_test.MockCheckpointSaverListener."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.ask_for_stop = False

    def begin(self) -> None:
        self.counts["begin"] += 1

    def before_save(self, session: Any, global_step: Any) -> None:
        self.counts["before_save"] += 1

    def after_save(self, session: Any, global_step: Any) -> bool | None:
        self.counts["after_save"] += 1
        return True if self.ask_for_stop else None

    def end(self, session: Any, global_step: Any) -> None:
        self.counts["end"] += 1


def saved_step(model_dir: Any, global_step: Any) -> int:
    return int(v1.train.load_variable(str(model_dir), global_step.name))


@pytest.mark.parametrize("kind", HOOK_KINDS)
class TestCheckpointSaverHook:
    @pytest.mark.parametrize(
        ("scaffold", "listeners"),
        [(True, 1), (False, 1), (False, 2)],
        ids=["with_monitored_session", "default_saver", "two_listeners"],
    )
    async def test_listeners_with_monitored_session(
        self, graph: tf.Graph, tmp_path: Path, kind: str, scaffold: bool, listeners: int
    ) -> None:
        """hooks_test CheckpointSaverHookTest.test_listener_with_monitored_session,
        test_listener_with_default_saver, test_two_listeners_with_default_saver."""
        global_step, train_op = gstep_and_inc()
        model_dir = str(tmp_path)
        listener_list = [MockCheckpointSaverListener() for _ in range(listeners)]
        kwargs: dict[str, Any] = {}
        if scaffold:
            kwargs["scaffold"] = v1.train.Scaffold()
        hook = std_hook(
            kind,
            "CheckpointSaverHook",
            model_dir,
            save_steps=1,
            listeners=listener_list,
            **kwargs,
        )
        async with asyncsess.SingularMonitoredSession(
            hooks=[hook], checkpoint_dir=model_dir, **kwargs
        ) as sess:
            await sess.run(train_op)
            await sess.run(train_op)
            global_step_val = sess.raw_session().run(global_step)
        assert global_step_val == 2
        for listener in listener_list:
            assert dict(listener.counts) == {
                "begin": 1,
                "before_save": 3,
                "after_save": 3,
                "end": 1,
            }
        async with asyncsess.SingularMonitoredSession(
            checkpoint_dir=model_dir
        ) as sess2:
            assert await sess2.run(global_step) == 2

    async def test_listener_stops_training_in_after_save(
        self, graph: tf.Graph, tmp_path: Path, kind: str
    ) -> None:
        """hooks_test
        CheckpointSaverHookTest.test_listener_stops_training_in_after_save."""
        _, train_op = gstep_and_inc()
        scaffold = v1.train.Scaffold()
        listener = MockCheckpointSaverListener()
        hook = std_hook(
            kind,
            "CheckpointSaverHook",
            str(tmp_path),
            save_steps=1,
            scaffold=scaffold,
            listeners=[listener],
        )
        async with asyncsess.SingularMonitoredSession(
            hooks=[hook], scaffold=scaffold, checkpoint_dir=str(tmp_path)
        ) as sess:
            await sess.run(train_op)
            assert not sess.should_stop()
            await sess.run(train_op)
            assert not sess.should_stop()
            listener.ask_for_stop = True
            await sess.run(train_op)
            assert sess.should_stop()

    async def test_save_steps_saves_periodically(
        self, graph: tf.Graph, tmp_path: Path, kind: str
    ) -> None:
        """hooks_test
        CheckpointSaverHookTest.test_save_checkpoint_before_first_train_step,
        test_save_steps_saves_in_first_step and test_save_steps_saves_periodically
        (in a session, which saves at after_create_session)."""
        global_step, train_op = gstep_and_inc()
        scaffold = v1.train.Scaffold()
        hook = std_hook(
            kind, "CheckpointSaverHook", str(tmp_path), save_steps=2, scaffold=scaffold
        )
        creator = asyncsess.ChiefSessionCreator(scaffold)
        async with asyncsess.MonitoredSession(creator, [hook]) as sess:
            assert saved_step(tmp_path, global_step) == 0
            expected = [0, 2, 2, 4, 4]
            for want in expected:
                await sess.run(train_op)
                assert saved_step(tmp_path, global_step) == want

    async def test_save_saves_at_end(
        self, graph: tf.Graph, tmp_path: Path, kind: str
    ) -> None:
        """hooks_test CheckpointSaverHookTest.test_save_saves_at_end."""
        global_step, train_op = gstep_and_inc()
        scaffold = v1.train.Scaffold()
        hook = std_hook(
            kind, "CheckpointSaverHook", str(tmp_path), save_secs=600, scaffold=scaffold
        )
        creator = asyncsess.ChiefSessionCreator(scaffold)
        async with asyncsess.MonitoredSession(creator, [hook]) as sess:
            await sess.run(train_op)
            await sess.run(train_op)
        assert saved_step(tmp_path, global_step) == 2

    @pytest.mark.parametrize("save_graph_def", [True, False])
    async def test_save_graph_def(
        self, graph: tf.Graph, tmp_path: Path, kind: str, save_graph_def: bool
    ) -> None:
        """hooks_test CheckpointSaverHookTest.test_save_graph_def(_false)."""
        _, train_op = gstep_and_inc()
        scaffold = v1.train.Scaffold()
        hook = std_hook(
            kind,
            "CheckpointSaverHook",
            str(tmp_path),
            save_steps=1,
            scaffold=scaffold,
            save_graph_def=save_graph_def,
        )
        metas = os.path.join(str(tmp_path), "*.meta")
        creator = asyncsess.ChiefSessionCreator(scaffold)
        async with asyncsess.MonitoredSession(creator, [hook]) as sess:
            assert ("graph.pbtxt" in os.listdir(tmp_path)) is save_graph_def
            assert len(glob.glob(metas)) == (1 if save_graph_def else 0)
            await sess.run(train_op)
            assert len(glob.glob(metas)) == (2 if save_graph_def else 0)


@pytest.mark.parametrize("kind", HOOK_KINDS)
class TestStepCounterHook:
    async def test_step_counter_every_n_steps(
        self, graph: tf.Graph, tmp_path: Path, kind: str
    ) -> None:
        """hooks_test StepCounterHookTest.test_step_counter_every_n_steps."""
        _, train_op = gstep_and_inc()
        hook = std_hook(
            kind, "StepCounterHook", every_n_steps=10, output_dir=str(tmp_path)
        )
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(30):
                await sess.run(train_op)
        v1.summary.FileWriterCache.get(str(tmp_path)).flush()
        events = scalar_events(tmp_path)
        assert sorted(events) == [11, 21]
        for step in [11, 21]:
            assert list(events[step]) == ["global_step/sec"]
            assert events[step]["global_step/sec"] > 0

    async def test_global_step_name(
        self, graph: tf.Graph, tmp_path: Path, kind: str
    ) -> None:
        """hooks_test StepCounterHookTest.test_global_step_name."""
        with v1.variable_scope("bar"):
            foo = v1.get_variable(
                "foo",
                initializer=0,
                trainable=False,
                collections=[v1.GraphKeys.GLOBAL_STEP, v1.GraphKeys.GLOBAL_VARIABLES],
            )
        train_op = v1.assign_add(foo, 1)
        hook = std_hook(
            kind,
            "StepCounterHook",
            every_n_steps=1,
            every_n_secs=None,
            output_dir=str(tmp_path),
        )
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(train_op)
            await sess.run(train_op)
        v1.summary.FileWriterCache.get(str(tmp_path)).flush()
        events = scalar_events(tmp_path)
        assert sorted(events) == [2]
        assert list(events[2]) == ["bar/foo/sec"]


@pytest.mark.parametrize("kind", HOOK_KINDS)
class TestSummarySaverHook:
    async def test_save_steps(self, graph: tf.Graph, tmp_path: Path, kind: str) -> None:
        """hooks_test SummarySaverHookTest.test_save_steps and
        test_multiple_summaries."""
        var = v1.Variable(0.0)
        tensor = v1.assign_add(var, 1.0)
        tensor2 = tensor * 2
        summary_op = v1.summary.scalar("my_summary", tensor)
        summary_op2 = v1.summary.scalar("my_summary2", tensor2)
        _, train_op = gstep_and_inc()
        hook = std_hook(
            kind,
            "SummarySaverHook",
            save_steps=8,
            output_dir=str(tmp_path),
            summary_op=[summary_op, summary_op2],
        )
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(30):
                await sess.run(train_op)
        v1.summary.FileWriterCache.get(str(tmp_path)).flush()
        assert scalar_events(tmp_path) == {
            1: {"my_summary": 1.0, "my_summary2": 2.0},
            9: {"my_summary": 2.0, "my_summary2": 4.0},
            17: {"my_summary": 3.0, "my_summary2": 6.0},
            25: {"my_summary": 4.0, "my_summary2": 8.0},
        }


@pytest.mark.parametrize("kind", HOOK_KINDS)
class TestSmallHooks:
    async def test_global_step_waiter_not_wait_for_step_zero(
        self, graph: tf.Graph, kind: str
    ) -> None:
        """hooks_test GlobalStepWaiterHookTest.test_not_wait_for_step_zero."""
        gstep, do_step = gstep_and_inc()
        hook = std_hook(kind, "GlobalStepWaiterHook", wait_until_step=0)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            assert await sess.run(do_step) == 1
        del gstep

    async def test_final_ops_is_scalar_tensor(self, graph: tf.Graph, kind: str) -> None:
        """hooks_test FinalOpsHookTest.test_final_ops_is_scalar_tensor / _is_tensor."""
        scalar = tf.constant(4)
        vector = tf.constant([1, 6, 3, 5, 2, 4])
        hooks = [
            std_hook(kind, "FinalOpsHook", scalar),
            std_hook(kind, "FinalOpsHook", vector),
        ]
        async with asyncsess.MonitoredSession(hooks=hooks):
            pass
        assert hooks[0].final_ops_values == 4
        assert hooks[1].final_ops_values.tolist() == [1, 6, 3, 5, 2, 4]

    async def test_final_ops_with_dictionary(self, graph: tf.Graph, kind: str) -> None:
        """hooks_test FinalOpsHookTest.test_final_ops_with_dictionary."""
        final_ops = v1.placeholder(dtype=tf.float32)
        hook = std_hook(kind, "FinalOpsHook", final_ops, {final_ops: [4, -3]})
        async with asyncsess.MonitoredSession(hooks=[hook]):
            pass
        assert hook.final_ops_values.tolist() == [4, -3]

    async def test_final_ops_triggers_out_of_range_error(
        self, graph: tf.Graph, kind: str
    ) -> None:
        """hooks_test FinalOpsHookTest.test_final_ops_triggers_out_of_range_error,
        in a session: the error from end() leaves the with block (TF too)."""
        iterator = v1.data.make_one_shot_iterator(tf.data.Dataset.range(1))
        read_ops = iterator.get_next()

        tf_session = v1.train.MonitoredSession(hooks=[v1.train.FinalOpsHook(read_ops)])
        with pytest.raises(errors.OutOfRangeError, match="End of sequence"):
            with tf_session:
                tf_session.run(read_ops)

        hook = std_hook(kind, "FinalOpsHook", read_ops)
        with pytest.raises(errors.OutOfRangeError, match="End of sequence"):
            async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
                await sess.run(read_ops)

    async def test_feeding_placeholder(self, graph: tf.Graph, kind: str) -> None:
        """hooks_test FeedFnHookTest.test_feeding_placeholder."""
        x = v1.placeholder(dtype=tf.float32)
        y = x + 1
        hook = std_hook(kind, "FeedFnHook", feed_fn=lambda: {x: 1.0})
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            assert await sess.run(y) == 2

    async def test_profiler_save_steps(
        self, graph: tf.Graph, tmp_path: Path, kind: str
    ) -> None:
        """hooks_test ProfilerHookTest.test_save_steps_does_not_save_in_first_step
        and test_save_steps_saves_periodically."""
        _, train_op = gstep_and_inc()
        pattern = os.path.join(str(tmp_path), "timeline-*.json")
        hook = std_hook(kind, "ProfilerHook", save_steps=2, output_dir=str(tmp_path))
        async with asyncsess.SingularMonitoredSession(hooks=[hook]) as sess:
            assert len(glob.glob(pattern)) == 0
            for want in [0, 1, 1, 2, 2]:
                await sess.run(train_op)
                assert len(glob.glob(pattern)) == want

    @pytest.mark.parametrize("fail_on_nan_loss", [True, False])
    async def test_nan_tensor(
        self, graph: tf.Graph, kind: str, fail_on_nan_loss: bool
    ) -> None:
        """NanTensorHook in a session: fail, or request a stop (as TF's hook)."""
        loss = tf.constant(np.nan)
        train_op = tf.constant(0)
        hook = std_hook(kind, "NanTensorHook", loss, fail_on_nan_loss=fail_on_nan_loss)
        session = asyncsess.MonitoredSession(hooks=[hook])
        if fail_on_nan_loss:
            with pytest.raises(v1.train.NanLossDuringTrainingError):
                async with session as sess:
                    await sess.run(train_op)
        else:
            async with session as sess:
                await sess.run(train_op)
                assert sess.should_stop()
