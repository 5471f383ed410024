"""Hooks checked when a session is built, and session misuse caught with a reason.

Async methods on TensorFlow's hook base, duck-typed hooks, a session closed in
another task than the one that opened it, sessions opening over one graph at the
same time, and an async hook method that holds the event loop (issue #14).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import tensorflow as tf

import asyncsess
from asyncsess import SessionRunArgs, SessionStateError

from .conftest import Model, asyncsess_threads

if TYPE_CHECKING:
    from pathlib import Path

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio
TFSessionRunHook: Any = v1.train.SessionRunHook
#: Bound on every wait in this file: a hang fails the test instead of stalling it.
BOUND = 30


# -- async methods on TensorFlow's base class ------------------------------------


class AsyncOnTFBase(TFSessionRunHook):  # type: ignore[misc]
    """The mistake: TensorFlow's base class, asyncsess's async methods."""

    def __repr__(self) -> str:
        return "AsyncOnTFBase()"

    async def before_run(self, run_context: Any) -> None:
        pass

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        pass


class AsyncEndOnTFBase(TFSessionRunHook):  # type: ignore[misc]
    def begin(self) -> None:
        pass

    async def end(self, session: Any) -> None:
        pass


class TestAsyncMethodsOnTFBase:
    def test_refused_when_the_session_is_built(self, model: Model) -> None:
        with pytest.raises(
            TypeError,
            match=r"Hook AsyncOnTFBase\(\) subclasses "
            r"tf.compat.v1.train.SessionRunHook but its before_run\(\) and "
            r"after_run\(\) are async def: .*Subclass asyncsess.SessionRunHook "
            r"instead",
        ):
            asyncsess.MonitoredSession(hooks=[AsyncOnTFBase()])

    def test_names_a_single_method(self, model: Model) -> None:
        with pytest.raises(TypeError, match=r"its end\(\) is async def"):
            asyncsess.MonitoredSession(hooks=[AsyncEndOnTFBase()])

    def test_nothing_is_created_or_written(self, model: Model, tmp_path: Path) -> None:
        before = set(threading.enumerate())
        with pytest.raises(TypeError, match=r"AsyncOnTFBase\(\) subclasses"):
            asyncsess.MonitoredTrainingSession(
                checkpoint_dir=str(tmp_path),
                hooks=[asyncsess.hooks.StopAtStepHook(last_step=3), AsyncOnTFBase()],
            )
        assert list(tmp_path.iterdir()) == []  # no checkpoint, no event file
        assert not model.graph.finalized
        assert set(threading.enumerate()) <= before  # no worker thread

    def test_the_asyncsess_base_takes_the_same_methods(self, model: Model) -> None:
        class Fixed(asyncsess.SessionRunHook):
            before_run = AsyncOnTFBase.before_run
            after_run = AsyncOnTFBase.after_run

        asyncsess.MonitoredSession(hooks=[Fixed()])


# -- duck-typed hooks ----------------------------------------------------------------


class DuckTF:
    """A hook as TensorFlow calls them: all five methods, no base class."""

    def __init__(self, log: list[str], fetch: Any) -> None:
        self.log, self.fetch = log, fetch
        self.threads: set[str] = set()
        self.results: list[Any] = []

    def begin(self) -> None:
        self.log.append("begin")
        self.graph = v1.get_default_graph()

    def after_create_session(self, session: Any, coord: Any) -> None:
        self.log.append("after_create_session")

    def before_run(self, run_context: Any) -> Any:
        self.log.append("before_run")
        self.threads.add(threading.current_thread().name)
        return SessionRunArgs(self.fetch)

    def after_run(self, run_context: Any, run_values: Any) -> None:
        self.log.append("after_run")
        self.results.append(run_values.results)
        if len(self.results) == 2:
            run_context.request_stop()

    def end(self, session: Any) -> None:
        self.log.append("end")


class DuckAsync:
    """A duck-typed hook with async methods, and only some of the five."""

    def __init__(self, fetch: Any) -> None:
        self.fetch = fetch
        self.results: list[Any] = []
        self.threads: set[str] = set()

    async def before_run(self, run_context: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        self.threads.add(threading.current_thread().name)
        return SessionRunArgs(self.fetch)

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        self.results.append(run_values.results)


class TestDuckTypedHooks:
    def test_tensorflow_takes_them(self, model: Model) -> None:
        log: list[str] = []
        hook = DuckTF(log, model.global_step)
        with v1.train.MonitoredSession(hooks=[hook]) as sess:
            while not sess.should_stop():
                sess.run(model.inc)
        assert hook.results == [0, 1]
        assert log == [
            "begin",
            "after_create_session",
            *["before_run", "after_run"] * 2,
            "end",
        ]

    async def test_plain_methods_run_like_a_tf_hook(self, model: Model) -> None:
        log: list[str] = []
        hook = DuckTF(log, model.global_step)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            while not sess.should_stop():
                await sess.run(model.inc)
        assert hook.results == [0, 1]  # TensorFlow's calls and results
        assert log == [
            "begin",
            "after_create_session",
            *["before_run", "after_run"] * 2,
            "end",
        ]
        assert hook.graph is model.graph
        assert sess.stop_reason is not None
        assert sess.stop_reason.source == "DuckTF"
        assert threading.main_thread().name not in hook.threads  # the worker's

    async def test_async_methods_are_awaited(self, model: Model) -> None:
        duck, tf_duck = DuckAsync(model.global_step), DuckTF([], model.global_step)
        async with asyncsess.MonitoredSession(hooks=[duck, tf_duck]) as sess:
            while not sess.should_stop():
                await sess.run(model.inc)
        assert duck.results == [0, 1] == tf_duck.results
        assert duck.threads == {threading.current_thread().name}  # on the loop

    def test_an_object_with_no_hook_method_is_refused(self, model: Model) -> None:
        class Settings:
            def __repr__(self) -> str:
                return "Settings()"

            def run(self) -> None:
                pass

        with pytest.raises(
            TypeError,
            match=r"Hook Settings\(\) is neither an asyncsess.SessionRunHook nor a "
            r"tf.compat.v1.train.SessionRunHook, and has none of their methods",
        ):
            asyncsess.MonitoredSession(hooks=[Settings()])


# -- open() and close() in different tasks ---------------------------------------


class OnError(asyncsess.SessionRunHook):
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    async def on_error(self, exc: BaseException, session: Any) -> None:
        self.errors.append(exc)


def queue_runner(model: Model) -> None:
    """Add a QueueRunner (a thread of its own once the session opens)."""
    with model.graph.as_default():
        queue = v1.FIFOQueue(10, tf.float32)
        v1.train.add_queue_runner(
            v1.train.QueueRunner(queue, [queue.enqueue(tf.constant(1.0))])
        )


async def wait_threads_gone() -> list[str]:
    def join() -> None:
        for thread in threading.enumerate():
            if thread.name.startswith(("asyncsess-", "QueueRunnerThread")):
                thread.join(timeout=BOUND)

    await anyio.to_thread.run_sync(join)
    return asyncsess_threads()


class TestCloseInAnotherTask:
    async def test_raises_naming_the_rule_and_releases_the_session(
        self, model: Model, no_thread_leaks: None
    ) -> None:
        queue_runner(model)
        hook = OnError()
        sess = asyncsess.MonitoredSession(hooks=[hook])
        opened, closed = anyio.Event(), anyio.Event()
        errors: list[BaseException] = []

        async def opener() -> None:
            async with sess:
                await sess.run(model.inc)
                opened.set()
                await closed.wait()
                assert sess.should_stop()
                with pytest.raises(SessionStateError, match=r"closed session"):
                    await sess.run(model.inc)
            # Leaving the block left the session's task group: no error here.

        async def closer() -> None:
            await opened.wait()
            try:
                await sess.close()
            except SessionStateError as exc:
                errors.append(exc)
            assert await wait_threads_gone() == []  # released before the opener
            closed.set()

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(opener, name="opener")
                tg.start_soon(closer, name="closer")
        assert len(errors) == 1
        with pytest.raises(
            SessionStateError,
            match=r"MonitoredSession.close\(\) was called in task 'closer', not in "
            r"task 'opener' that opened the session: a session must be closed in "
            r"the task that opened it",
        ):
            raise errors[0]
        assert hook.errors == errors  # the hooks could save or flush
        assert sess.stop_reason is not None
        assert sess.stop_reason.kind == "error"

    async def test_the_opening_task_may_close_it_after_that(
        self, model: Model, no_thread_leaks: None
    ) -> None:
        sess = asyncsess.MonitoredSession()
        await sess.open()
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._expect_refusal, sess)
        await sess.close()  # leaves the task group
        await sess.close()  # and is idempotent

    @staticmethod
    async def _expect_refusal(sess: asyncsess.MonitoredSession) -> None:
        with pytest.raises(SessionStateError, match=r"must be closed in the task"):
            await sess.close()

    async def test_while_it_is_opening(
        self, model: Model, no_thread_leaks: None
    ) -> None:
        class SlowBegin(asyncsess.SessionRunHook):
            def __init__(self) -> None:
                self.started, self.go = anyio.Event(), anyio.Event()

            async def begin(self) -> None:
                self.started.set()
                await self.go.wait()

        hook = SlowBegin()
        sess = asyncsess.MonitoredSession(hooks=[hook])

        async def closer() -> None:
            await hook.started.wait()
            with pytest.raises(
                SessionStateError,
                match=r"while task 'opener' is opening the session: a session must "
                r"be closed in the task that opened it",
            ):
                await sess.close()
            hook.go.set()

        async def opener() -> None:
            async with sess:
                await sess.run(model.inc)  # the refused close() changed nothing

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(opener, name="opener")
                tg.start_soon(closer, name="closer")


# -- sessions over one graph ------------------------------------------------------


class Checkpoints(asyncsess.SessionRunHook):
    """Suspends in begin and after_create_session, so that opens interleave."""

    async def begin(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def after_create_session(self, session: Any, coord: Any) -> None:
        await anyio.lowlevel.checkpoint()


class AddsAnOp(asyncsess.SessionRunHook):
    async def begin(self) -> None:
        self.op = tf.constant(1.0)


class TestOneGraph:
    async def test_concurrent_opens(self, model: Model, no_thread_leaks: None) -> None:
        sessions = [asyncsess.MonitoredSession(hooks=[Checkpoints()]) for _ in range(3)]
        all_open = anyio.Event()
        opened: list[asyncsess.MonitoredSession] = []
        results: list[Any] = []

        async def use(sess: asyncsess.MonitoredSession) -> None:
            async with sess:
                opened.append(sess)
                if len(opened) == len(sessions):
                    all_open.set()
                await all_open.wait()  # all three open at once
                assert model.graph.finalized
                results.append(await sess.run(model.inc))

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for sess in sessions:
                    tg.start_soon(use, sess)
        assert results == [1, 1, 1]  # three TF sessions, each its own variables
        assert not model.graph.finalized  # the last to close un-finalized it

    async def test_the_graph_stays_finalized_until_the_last_closes(
        self, model: Model
    ) -> None:
        first, second = asyncsess.MonitoredSession(), asyncsess.MonitoredSession()
        second_open, first_closed = anyio.Event(), anyio.Event()

        async def use_second() -> None:
            async with second:
                second_open.set()
                await first_closed.wait()
                assert model.graph.finalized  # second is still open
                await second.run(model.inc)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                async with first:
                    tg.start_soon(use_second)
                    await second_open.wait()
                first_closed.set()
        assert not model.graph.finalized

    async def test_a_graph_finalized_before_stays_finalized(self, model: Model) -> None:
        with model.graph.as_default():
            v1.train.Scaffold().finalize()
        sessions = [asyncsess.MonitoredSession() for _ in range(2)]
        async with sessions[0], sessions[1]:
            pass
        assert model.graph.finalized

    async def test_a_later_session_cannot_add_ops_in_begin(self, model: Model) -> None:
        first = asyncsess.MonitoredSession(hooks=[AddsAnOp()])  # first: it may
        second = asyncsess.MonitoredSession(hooks=[AddsAnOp()])
        async with first:
            with pytest.raises(
                RuntimeError,
                match=r"Graph is finalized .* Here the graph was finalized by another "
                r"session over it that is still open",
            ):
                await second.open()
            await first.run(model.inc)
        assert not model.graph.finalized


# -- an async hook that holds the loop -------------------------------------------


def slow() -> None:
    time.sleep(0.15)  # over HELD_LOOP_SECS (0.1 s); a sleep never ends early


class BlocksBefore(asyncsess.SessionRunHook):
    async def before_run(self, run_context: Any) -> None:
        slow()


class BlocksAfterAwaiting(asyncsess.SessionRunHook):
    async def after_run(self, run_context: Any, run_values: Any) -> None:
        await anyio.lowlevel.checkpoint()
        slow()


class PlainBlocks(asyncsess.SessionRunHook):
    def before_run(self, run_context: Any) -> None:  # type: ignore[override]
        slow()


class Suspends(asyncsess.SessionRunHook):
    async def before_run(self, run_context: Any) -> None:
        await anyio.lowlevel.checkpoint()


class TFBlocks(TFSessionRunHook):  # type: ignore[misc]
    def before_run(self, run_context: Any) -> None:
        slow()


def held_loop_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncsess"
        and r.levelno == logging.WARNING
        and "held the event loop" in r.getMessage()
    ]


class TestHeldLoop:
    @pytest.mark.parametrize(
        ("hooks", "name", "phase"),
        [
            ([BlocksBefore], "BlocksBefore", "before_run"),
            ([BlocksAfterAwaiting], "BlocksAfterAwaiting", "after_run"),
            ([PlainBlocks], "PlainBlocks", "before_run"),
            # Started as a task beside the suspended first hook.
            ([Suspends, BlocksBefore], "BlocksBefore", "before_run"),
        ],
    )
    async def test_warned_once_naming_hook_and_phase(
        self,
        model: Model,
        caplog: pytest.LogCaptureFixture,
        hooks: list[type[Any]],
        name: str,
        phase: str,
    ) -> None:
        caplog.set_level(logging.WARNING, logger="asyncsess")
        async with asyncsess.MonitoredSession(hooks=[h() for h in hooks]) as sess:
            for _ in range(3):
                await sess.run(model.inc)
        messages = held_loop_records(caplog)
        assert len(messages) == 1
        assert messages[0].startswith(f"Hook {name} held the event loop for ")
        assert f"in {phase}() without awaiting" in messages[0]

    async def test_not_for_tf_hooks_on_the_worker_thread(
        self, model: Model, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="asyncsess")
        async with asyncsess.MonitoredSession(hooks=[TFBlocks()]) as sess:
            await sess.run(model.inc)
        assert held_loop_records(caplog) == []
