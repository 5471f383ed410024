"""Recovery from preemption (AbortedError/UnavailableError), as TensorFlow does it,
plus what asyncsess adds: a bounded, spaced, logged, counted retry policy.

TensorFlow's own tests ported here: monitored_session_test.py's
``test_retry_on_aborted_error``, ``test_recover_and_retry_on_aborted_error``,
``test_retry_initialization_on_aborted_error`` and ``RecoverableSessionTest``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
import tensorflow as tf

import asyncsess
from asyncsess import SessionRunArgs

from ._reliability import (
    PREEMPTIONS,
    Faults,
    FaultyCreator,
    SessionCensus,
    hook_run,
    tf_sessions,
)
from .conftest import Model

if TYPE_CHECKING:
    from pathlib import Path

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio

__all__ = ["tf_sessions"]


class RaiseOnceAtCountN(v1.train.SessionRunHook):
    """TF's test hook: raises *ex* from before_run the n-th time it is called."""

    def __init__(self, n: int, ex: BaseException) -> None:
        self.n, self.ex, self.raised = n, ex, False

    def before_run(self, run_context: Any) -> None:
        self.n -= 1
        if self.n == 0 and not self.raised:
            self.raised = True
            raise self.ex


class Counting(asyncsess.SessionRunHook):
    """Counts begin/after_create_session/end and the sessions it was given."""

    def __init__(self) -> None:
        self.begins = 0
        self.sessions: list[Any] = []
        self.ends = 0

    async def begin(self) -> None:
        self.begins += 1

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self.sessions.append(session)

    async def end(self, session: Any) -> None:
        self.ends += 1


def _preemption(kind: type[BaseException], text: str = "preempted") -> Any:
    return kind(None, None, text)


@pytest.fixture
def fast_policy() -> asyncsess.RecoveryPolicy:
    """No waiting between retries (the backoff has its own tests)."""
    return asyncsess.RecoveryPolicy(initial_backoff=0)


class TestTensorFlowParity:
    @pytest.mark.parametrize("error", PREEMPTIONS)
    async def test_retry_on_preemption_without_checkpoint(
        self, model: Model, error: type[BaseException]
    ) -> None:
        hook = RaiseOnceAtCountN(4, _preemption(error))
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            assert await sess.run(model.global_step) == 0
            assert await sess.run(model.inc) == 1
            assert await sess.run(model.inc) == 2
            assert not sess.should_stop()
            # The hook raises at the 4th run: a fresh, initialized session.
            assert await sess.run(model.inc) == 1
            assert hook.raised
            assert not sess.should_stop()
            assert await sess.run(model.inc) == 2
            assert sess.recovery_count == 1

    @pytest.mark.parametrize("saver", ["tf", "asyncsess"])
    async def test_recover_and_retry_restores_the_checkpoint(
        self, model: Model, tmp_path: Path, saver: str
    ) -> None:
        scaffold = v1.train.Scaffold()
        abort = RaiseOnceAtCountN(4, _preemption(tf.errors.AbortedError))
        if saver == "tf":
            ckpt: Any = v1.train.CheckpointSaverHook(
                str(tmp_path), save_steps=1, scaffold=scaffold
            )
        else:
            ckpt = asyncsess.hooks.CheckpointSaverHook(
                str(tmp_path), save_steps=1, scaffold=scaffold
            )
        creator = asyncsess.ChiefSessionCreator(scaffold, checkpoint_dir=str(tmp_path))
        async with asyncsess.MonitoredSession(creator, [abort, ckpt]) as sess:
            assert await sess.run(model.global_step) == 0
            assert await sess.run(model.inc) == 1
            assert await sess.run(model.inc) == 2
            # Aborted at the 4th run: restored at 2 from the checkpoint, retried.
            assert await sess.run(model.inc) == 3
            assert abort.raised
            assert creator.restored_checkpoint is not None
            assert await sess.run(model.inc) == 4
        assert v1.train.latest_checkpoint(str(tmp_path)).endswith("-4")

    async def test_retry_initialization_on_aborted_error(self, model: Model) -> None:
        raised = []

        def init_fn(scaffold: Any, session: Any) -> None:
            if not raised:
                raised.append(True)
                raise tf.errors.AbortedError(None, None, "Abort")

        creator = asyncsess.ChiefSessionCreator(v1.train.Scaffold(init_fn=init_fn))
        async with asyncsess.MonitoredSession(creator) as sess:
            assert not sess.should_stop()
            assert await sess.run(model.global_step) == 0
            assert sess.recovery_count == 1
        assert raised

    async def test_recoverable_session_sequence(
        self, tf_sessions: SessionCensus
    ) -> None:
        """RecoverableSessionTest.test_recovery, with TF's AbortAtNSession fakes."""
        with tf.Graph().as_default():
            c = tf.constant(0)
            v = tf.identity(c)
            real = v1.Session()

        class AbortAtNSession:
            def __init__(self, n: int) -> None:
                self.count = n

            def close(self) -> None:
                pass

            def run(self, *args: Any, **kwargs: Any) -> Any:
                if self.count == 0:
                    raise tf.errors.AbortedError(None, None, "Aborted at N")
                self.count -= 1
                return real.run(*args, **kwargs)

        class StackSessionCreator:
            def __init__(self) -> None:
                self.sessions_to_use = [AbortAtNSession(x + 1) for x in range(3)]

            def create_session(self) -> Any:
                return self.sessions_to_use.pop(0)

        with c.graph.as_default():
            creator = StackSessionCreator()
            sess = asyncsess.MonitoredSession(creator)
        async with sess:
            assert len(creator.sessions_to_use) == 2
            assert await sess.run(v, feed_dict={c: 51}) == 51
            assert len(creator.sessions_to_use) == 2
            assert await sess.run(v, feed_dict={c: 42}) == 42  # recovers
            assert len(creator.sessions_to_use) == 1
            assert await sess.run(v, feed_dict={c: 33}) == 33
            assert await sess.run(v, feed_dict={c: 24}) == 24  # recovers
            assert len(creator.sessions_to_use) == 0
            assert await sess.run(v, feed_dict={c: 11}) == 11
            assert await sess.run(v, feed_dict={c: 0}) == 0
            # The next recovery fails for real: the creator's own error, own type.
            with pytest.raises(IndexError, match="pop from empty list"):
                await sess.run(v, feed_dict={c: -12})
            assert sess.recovery_count == 3
        real.close()

    async def test_singular_session_does_not_recover(self, model: Model) -> None:
        hook = RaiseOnceAtCountN(2, _preemption(tf.errors.AbortedError))
        sess = asyncsess.SingularMonitoredSession(hooks=[hook])
        with pytest.raises(tf.errors.AbortedError, match="preempted"):
            async with sess:
                await sess.run(model.inc)
                await sess.run(model.inc)
        assert sess.recovery_count == 0

    @pytest.mark.parametrize(
        "error",
        [
            tf.errors.DeadlineExceededError,
            tf.errors.InternalError,
            tf.errors.CancelledError,
            tf.errors.UnknownError,
        ],
    )
    async def test_other_errors_do_not_recover(
        self, model: Model, error: type[BaseException]
    ) -> None:
        hook = RaiseOnceAtCountN(1, error(None, None, "not a preemption"))
        sess = asyncsess.MonitoredSession(hooks=[hook])
        with pytest.raises(error, match="not a preemption"):
            async with sess:
                await sess.run(model.inc)
        assert sess.recovery_count == 0


class TestWhereThePreemptionComesFrom:
    """Each source recreates the session; hooks see one after_create_session per
    session created and one begin in all."""

    async def _train(
        self, model: Model, faults: Faults, hooks: list[Any], steps: int = 6
    ) -> tuple[asyncsess.MonitoredSession, FaultyCreator]:
        creator = FaultyCreator(faults)
        sess = asyncsess.MonitoredSession(creator, hooks)
        sess.recovery = asyncsess.RecoveryPolicy(initial_backoff=0)
        async with sess:
            while await sess.run_without_hooks(model.global_step) < steps:
                await sess.run(model.inc)
        return sess, creator

    @pytest.mark.parametrize(
        ("point", "calls"),
        [
            ("create", {1, 2}),
            ("step", {2, 5}),
            ("after_create_session", {1, 2}),
            ("hook_run", {3}),
        ],
    )
    async def test_source(
        self,
        model: Model,
        point: str,
        calls: set[int],
        tf_sessions: SessionCensus,
        no_thread_leaks: None,
    ) -> None:
        faults = Faults({point: calls})
        counting = Counting()

        class PreemptedAfterCreate(asyncsess.SessionRunHook):
            async def after_create_session(self, session: Any, coord: Any) -> None:
                faults.check("after_create_session")

        class ExtraRun(v1.train.SessionRunHook):
            """A TF hook making its own session run, as TF's standard hooks do."""

            def after_run(self, run_context: Any, run_values: Any) -> None:
                with hook_run():
                    run_context.session.run(model.global_step)

        hooks = [counting, PreemptedAfterCreate(), ExtraRun()]
        sess, creator = await self._train(model, faults, hooks)
        assert faults.injected[point] == len(calls)
        assert sess.recovery_count == len(calls)
        assert counting.begins == 1
        assert counting.ends == 1
        # One after_create_session per session created, each with its session.
        assert counting.sessions == creator.created[-len(counting.sessions) :]
        created_before_hooks_failed = len(creator.created)
        assert len(counting.sessions) == created_before_hooks_failed
        assert tf_sessions.open_sessions() == []

    async def test_async_hook_extra_run(self, model: Model) -> None:
        faults = Faults({"hook_run": {2}})

        class AsyncExtraRun(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                def read() -> Any:
                    with hook_run():
                        return run_context.session.run(model.global_step)

                await asyncsess.run_in_session_thread(read)

        sess, _ = await self._train(model, faults, [AsyncExtraRun()])
        assert faults.injected["hook_run"] == 1
        assert sess.recovery_count == 1


class TestPolicy:
    async def test_limit_raises_the_last_error_with_its_type(
        self, model: Model, caplog: pytest.LogCaptureFixture, no_thread_leaks: None
    ) -> None:
        faults = Faults(
            {"create": set(range(1, 100))}, error=tf.errors.UnavailableError
        )
        sess = asyncsess.MonitoredSession(FaultyCreator(faults))
        sess.recovery = asyncsess.RecoveryPolicy(max_recoveries=3, initial_backoff=0)
        # Four attempts: the first and three recoveries; the 4th error is raised.
        with (
            caplog.at_level(logging.WARNING, logger="asyncsess"),
            pytest.raises(tf.errors.UnavailableError, match="injected at create #4"),
        ):
            async with sess:
                pass  # pragma: no cover
        assert faults.calls["create"] == 4
        assert sess.recovery_count == 3
        assert "Giving up after 3 recoveries in a row (limit 3)" in caplog.text
        assert not model.graph.finalized

    async def test_limit_on_steps_and_reset_by_a_good_step(self, model: Model) -> None:
        # Steps 2-3 fail (2 in a row, allowed), then 5-7 (3 in a row: too many).
        faults = Faults(
            {"step": {2, 3, 5, 6, 7}},
            error=tf.errors.AbortedError,
            step_marker=model.inc,
        )
        sess = asyncsess.MonitoredSession(FaultyCreator(faults))
        sess.recovery = asyncsess.RecoveryPolicy(max_recoveries=2, initial_backoff=0)
        with pytest.raises(tf.errors.AbortedError, match="injected at step #7"):
            async with sess:
                await sess.run(model.inc)  # run #1
                await sess.run(model.inc)  # #2, #3 preempted (2 in a row), #4 ok
                await sess.run(model.inc)  # #5, #6 preempted, #7 too: gives up
        # Four sessions recreated; the refused recovery is not one.
        assert sess.recovery_count == 4
        assert sess.stop_reason is not None
        assert sess.stop_reason.kind == "error"

    async def test_run_after_giving_up_says_so(self, model: Model) -> None:
        faults = Faults(
            {"step": {1}, "create": {2}},
            error=tf.errors.UnavailableError,
            step_marker=model.inc,
        )
        sess = asyncsess.MonitoredSession(FaultyCreator(faults))
        sess.recovery = asyncsess.RecoveryPolicy(max_recoveries=1, initial_backoff=0)
        async with sess:
            with pytest.raises(tf.errors.UnavailableError, match="create #2"):
                await sess.run(model.inc)
            with pytest.raises(RuntimeError, match="could not be recreated"):
                await sess.run(model.inc)

    def test_backoff_delays(self) -> None:
        policy = asyncsess.RecoveryPolicy(
            initial_backoff=0.5, multiplier=3, max_backoff=10, jitter=0
        )
        assert [policy.delay(n) for n in range(1, 7)] == [0, 0.5, 1.5, 4.5, 10, 10]
        assert asyncsess.RecoveryPolicy(initial_backoff=0).delay(5) == 0

    def test_backoff_jitter_stays_in_its_band(self) -> None:
        policy = asyncsess.RecoveryPolicy(initial_backoff=1, jitter=0.25)
        delays = [policy.delay(2) for _ in range(500)]
        assert all(0.75 <= d <= 1.25 for d in delays)
        assert len(set(delays)) > 1

    def test_unlimited_policy(self) -> None:
        policy = asyncsess.RecoveryPolicy(max_recoveries=None)
        assert policy.allows(10**6)
        assert not asyncsess.RecoveryPolicy(max_recoveries=0).allows(1)

    async def test_backoff_is_awaited_with_the_policy_delays(
        self, model: Model, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        slept: list[float] = []

        async def fake_sleep(delay: float) -> None:
            slept.append(delay)
            await anyio.lowlevel.checkpoint()

        monkeypatch.setattr(anyio, "sleep", fake_sleep)
        faults = Faults({"create": {1, 2, 3, 4}})
        sess = asyncsess.MonitoredSession(FaultyCreator(faults))
        sess.recovery = asyncsess.RecoveryPolicy(
            initial_backoff=7, multiplier=2, max_backoff=20, jitter=0
        )
        async with sess:
            await sess.run(model.inc)
        # The first retry is immediate (as TensorFlow's), then 7, 14, 20 seconds.
        assert slept == [7, 14, 20]
        assert sess.recovery_count == 4

    async def test_each_recovery_logged_at_warning_with_its_error(
        self, model: Model, caplog: pytest.LogCaptureFixture
    ) -> None:
        faults = Faults({"create": {2}, "step": {1, 3}}, step_marker=model.inc)
        sess = asyncsess.MonitoredSession(FaultyCreator(faults))
        sess.recovery = asyncsess.RecoveryPolicy(initial_backoff=0)
        with caplog.at_level(logging.WARNING, logger="asyncsess"):
            async with sess:
                for _ in range(3):
                    await sess.run(model.inc)
        records = [
            r for r in caplog.records if r.getMessage().startswith("Recovering from")
        ]
        assert [r.levelno for r in records] == [logging.WARNING] * 3
        messages = [r.getMessage() for r in records]
        assert "injected at step #1" in messages[0]
        assert "recovery 1" in messages[0]
        assert "injected at create #2" in messages[1]
        assert "recovery 2, 2 in a row" in messages[1]
        assert "injected at step #3" in messages[2]
        assert sess.recovery_count == 3

    async def test_backoff_wait_is_cancellable(self, model: Model) -> None:
        faults = Faults({"create": {1, 2}})
        sess = asyncsess.MonitoredSession(FaultyCreator(faults))
        sess.recovery = asyncsess.RecoveryPolicy(initial_backoff=3600, jitter=0)
        with anyio.move_on_after(0.2) as scope:
            await sess.open()
        assert scope.cancelled_caught
        assert sess.should_stop()


class TestStepFnAfterRecovery:
    async def test_async_step_fn_gets_the_new_session(self, model: Model) -> None:
        seen: list[Any] = []

        async def step_fn(step_context: Any) -> Any:
            seen.append(step_context.session)
            if len(seen) == 1:
                raise tf.errors.AbortedError(None, None, "preempted in step_fn")
            return await step_context.run_with_hooks(model.inc)

        async with asyncsess.MonitoredSession() as sess:
            assert await sess.run_step_fn(step_fn) == 1
            assert seen[0] is not seen[1]
            assert seen[0]._closed
            assert not seen[1]._closed
            assert sess.recovery_count == 1

    async def test_plain_step_fn_gets_the_new_session(self, model: Model) -> None:
        seen: list[Any] = []

        def step_fn(step_context: Any) -> Any:
            seen.append(step_context.session)
            if len(seen) == 1:
                raise tf.errors.UnavailableError(None, None, "preempted in step_fn")
            return step_context.session.run(model.inc)

        async with asyncsess.MonitoredSession() as sess:
            assert await sess.run_step_fn(step_fn) == 1
            assert seen[0] is not seen[1]
            assert seen[0]._closed

    async def test_step_fn_run_with_hooks_preempted(self, model: Model) -> None:
        faults = Faults({"step": {1}}, step_marker=model.inc)
        calls: list[Any] = []

        async def step_fn(step_context: Any) -> Any:
            calls.append(step_context.session)
            return await step_context.run_with_hooks(model.inc)

        creator = FaultyCreator(faults)
        async with asyncsess.MonitoredSession(creator) as sess:
            sess.recovery = asyncsess.RecoveryPolicy(initial_backoff=0)
            # As TensorFlow: the preemption ends the step_fn, which is called
            # again on the new session (its own side effects run twice).
            assert await sess.run_step_fn(step_fn) == 1
            assert calls == creator.created[:2]
            assert sess.recovery_count == 1


class TestCheckpointFloor:
    async def test_global_step_never_goes_below_the_last_checkpoint(
        self, model: Model, tmp_path: Path
    ) -> None:
        faults = Faults({"step": 0.15}, seed=7, step_marker=model.inc)
        scaffold = v1.train.Scaffold()
        saver = asyncsess.hooks.CheckpointSaverHook(
            str(tmp_path), save_steps=3, scaffold=scaffold
        )
        inner = asyncsess.ChiefSessionCreator(scaffold, checkpoint_dir=str(tmp_path))
        sess = asyncsess.MonitoredSession(FaultyCreator(faults, inner), [saver])
        sess.recovery = asyncsess.RecoveryPolicy(max_recoveries=None, initial_backoff=0)
        last_saved = 0
        async with sess:
            step = 0
            while step < 30:
                step = int(await sess.run(model.inc))
                # After a restore the step resumes right after the checkpoint.
                assert step > last_saved
                latest = v1.train.latest_checkpoint(str(tmp_path))
                if latest is not None:
                    saved = int(latest.rsplit("-", 1)[1])
                    assert saved >= last_saved
                    last_saved = saved
        assert faults.total > 0
        assert sess.recovery_count == faults.total


class TestCoordinatorPreemption:
    async def test_hook_requesting_stop_with_a_preemption_recovers(
        self, model: Model
    ) -> None:
        """A preemption held by the coordinator is the root cause of a step error."""

        class Reporter(asyncsess.SessionRunHook):
            done = False

            async def after_create_session(self, session: Any, coord: Any) -> None:
                self.coord = coord

            async def before_run(self, run_context: Any) -> Any:
                if not self.done:
                    self.done = True
                    try:
                        raise tf.errors.AbortedError(None, None, "from a thread")
                    except tf.errors.AbortedError as exc:
                        self.coord.request_stop(exc)
                    return SessionRunArgs("nope:0")  # the step then fails
                return None

        async with asyncsess.MonitoredSession(hooks=[Reporter()]) as sess:
            sess.recovery = asyncsess.RecoveryPolicy(initial_backoff=0)
            assert await sess.run(model.inc) == 1
            assert sess.recovery_count == 1
            assert not sess.should_stop()
