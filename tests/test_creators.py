"""Session creators: chief init/restore, worker waits, foreign creators."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
import tensorflow as tf

import asyncsess

from .conftest import Model

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


async def _save(model: Model, directory: str, steps: int) -> str:
    with model.graph.as_default():
        saver = v1.train.Saver()
    async with asyncsess.MonitoredSession() as sess:
        for _ in range(steps):
            await sess.run(model.inc)
        raw = sess._tf_sess
        path = f"{directory}/model.ckpt"
        # Off the loop, inside the default graph (the Model fixture's).
        return str(await asyncsess.run_in_session_thread(saver.save, raw, path, steps))


class TestChiefSessionCreator:
    async def test_restores_and_logs_the_checkpoint(
        self, model: Model, tmp_path: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = await _save(model, str(tmp_path), 3)
        creator = asyncsess.ChiefSessionCreator(checkpoint_dir=str(tmp_path))
        with caplog.at_level(logging.INFO, logger="asyncsess"):
            async with asyncsess.MonitoredSession(session_creator=creator) as sess:
                assert await sess.run(model.global_step) == 3
        assert creator.restored_checkpoint == path
        assert f"restored from {path} at global step 3" in caplog.text

    async def test_initializes_without_checkpoint(
        self, model: Model, tmp_path: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        creator = asyncsess.ChiefSessionCreator(checkpoint_dir=str(tmp_path))
        with caplog.at_level(logging.INFO, logger="asyncsess"):
            async with asyncsess.MonitoredSession(session_creator=creator) as sess:
                assert await sess.run(model.global_step) == 0
        assert creator.restored_checkpoint is None
        assert "no checkpoint to restore; initialized" in caplog.text

    async def test_checkpoint_filename_with_path(
        self, model: Model, tmp_path: Any
    ) -> None:
        path = await _save(model, str(tmp_path), 2)
        async with asyncsess.SingularMonitoredSession(
            checkpoint_filename_with_path=path
        ) as sess:
            assert await sess.run(model.global_step) == 2
            assert sess.raw_session() is not None
        assert sess.raw_session() is None

    def test_both_checkpoint_arguments(self) -> None:
        with pytest.raises(ValueError, match="Can not provide both checkpoint_dir"):
            asyncsess.ChiefSessionCreator(
                checkpoint_dir="a", checkpoint_filename_with_path="b"
            )

    async def test_scaffold_init_fn(self, model: Model) -> None:
        calls: list[Any] = []
        assign = v1.assign(model.global_step, 7)

        def init_fn(scaffold: Any, session: Any) -> None:
            calls.append(scaffold)
            session.run(assign)

        scaffold = asyncsess.Scaffold(init_fn=init_fn)
        creator = asyncsess.ChiefSessionCreator(scaffold=scaffold)
        async with asyncsess.MonitoredSession(session_creator=creator) as sess:
            assert await sess.run(model.global_step) == 7
        assert calls == [scaffold]


class TestWorkerSessionCreator:
    async def test_waits_for_the_chief_without_blocking_the_loop(
        self, model: Model, tmp_path: Any
    ) -> None:
        # A worker on a shared in-process master would need gRPC; here the
        # "chief" is a separate creator initializing a session on the same
        # target. Use a ready_op that fails until the chief sets a flag.
        ready = False
        ticks = 0

        class Flag(v1.train.SessionCreator):
            def create_session(self) -> Any:
                return None

        with model.graph.as_default():
            scaffold = asyncsess.Scaffold(
                ready_op=tf.constant([], dtype=tf.string),
                ready_for_local_init_op=tf.constant([], dtype=tf.string),
            )
        creator = asyncsess.WorkerSessionCreator(scaffold=scaffold, max_wait_secs=30)
        creator.min_poll_secs = 0.01

        original = creator._attempt

        def attempt() -> Any:
            if not ready:
                return None, "chief not ready"
            return original()

        creator._attempt = attempt  # type: ignore[method-assign]

        async def chief() -> None:
            nonlocal ready, ticks
            while ticks < 3:  # the loop keeps running while the worker waits
                ticks += 1
                await anyio.sleep(0.01)
            ready = True

        sess = asyncsess.MonitoredSession(session_creator=creator)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(chief)
                async with sess:
                    assert ticks >= 3
        assert Flag  # keep the TF creator class referenced for readers

    async def test_deadline(self, model: Model) -> None:
        creator = asyncsess.WorkerSessionCreator(max_wait_secs=0)
        creator._attempt = lambda: (None, "never ready")  # type: ignore[method-assign]
        with pytest.raises(tf.errors.DeadlineExceededError, match="not ready after"):
            async with asyncsess.MonitoredSession(session_creator=creator):
                pass

    async def test_wait_is_cancellable(
        self, model: Model, no_thread_leaks: None
    ) -> None:
        creator = asyncsess.WorkerSessionCreator(max_wait_secs=3600)
        creator.min_poll_secs = 0.05
        creator._attempt = lambda: (None, "never ready")  # type: ignore[method-assign]
        with anyio.move_on_after(0.3) as scope:
            async with asyncsess.MonitoredSession(session_creator=creator):
                pass
        assert scope.cancelled_caught
        assert not model.graph.finalized

    def test_negative_wait(self) -> None:
        with pytest.raises(ValueError, match="max_wait_secs"):
            asyncsess.WorkerSessionCreator(max_wait_secs=-1)


class TestForeignCreators:
    async def test_tensorflow_creator_runs_on_a_thread(self, model: Model) -> None:
        import threading

        threads: list[str] = []

        class TFCreator(v1.train.SessionCreator):
            def create_session(self) -> Any:
                threads.append(threading.current_thread().name)
                return v1.train.ChiefSessionCreator().create_session()

        async with asyncsess.MonitoredSession(session_creator=TFCreator()) as sess:
            assert await sess.run(model.inc) == 1
        assert threads[0] != threading.current_thread().name

    async def test_tensorflow_chief_creator_unmodified(self, model: Model) -> None:
        creator = v1.train.ChiefSessionCreator()
        async with asyncsess.MonitoredSession(session_creator=creator) as sess:
            assert await sess.run(model.inc) == 1
