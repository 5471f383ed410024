"""Cancellation at every point of a session's life, on asyncio and trio.

Each case cancels the caller at one lifecycle point, three ways: a
``fail_after`` deadline, a ``move_on_after`` deadline (both made to expire the
moment the point is reached) and cancelling a task group. Afterwards control has
returned, the session is usable or closes cleanly, every TF session made is
closed, no asyncsess or queue-runner thread is left, the graph is un-finalized
and a new session opens on the same graph. The contract is the README's
"Cancellation semantics" table.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import tensorflow as tf

import asyncsess

from ._reliability import SessionCensus, ThreadSignal, tf_sessions
from .conftest import Model

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio

__all__ = ["tf_sessions"]

HOWS = ("fail_after", "move_on_after", "task_group")
#: Generous bound on each whole case; a hang fails the test instead of the suite.
BOUND = 20
#: (backend, point) -> how many ways it was cancelled; printed at the end.
TRIED: collections.Counter[tuple[str, str]] = collections.Counter()


# -- cancelling at a point ------------------------------------------------------------


async def _cancel_on(signal: ThreadSignal, scope: anyio.CancelScope) -> None:
    await signal.wait()
    scope.cancel()


async def _expire_on(signal: ThreadSignal, scope: anyio.CancelScope) -> None:
    await signal.wait()
    scope.deadline = anyio.current_time()  # the deadline passes right now


async def cancel_when(
    signal: ThreadSignal, how: str, body: Callable[[], Awaitable[Any]]
) -> bool:
    """Run *body*, cancelling it *how* once *signal* is set; True if it was cut."""
    finished = False

    async def run_body() -> None:
        nonlocal finished
        await body()
        finished = True

    try:
        if how == "task_group":
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on, signal, tg.cancel_scope)
                await run_body()
                tg.cancel_scope.cancel()
            return not finished
        timed_out = False
        async with anyio.create_task_group() as helpers:
            if how == "fail_after":
                try:
                    with anyio.fail_after(math.inf) as scope:
                        helpers.start_soon(_expire_on, signal, scope)
                        await run_body()
                except TimeoutError:
                    timed_out = True
            else:
                with anyio.move_on_after(math.inf) as scope:
                    helpers.start_soon(_expire_on, signal, scope)
                    await run_body()
            helpers.cancel_scope.cancel()
        assert timed_out == (how == "fail_after" and not finished)
        return not finished
    finally:
        signal.release()


# -- the cases ------------------------------------------------------------------------


@dataclass
class Case:
    """One cancellation point: the session, what is cancelled, the state after."""

    session: asyncsess.MonitoredSession
    body: Callable[[], Awaitable[Any]]
    #: "usable"; "abandoned" (a step still blocked in TF: the next run() waits
    #: for it, close() interrupts it); or "closed".
    after: str
    #: Open the session before the body runs (the body is then run/close/...).
    open_first: bool = True
    #: False where the cancellation may land after the work already finished.
    must_cut: bool = True
    #: The global step after the cancelled call, when it is known.
    step_after: int | None = None


class Blocker(asyncsess.SessionRunHook):
    """An async hook that reaches its point, signals and then waits forever."""

    def __init__(self, signal: ThreadSignal, phase: str) -> None:
        self.signal, self.phase = signal, phase
        self.after_runs = 0

    async def _maybe_block(self, phase: str) -> None:
        if phase == self.phase and not self.signal.was_set:  # block only once
            self.signal.set()
            await anyio.sleep_forever()

    async def begin(self) -> None:
        await self._maybe_block("begin")

    async def after_create_session(self, session: Any, coord: Any) -> None:
        await self._maybe_block("after_create_session")

    async def before_run(self, run_context: Any) -> None:
        await self._maybe_block("before_run")

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        self.after_runs += 1
        await self._maybe_block("after_run")

    async def end(self, session: Any) -> None:
        await self._maybe_block("end")


class SignalBeforeRun(v1.train.SessionRunHook):
    """A TF hook whose before_run (on the worker thread, just before the step)
    signals that the step is about to run."""

    def __init__(self, signal: ThreadSignal) -> None:
        self.signal = signal

    def before_run(self, run_context: Any) -> None:
        self.signal.set()


class SlowTFEnd(v1.train.SessionRunHook):
    def __init__(self, signal: ThreadSignal) -> None:
        self.signal = signal

    def end(self, session: Any) -> None:
        self.signal.set()
        time.sleep(0.2)


class ForeverCreator(asyncsess.SessionCreator):
    def __init__(self, signal: ThreadSignal) -> None:
        self.signal = signal

    async def create_session(self) -> Any:
        self.signal.set()
        await anyio.sleep_forever()


class SlowTFCreator(v1.train.SessionCreator):
    """TensorFlow's blocking creator protocol: the session exists, then it stalls."""

    def __init__(self, signal: ThreadSignal) -> None:
        self.signal = signal

    def create_session(self) -> Any:
        sess = v1.train.ChiefSessionCreator().create_session()
        self.signal.set()
        time.sleep(0.2)
        return sess


class SignallingWorkerCreator(asyncsess.WorkerSessionCreator):
    """A worker whose chief never comes; signals when it starts waiting."""

    min_poll_secs = 0.01

    def __init__(self, signal: ThreadSignal) -> None:
        super().__init__(max_wait_secs=3600)
        self.signal = signal

    async def create_session(self) -> Any:
        self.signal.set()
        return await super().create_session()


class AbortingCreator(asyncsess.SessionCreator):
    """Preempted on every attempt; signals on the second (before the backoff)."""

    def __init__(self, signal: ThreadSignal) -> None:
        self.signal = signal
        self.calls = 0

    async def create_session(self) -> Any:
        self.calls += 1
        if self.calls == 2:
            self.signal.set()
        raise tf.errors.AbortedError(None, None, "preempted")


class SlowCloseCreator(asyncsess.SessionCreator):
    """Real sessions whose close() signals and then takes a while."""

    def __init__(self, signal: ThreadSignal) -> None:
        self.signal = signal
        self.inner = asyncsess.ChiefSessionCreator()

    async def create_session(self) -> Any:
        sess = await self.inner.create_session()
        close = sess.close

        def slow_close() -> None:
            self.signal.set()
            time.sleep(0.2)
            close()

        sess.close = slow_close
        return sess


class _SignalOnLog(logging.Handler):
    def __init__(self, signal: ThreadSignal, text: str) -> None:
        super().__init__()
        self.signal, self.text = signal, text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.signal.set()


@pytest.fixture
def log_signal() -> Iterator[Callable[[ThreadSignal, str], None]]:
    """Set a signal when the asyncsess logger emits a message containing text."""
    logger = logging.getLogger("asyncsess")
    handlers: list[logging.Handler] = []
    level = logger.level

    def install(signal: ThreadSignal, text: str) -> None:
        handler = _SignalOnLog(signal, text)
        handlers.append(handler)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    yield install
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


class Graph(Model):
    """The test Model plus an empty queue and a queue runner that fills another."""

    def __init__(self) -> None:
        super().__init__()
        with self.graph.as_default():
            empty = v1.FIFOQueue(1, tf.float32, shapes=[[]])
            self.dequeue = empty.dequeue()
            fed = v1.FIFOQueue(2, tf.float32, shapes=[[]])
            v1.train.add_queue_runner(v1.train.QueueRunner(fed, [fed.enqueue(1.0)]))
            self.slow_signal = ThreadSignal()

            def slow() -> Any:
                self.slow_signal.set()
                time.sleep(0.2)
                return 1.0

            self.slow_step = tf.group(
                v1.py_func(slow, [], tf.float64, stateful=True),
                v1.assign_add(self.global_step, 1),
            )


async def open_and_close(sess: asyncsess.MonitoredSession) -> None:
    # open() and close() at the same cancel-scope nesting: the session's task
    # group is entered in one and left in the other.
    async with sess:
        pass


def build_case(
    point: str,
    g: Graph,
    signal: ThreadSignal,
    log_signal: Callable[[ThreadSignal, str], None],
) -> Case:
    ms = asyncsess.MonitoredSession

    def blocked(phase: str, after: str, **kw: Any) -> Case:
        sess = ms(hooks=[Blocker(signal, phase)])
        open_first = kw.pop(
            "open_first", phase not in ("begin", "after_create_session")
        )
        bodies: dict[str, Callable[[], Awaitable[Any]]] = {
            "begin": sess.open,
            "after_create_session": sess.open,
            "before_run": lambda: sess.run(g.inc),
            "after_run": lambda: sess.run(g.inc),
            "end": lambda: open_and_close(sess),
        }
        return Case(sess, bodies[phase], after, open_first=open_first, **kw)

    if point in ("begin", "after_create_session"):
        return blocked(point, "closed")
    if point == "before_run":
        return blocked(point, "usable", step_after=0)
    if point == "after_run":
        return blocked(point, "usable", step_after=1)
    if point == "end":
        return blocked(point, "closed", open_first=False)
    if point == "creation_async_creator":
        sess = ms(session_creator=ForeverCreator(signal))
        return Case(sess, sess.open, "closed", open_first=False)
    if point == "creation_tf_creator":
        sess = ms(session_creator=SlowTFCreator(signal))
        return Case(sess, sess.open, "closed", open_first=False)
    if point == "worker_waits_for_chief_attempt":
        sess = ms(session_creator=SignallingWorkerCreator(signal))
        return Case(sess, sess.open, "closed", open_first=False)
    if point == "worker_waits_for_chief_sleep":
        log_signal(signal, "Waiting")
        sess = ms(session_creator=SignallingWorkerCreator(ThreadSignal()))
        return Case(sess, sess.open, "closed", open_first=False)
    if point == "recovery_backoff":
        sess = ms(session_creator=AbortingCreator(signal))
        sess.recovery = asyncsess.RecoveryPolicy(initial_backoff=3600, jitter=0)
        return Case(sess, sess.open, "closed", open_first=False)
    if point == "step_slow":
        sess = ms()
        sess.step_cancel_grace = 60  # it finishes within the grace: usable
        g.slow_signal = signal
        return Case(sess, lambda: sess.run(g.slow_step), "usable", step_after=1)
    if point == "step_blocked_dequeue":
        sess = ms(hooks=[SignalBeforeRun(signal)])
        return Case(sess, lambda: sess.run(g.dequeue), "abandoned")
    if point == "run_without_hooks_blocked_dequeue":
        sess = ms()
        log_signal(signal, "Session created")  # set before the body starts

        async def body() -> None:
            await sess.run_without_hooks(g.dequeue)

        return Case(sess, body, "abandoned")
    if point == "end_tf_hook":
        sess = ms(hooks=[SlowTFEnd(signal)])
        return Case(sess, lambda: open_and_close(sess), "closed", open_first=False)
    if point == "close_tf_session":
        sess = ms(session_creator=SlowCloseCreator(signal))
        body = partial(open_and_close, sess)
        return Case(sess, body, "closed", open_first=False, must_cut=False)
    if point == "run_step_fn_async":
        sess = ms()

        async def step_fn(step_context: Any) -> None:
            signal.set()
            await anyio.sleep_forever()

        return Case(sess, lambda: sess.run_step_fn(step_fn), "usable", step_after=0)
    if point == "run_step_fn_plain":
        sess = ms()

        def plain(step_context: Any) -> None:
            signal.set()
            time.sleep(0.2)

        sess.step_cancel_grace = 60  # it finishes within the grace: usable

        return Case(sess, lambda: sess.run_step_fn(plain), "usable", step_after=0)
    if point == "run_step_fn_plain_blocked_dequeue":
        sess = ms()

        def blocked_fn(step_context: Any) -> None:
            signal.set()
            step_context.session.run(g.dequeue)

        return Case(sess, lambda: sess.run_step_fn(blocked_fn), "abandoned")
    raise AssertionError(point)


POINTS = (
    "begin",
    "creation_async_creator",
    "creation_tf_creator",
    "worker_waits_for_chief_attempt",
    "worker_waits_for_chief_sleep",
    "recovery_backoff",
    "after_create_session",
    "before_run",
    "step_slow",
    "step_blocked_dequeue",
    "run_without_hooks_blocked_dequeue",
    "after_run",
    "run_step_fn_async",
    "run_step_fn_plain",
    "run_step_fn_plain_blocked_dequeue",
    "end",
    "end_tf_hook",
    "close_tf_session",
)


async def check_after(case: Case, g: Graph) -> None:
    sess = case.session
    if case.step_after is not None and case.after == "usable":
        assert await sess.run_without_hooks(g.global_step) == case.step_after
    if case.after == "usable":
        assert not sess.should_stop()
        await sess.run(g.inc)
    elif case.after == "abandoned":
        # Still usable, but a run() now would queue behind the blocked step: the
        # close below must interrupt it (tested in TestAbandonedStep as well).
        assert not sess.should_stop()
    else:
        assert sess.should_stop()
        with pytest.raises(RuntimeError, match="closed session"):
            await sess.run(g.inc)
    await sess.close()


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("point", POINTS)
async def test_cancel_at(
    point: str,
    how: str,
    anyio_backend: str,
    tf_sessions: SessionCensus,
    log_signal: Callable[[ThreadSignal, str], None],
    no_thread_leaks: None,
) -> None:
    g = Graph()
    signal = ThreadSignal()
    with g.graph.as_default():
        case = build_case(point, g, signal, log_signal)
    with anyio.fail_after(BOUND):
        if case.open_first:
            await case.session.open()
        cut = await cancel_when(signal, how, case.body)
        assert signal.was_set
        assert cut or not case.must_cut
        await check_after(case, g)
    assert tf_sessions.open_sessions() == []
    assert not g.graph.finalized
    # The process can open a new session on the same graph.
    with g.graph.as_default():
        again = asyncsess.MonitoredSession()
    with anyio.fail_after(BOUND):
        async with again:
            await again.run(g.inc)
    assert tf_sessions.open_sessions() == []
    TRIED[anyio_backend, point] += 1


def test_report_cancellation_points_tried() -> None:
    """Print how many cancellation points were tried per backend (runs last)."""
    per_backend = collections.Counter[str]()
    for (backend, _), count in TRIED.items():
        per_backend[backend] += count
    print(f"\ncancellation cases tried per backend: {dict(per_backend)}")  # noqa: T201
