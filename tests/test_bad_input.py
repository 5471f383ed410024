"""Misuse and bad input: a clear error naming the culprit, and a session left usable
(it runs the next step) or cleanly closed (nothing left open)."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
import tensorflow as tf

import asyncsess
from asyncsess import SessionRunArgs

from ._reliability import SessionCensus, tf_sessions
from .conftest import Model

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio

__all__ = ["tf_sessions"]


async def assert_usable(sess: asyncsess.MonitoredSession, model: Model) -> None:
    """The session runs the next step after the bad call."""
    before = await sess.run_without_hooks(model.global_step)
    await sess.run(model.inc)
    assert await sess.run_without_hooks(model.global_step) == before + 1


class TestFetchesAndFeeds:
    """TensorFlow's own errors, with their own types; the session runs on."""

    async def test_fetch_not_in_the_graph(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(
                ValueError, match=r"`fetch` = nope:0 cannot be interpreted as a Tensor"
            ):
                await sess.run("nope:0")
            await assert_usable(sess, model)

    async def test_fetch_from_another_graph(self, model: Model) -> None:
        with tf.Graph().as_default():
            other = tf.constant(1.0, name="elsewhere")
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(ValueError, match=r"elsewhere.*not an element of this"):
                await sess.run(other)
            await assert_usable(sess, model)

    async def test_fetch_of_the_wrong_type(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(TypeError, match=r"`fetch` = 3\.5 has invalid type"):
                await sess.run(3.5)
            await assert_usable(sess, model)

    async def test_feed_unknown_key(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(TypeError, match=r"feed_dict key.*'nope:0'"):
                await sess.run(model.y, feed_dict={"nope:0": 1.0})
            await assert_usable(sess, model)

    async def test_feed_wrong_shape(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(ValueError, match=r"Cannot feed value of shape \(2,\)"):
                await sess.run(model.y, feed_dict={model.x: [1.0, 2.0]})
            await assert_usable(sess, model)

    async def test_feed_wrong_dtype(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(ValueError, match="could not convert string to float"):
                await sess.run(model.y, feed_dict={model.x: "abc"})
            await assert_usable(sess, model)

    async def test_missing_feed(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(
                tf.errors.InvalidArgumentError, match="value for placeholder tensor 'x'"
            ):
                await sess.run(model.y)
            await assert_usable(sess, model)

    async def test_bad_fetch_with_hooks_leaves_hooks_consistent(
        self, model: Model
    ) -> None:
        calls: list[str] = []

        class Hook(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                calls.append("before_run")
                return SessionRunArgs(model.global_step)

            async def after_run(self, run_context: Any, run_values: Any) -> None:
                calls.append("after_run")

        async with asyncsess.MonitoredSession(hooks=[Hook()]) as sess:
            with pytest.raises(ValueError, match="nope:0 cannot be interpreted"):
                await sess.run("nope:0")
            assert calls == ["before_run"]  # after_run is not called for it
            await assert_usable(sess, model)


class TestHookRequests:
    async def test_async_hook_returns_wrong_type(
        self, model: Model, no_thread_leaks: None
    ) -> None:
        class Bad(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return [model.inc]

        sess = asyncsess.MonitoredSession(hooks=[Bad()])
        with pytest.raises(
            TypeError, match=r"Hook Bad.* returned \[.*\] from before_run\(\).*expected"
        ):
            async with sess:
                await sess.run(model.inc)
        assert sess.should_stop()
        assert not model.graph.finalized

    async def test_tf_hook_returns_wrong_type(
        self, model: Model, no_thread_leaks: None
    ) -> None:
        # TensorFlow itself fails with an AttributeError here (tf_behaviors item 22).
        class BadTF(v1.train.SessionRunHook):
            def before_run(self, run_context: Any) -> Any:
                return {"fetch": model.inc}

        sess = asyncsess.MonitoredSession(hooks=[BadTF()])
        with pytest.raises(TypeError, match=r"Hook BadTF.* from before_run\(\)"):
            async with sess:
                await sess.run(model.inc)
        assert sess.should_stop()

    async def test_hook_fetching_something_not_in_the_graph(self, model: Model) -> None:
        class Bad(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs("nope:0")

        sess = asyncsess.MonitoredSession(hooks=[Bad()])
        with pytest.raises(ValueError, match="nope:0 cannot be interpreted"):
            async with sess:
                await sess.run(model.inc)

    async def test_two_hooks_feed_the_same_tensor_by_name_and_object(
        self, model: Model
    ) -> None:
        class ByName(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(None, feed_dict={"x:0": 1.0})

        class ByTensor(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(None, feed_dict={model.x: 2.0})

        sess = asyncsess.MonitoredSession(hooks=[ByName(), ByTensor()])
        with pytest.raises(
            asyncsess.FeedConflictError, match="Same tensor is fed by two hooks"
        ):
            async with sess:
                await sess.run(model.y)

    async def test_hook_and_user_feed_conflict_leaves_session_usable(
        self, model: Model
    ) -> None:
        class Feed(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                if run_context.original_args.feed_dict:
                    return SessionRunArgs(None, feed_dict={model.x: 1.0})
                return None

        async with asyncsess.MonitoredSession(hooks=[Feed()]) as sess:
            with pytest.raises(
                asyncsess.FeedConflictError,
                match="Same tensor is fed by a SessionRunHook and user",
            ):
                await sess.run(model.y, feed_dict={model.x: 2.0})
            await assert_usable(sess, model)

    async def test_hook_adding_ops_in_before_run(self, model: Model) -> None:
        class AddsOps(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(tf.constant(2.0))

        sess = asyncsess.MonitoredSession(hooks=[AddsOps()])
        with pytest.raises(RuntimeError, match=r"AddsOps in before_run\(\).*begin\(\)"):
            async with sess:
                await sess.run(model.inc)
        assert not model.graph.finalized


class TestLifecycleMisuse:
    async def test_run_after_close(self, model: Model) -> None:
        sess = asyncsess.MonitoredSession()
        async with sess:
            pass
        misuse = asyncsess.SessionStateError
        with pytest.raises(misuse, match=r"run\(\) called on a closed session"):
            await sess.run(model.inc)
        with pytest.raises(misuse, match="closed session"):
            await sess.run_without_hooks(model.inc)
        with pytest.raises(misuse, match="closed session"):
            await sess.run_step_fn(lambda step_context: None)

    async def test_run_after_a_stop(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            sess.request_stop()
            with pytest.raises(
                asyncsess.RunAfterStopError,
                match=r"Run called even after should_stop requested\. \(request_stop",
            ):
                await sess.run(model.inc)
            # Auxiliary runs still work after a stop, as documented.
            assert await sess.run_without_hooks(model.global_step) == 0

    async def test_open_twice(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(
                asyncsess.SessionStateError, match=r"open.*a session opens once"
            ):
                await sess.open()
            await assert_usable(sess, model)

    async def test_open_after_close(self, model: Model) -> None:
        sess = asyncsess.MonitoredSession()
        async with sess:
            pass
        with pytest.raises(
            asyncsess.SessionStateError, match="closed; a session opens once"
        ):
            await sess.open()

    async def test_reentering_async_with(self, model: Model) -> None:
        sess = asyncsess.MonitoredSession()
        async with sess:
            with pytest.raises(asyncsess.SessionStateError, match="opens once"):
                async with sess:
                    pass  # pragma: no cover
            await assert_usable(sess, model)

    async def test_run_from_another_thread(
        self, model: Model, anyio_backend: str
    ) -> None:
        async with asyncsess.MonitoredSession() as sess:

            def misuse() -> None:
                anyio.run(sess.run, model.inc, backend=anyio_backend)

            with pytest.raises(
                asyncsess.WrongEventLoopError, match="opened in another thread"
            ):
                await anyio.to_thread.run_sync(misuse)
            await assert_usable(sess, model)

    async def test_close_from_another_thread(
        self, model: Model, anyio_backend: str
    ) -> None:
        async with asyncsess.MonitoredSession() as sess:

            def misuse() -> None:
                anyio.run(sess.close, backend=anyio_backend)

            with pytest.raises(
                asyncsess.WrongEventLoopError, match="opened in another thread"
            ):
                await anyio.to_thread.run_sync(misuse)
            await assert_usable(sess, model)

    async def test_step_fn_with_wrong_signature(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            with pytest.raises(ValueError, match="`step_fn` may either have one"):
                await sess.run_step_fn(lambda ctx, extra: None)
            with pytest.raises(TypeError, match="step_fn must be callable"):
                await sess.run_step_fn("train")
            await assert_usable(sess, model)


class TestOtherEventLoop:
    """A session opened in one event loop is used from a later one, same thread.

    The first loop is asyncio: leaving a trio run with the session still open
    corrupts trio's nursery stack (open() and close() belong to one task).
    """

    @pytest.mark.parametrize(
        "second",
        ["asyncio", "trio"],
    )
    def test_run_and_close_from_another_loop(self, model: Model, second: str) -> None:
        sess = asyncsess.MonitoredSession()
        anyio.run(sess.open, backend="asyncio")
        try:
            with pytest.raises(
                asyncsess.WrongEventLoopError, match=r"another event loop"
            ):
                anyio.run(sess.run, model.inc, backend=second)
            with pytest.raises(
                asyncsess.WrongEventLoopError, match=r"another event loop"
            ):
                anyio.run(sess.close, backend=second)
        finally:
            # The loop that opened it is gone: release what is left by hand.
            if sess._tf_sess is not None:
                sess._tf_sess.close()
            if sess._worker is not None:
                sess._worker.stop()
                sess._worker.join(5)
            model.graph._unsafe_unfinalize()


class TestConstruction:
    def test_session_creator_not_a_creator(self, model: Model) -> None:
        with pytest.raises(
            TypeError, match=r"session_creator must be .*Received: session_creator='"
        ):
            asyncsess.MonitoredSession(session_creator="grpc://localhost:2222")

    def test_session_creator_class_instead_of_instance(self, model: Model) -> None:
        with pytest.raises(TypeError, match=r"an instance.*ChiefSessionCreator"):
            asyncsess.MonitoredSession(session_creator=asyncsess.ChiefSessionCreator)

    def test_hook_neither_kind(self, model: Model) -> None:
        with pytest.raises(
            TypeError, match=r"Hook <object object .*> is neither an asyncsess"
        ):
            asyncsess.MonitoredSession(hooks=[object()])

    def test_hook_class_instead_of_instance(self, model: Model) -> None:
        with pytest.raises(TypeError, match=r"StopAtStepHook.*is neither"):
            asyncsess.MonitoredSession(hooks=[v1.train.StopAtStepHook])

    def test_single_hook_not_in_a_list(self, model: Model) -> None:
        with pytest.raises(TypeError, match=r"hooks must be .*Received: hooks="):
            asyncsess.MonitoredSession(hooks=asyncsess.SessionRunHook())

    def test_bad_recovery_policy(self) -> None:
        with pytest.raises(ValueError, match=r"Received: max_recoveries=-1"):
            asyncsess.RecoveryPolicy(max_recoveries=-1)
        with pytest.raises(ValueError, match=r"Received: jitter=2"):
            asyncsess.RecoveryPolicy(jitter=2)

    def test_checkpoint_dir_and_path_both(self) -> None:
        with pytest.raises(ValueError, match="Can not provide both checkpoint_dir"):
            asyncsess.ChiefSessionCreator(
                checkpoint_dir="/tmp/a", checkpoint_filename_with_path="/tmp/a/m"
            )

    def test_worker_negative_wait(self) -> None:
        with pytest.raises(ValueError, match=r"Received: max_wait_secs=-1"):
            asyncsess.WorkerSessionCreator(max_wait_secs=-1)


async def test_bad_input_leaves_nothing_open(
    model: Model, tf_sessions: SessionCensus, no_thread_leaks: None
) -> None:
    """After a run of bad calls on one session, closing it releases everything."""
    async with asyncsess.MonitoredSession() as sess:
        for bad in ("nope:0", 3.5):
            with pytest.raises((ValueError, TypeError), match="`fetch` ="):
                await sess.run(bad)
        with pytest.raises(ValueError, match="Cannot feed"):
            await sess.run(model.y, feed_dict={model.x: [1.0]})
        await assert_usable(sess, model)
    assert tf_sessions.open_sessions() == []
    assert threading.active_count() >= 1


class TestErrorTypes:
    """Misuse errors are RuntimeErrors (as TensorFlow raises), typed by cause."""

    def test_hierarchy(self) -> None:
        for error in (
            asyncsess.RunAfterStopError,
            asyncsess.SessionBrokenError,
            asyncsess.WrongEventLoopError,
        ):
            assert issubclass(error, asyncsess.SessionStateError)
        assert issubclass(asyncsess.SessionStateError, RuntimeError)
        assert issubclass(asyncsess.FeedConflictError, RuntimeError)
        assert not issubclass(asyncsess.FeedConflictError, asyncsess.SessionStateError)

    async def test_tensorflow_runtime_errors_are_not_misuse(self, model: Model) -> None:
        class AddsOps(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(tf.constant(2.0))

        sess = asyncsess.MonitoredSession(hooks=[AddsOps()])
        with pytest.raises(RuntimeError, match="Graph is finalized") as info:
            async with sess:
                await sess.run(model.inc)
        assert not isinstance(info.value, asyncsess.SessionStateError)
