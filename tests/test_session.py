"""MonitoredSession: lifecycle order, run(), results, stops, exit, graph handling."""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import tensorflow as tf

import asyncsess
from asyncsess import SessionRunArgs

from .conftest import Model

v1 = tf.compat.v1
pytestmark = pytest.mark.anyio


class Recorder(asyncsess.SessionRunHook):
    """An async hook that records every call, in order, into a shared log."""

    def __init__(self, log: list[str], name: str, fetch: Any = None) -> None:
        self.log, self.name, self.fetch = log, name, fetch
        self.results: list[Any] = []
        self.contexts: list[Any] = []

    async def begin(self) -> None:
        self.log.append(f"{self.name}.begin")
        self.graph = v1.get_default_graph()

    async def after_create_session(self, session: Any, coord: Any) -> None:
        self.log.append(f"{self.name}.after_create_session")

    async def before_run(self, run_context: Any) -> Any:
        self.log.append(f"{self.name}.before_run")
        self.contexts.append(run_context)
        await anyio.lowlevel.checkpoint()
        return SessionRunArgs(self.fetch) if self.fetch is not None else None

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        self.log.append(f"{self.name}.after_run")
        self.results.append(run_values.results)

    async def end(self, session: Any) -> None:
        self.log.append(f"{self.name}.end")


class TFRecorder(v1.train.SessionRunHook):
    """TensorFlow's sync hook protocol, recording calls and the calling thread."""

    def __init__(self, log: list[str], name: str, fetch: Any = None) -> None:
        self.log, self.name, self.fetch = log, name, fetch
        self.threads: set[str] = set()
        self.results: list[Any] = []

    def begin(self) -> None:
        self.log.append(f"{self.name}.begin")
        self.threads.add(threading.current_thread().name)
        self.graph = v1.get_default_graph()

    def after_create_session(self, session: Any, coord: Any) -> None:
        self.log.append(f"{self.name}.after_create_session")

    def before_run(self, run_context: Any) -> Any:
        self.log.append(f"{self.name}.before_run")
        self.threads.add(threading.current_thread().name)
        return SessionRunArgs(self.fetch) if self.fetch is not None else None

    def after_run(self, run_context: Any, run_values: Any) -> None:
        self.log.append(f"{self.name}.after_run")
        self.results.append(run_values.results)

    def end(self, session: Any) -> None:
        self.log.append(f"{self.name}.end")


class TestLifecycle:
    async def test_construction_does_nothing(self, model: Model) -> None:
        log: list[str] = []
        asyncsess.MonitoredSession(hooks=[Recorder(log, "a")])
        assert log == []
        assert not model.graph.finalized

    async def test_order_of_open_run_close(self, model: Model) -> None:
        log: list[str] = []
        hooks = [Recorder(log, "a"), TFRecorder(log, "tf"), Recorder(log, "b")]
        sess = asyncsess.MonitoredSession(hooks=hooks)
        async with sess:
            assert model.graph.finalized
            assert log == [
                "a.begin",
                "tf.begin",
                "b.begin",
                "a.after_create_session",
                "tf.after_create_session",
                "b.after_create_session",
            ]
            log.clear()
            await sess.run(model.inc)
            assert sorted(log[:3]) == ["a.before_run", "b.before_run", "tf.before_run"]
            assert sorted(log[3:]) == ["a.after_run", "b.after_run", "tf.after_run"]
            log.clear()
        assert log == ["a.end", "tf.end", "b.end"]
        assert not model.graph.finalized
        assert sess.should_stop()

    async def test_begin_sees_the_session_graph(self, model: Model) -> None:
        log: list[str] = []
        hooks = [Recorder(log, "a"), TFRecorder(log, "tf")]
        sess = asyncsess.MonitoredSession(hooks=hooks)
        # Open outside the graph's context: hooks must still see the captured graph.
        with tf.Graph().as_default():
            pass
        async with sess:
            assert sess.graph is model.graph
        assert hooks[0].graph is model.graph
        assert hooks[1].graph is model.graph

    async def test_tf_sync_hooks_run_off_the_loop(self, model: Model) -> None:
        log: list[str] = []
        hook = TFRecorder(log, "tf")
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(model.inc)
        assert hook.threads
        assert threading.current_thread().name not in hook.threads

    async def test_open_twice_raises(self, model: Model) -> None:
        sess = asyncsess.MonitoredSession()
        async with sess:
            with pytest.raises(RuntimeError, match="a session opens once"):
                await sess.open()

    async def test_close_is_idempotent(self, model: Model) -> None:
        log: list[str] = []
        sess = asyncsess.MonitoredSession(hooks=[Recorder(log, "a")])
        async with sess:
            await sess.close()
            await sess.close()
        assert log.count("a.end") == 1

    async def test_open_and_close_without_async_with(self, model: Model) -> None:
        sess = asyncsess.MonitoredSession()
        await sess.open()
        assert await sess.run(model.inc) == 1
        await sess.close()
        with pytest.raises(RuntimeError, match="closed session"):
            await sess.run(model.inc)

    async def test_run_before_open_raises(self, model: Model) -> None:
        sess = asyncsess.MonitoredSession()
        with pytest.raises(RuntimeError, match="unopened session"):
            await sess.run(model.inc)

    async def test_failed_begin_leaves_nothing_open(
        self, model: Model, no_thread_leaks: None
    ) -> None:
        class Bad(asyncsess.SessionRunHook):
            async def begin(self) -> None:
                raise ValueError("bad begin")

        with pytest.raises(ValueError, match="bad begin"):
            async with asyncsess.MonitoredSession(hooks=[Bad()]):
                pass
        assert not model.graph.finalized

    async def test_graph_finalized_before_stays_finalized(self, model: Model) -> None:
        v1.train.Scaffold().finalize()
        assert model.graph.finalized
        async with asyncsess.MonitoredSession() as sess:
            await sess.run(model.inc)
        assert model.graph.finalized


class TestRun:
    async def test_result_structures(self, model: Model) -> None:
        Pair = collections.namedtuple("Pair", ["a", "b"])
        async with asyncsess.MonitoredSession() as sess:
            feed = {model.x: 2.0}
            assert await sess.run(model.y, feed_dict=feed) == 2.0
            assert await sess.run([model.y, (model.y,)], feed_dict=feed) == [
                2.0,
                (2.0,),
            ]
            result = await sess.run({"p": Pair(model.y, [model.y])}, feed_dict=feed)
            assert isinstance(result["p"], Pair)
            assert result["p"].b == [2.0]
            assert await sess.run(model.train_op) is None

    async def test_same_results_with_hooks(self, model: Model) -> None:
        log: list[str] = []
        hooks = [Recorder(log, "a", model.global_step), TFRecorder(log, "tf", model.w)]
        async with asyncsess.MonitoredSession(hooks=hooks) as sess:
            out = await sess.run(
                {"y": model.y, "l": [model.y]}, feed_dict={model.x: 3.0}
            )
            assert out == {"y": 3.0, "l": [3.0]}
        assert hooks[0].results == [0]
        assert hooks[1].results == [1.0]

    async def test_hooks_share_one_run_context(self, model: Model) -> None:
        log: list[str] = []
        a, b = Recorder(log, "a"), Recorder(log, "b")
        async with asyncsess.MonitoredSession(hooks=[a, b]) as sess:
            await sess.run(model.inc)
        assert a.contexts[0] is b.contexts[0]
        assert a.contexts[0].original_args == SessionRunArgs(model.inc, None)

    async def test_hooks_without_fetches_get_options_and_metadata(
        self, model: Model
    ) -> None:
        seen: list[Any] = []

        class Hook(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                seen.append(run_values)

        async with asyncsess.MonitoredSession(hooks=[Hook(), Hook()]) as sess:
            await sess.run(model.inc)
        assert seen[0].results is None
        assert isinstance(seen[0].options, v1.RunOptions)
        assert isinstance(seen[0].run_metadata, v1.RunMetadata)
        assert seen[0].options is seen[1].options

    async def test_before_run_hooks_run_concurrently(self, model: Model) -> None:
        both_started = anyio.Event()
        started = 0

        class Meet(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> None:
                nonlocal started
                started += 1
                if started == 2:
                    both_started.set()
                with anyio.fail_after(10):
                    await both_started.wait()

        async with asyncsess.MonitoredSession(hooks=[Meet(), Meet()]) as sess:
            await sess.run(model.inc)

    async def test_plain_def_methods_on_async_hooks(self, model: Model) -> None:
        class Plain(asyncsess.SessionRunHook):
            def before_run(self, run_context: Any) -> Any:  # type: ignore[override]
                return SessionRunArgs(model.global_step)

            def after_run(self, run_context: Any, run_values: Any) -> None:  # type: ignore[override]
                self.value = run_values.results

        hook = Plain()
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            await sess.run(model.inc)
        assert hook.value == 0

    async def test_event_loop_runs_during_step(self, model: Model) -> None:
        with model.graph.as_default():
            q = v1.FIFOQueue(1, tf.float32)
            dequeue = q.dequeue()
            enqueue = q.enqueue(1.0)
        async with asyncsess.MonitoredSession() as sess:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sess.run, dequeue)
                # The dequeue blocks on the worker thread, yet the loop runs on,
                # so this raw-session enqueue (from another thread) unblocks it.
                await anyio.sleep(0.05)
                raw = sess._tf_sess
                await anyio.to_thread.run_sync(raw.run, enqueue)

    async def test_concurrent_callers_are_serialised(self, model: Model) -> None:
        order: list[int] = []
        async with asyncsess.MonitoredSession() as sess:

            async def caller() -> None:
                order.append(int(await sess.run(model.inc)))

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(caller)
        assert sorted(order) == list(range(1, 21))

    async def test_before_run_wrong_type_is_a_type_error(self, model: Model) -> None:
        class Bad(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return (model.inc,)

        with pytest.raises(TypeError, match=r"Hook Bad .* returned .*expected None or"):
            async with asyncsess.MonitoredSession(hooks=[Bad()]) as sess:
                await sess.run(model.inc)


class TestFeeds:
    async def test_two_hooks_feeding_the_same_tensor(self, model: Model) -> None:
        class Feed(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(None, feed_dict={model.x: 1.0})

        with pytest.raises(RuntimeError, match="Same tensor is fed by two hooks"):
            async with asyncsess.MonitoredSession(hooks=[Feed(), Feed()]) as sess:
                await sess.run(model.y)

    async def test_hook_and_user_feeding_the_same_tensor(self, model: Model) -> None:
        class Feed(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(None, feed_dict={"x:0": 1.0})

        sess = asyncsess.MonitoredSession(hooks=[Feed()])
        with pytest.raises(
            RuntimeError, match=r"Same tensor is fed by a SessionRunHook and user\."
        ):
            async with sess:
                await sess.run(model.y, feed_dict={model.x: 2.0})

    async def test_hook_feeds_merge_without_mutating_user_feeds(
        self, model: Model
    ) -> None:
        with model.graph.as_default():
            z = v1.placeholder(tf.float32, [], name="z")
            total = model.x + z

        class Feed(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(None, feed_dict={z: 10.0})

        user_feed = {model.x: 1.0}
        async with asyncsess.MonitoredSession(hooks=[Feed()]) as sess:
            assert await sess.run(total, feed_dict=user_feed) == 11.0
        assert user_feed == {model.x: 1.0}


class TestStop:
    async def test_hook_stop_ends_loop_and_names_the_hook(self, model: Model) -> None:
        class StopAt3(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> Any:
                return SessionRunArgs(model.global_step)

            async def after_run(self, run_context: Any, run_values: Any) -> None:
                if run_values.results >= 2:
                    run_context.request_stop()

        async with asyncsess.MonitoredSession(hooks=[StopAt3()]) as sess:
            steps = 0
            while not sess.should_stop():
                await sess.run(model.inc)
                steps += 1
            assert steps == 3
            assert sess.stop_reason is not None
            assert sess.stop_reason.kind == "hook"
            assert "StopAt3" in str(sess.stop_reason)
            with pytest.raises(
                RuntimeError, match=r"Run called even after should_stop requested\."
            ):
                await sess.run(model.inc)

    async def test_tf_stop_at_step_hook(self, model: Model) -> None:
        hook = v1.train.StopAtStepHook(last_step=5)
        async with asyncsess.MonitoredSession(hooks=[hook]) as sess:
            while not sess.should_stop():
                await sess.run(model.inc)
            assert await sess.run_without_hooks(model.global_step) == 5

    async def test_request_stop_from_another_task(self, model: Model) -> None:
        async with asyncsess.MonitoredSession() as sess:
            steps = 0
            while not sess.should_stop():
                await sess.run(model.inc)
                steps += 1
                if steps == 4:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(anyio.to_thread.run_sync, sess.request_stop)
            assert steps == 4
            assert sess.stop_reason is not None
            assert sess.stop_reason.kind == "user"

    async def test_stop_kept_when_a_later_after_run_raises(self, model: Model) -> None:
        class Stopper(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                run_context.request_stop()

        class Raiser(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                await anyio.sleep(0.01)
                raise KeyError("late")

        sess = asyncsess.MonitoredSession(hooks=[Stopper(), Raiser()])
        with pytest.raises(KeyError, match="late"):
            async with sess:
                try:
                    await sess.run(model.inc)
                finally:
                    assert sess.should_stop()


class TestExit:
    @pytest.mark.parametrize("error", [tf.errors.OutOfRangeError, StopIteration])
    async def test_end_of_input_is_swallowed_and_hooks_end(
        self, model: Model, error: type[BaseException]
    ) -> None:
        log: list[str] = []
        sess = asyncsess.MonitoredSession(hooks=[Recorder(log, "a")])
        async with sess:
            if error is StopIteration:
                raise StopIteration
            raise tf.errors.OutOfRangeError(None, None, "done")
        assert "a.end" in log
        assert sess.stop_reason is not None
        assert sess.stop_reason.kind == "end_of_input"

    async def test_other_errors_skip_end_and_call_on_error(self, model: Model) -> None:
        log: list[str] = []
        errors: list[Any] = []

        class OnError(asyncsess.SessionRunHook):
            async def on_error(self, exc: BaseException, session: Any) -> None:
                errors.append((exc, session))
                # The TF session is still usable here.
                await asyncsess.run_in_session_thread(session.run, model.inc)

        sess = asyncsess.MonitoredSession(hooks=[Recorder(log, "a"), OnError()])
        with pytest.raises(ValueError, match="boom"):
            async with sess:
                raise ValueError("boom")
        assert "a.end" not in log
        assert isinstance(errors[0][0], ValueError)
        assert errors[0][1] is not None
        assert sess.stop_reason is not None
        assert sess.stop_reason.kind == "error"

    async def test_error_is_not_wrapped_in_a_group(self, model: Model) -> None:
        class Bad(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                raise ZeroDivisionError("hook")

        class Slow(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                await anyio.sleep(5)

        sess = asyncsess.MonitoredSession(hooks=[Slow(), Bad()])
        with pytest.raises(ZeroDivisionError, match="hook"):
            async with sess:
                await sess.run(model.inc)

    async def test_hook_out_of_range_is_logged_naming_the_hook(
        self, model: Model, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Eval(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                raise tf.errors.OutOfRangeError(None, None, "eval data ran out")

        sess = asyncsess.MonitoredSession(hooks=[Eval()])
        with caplog.at_level(logging.WARNING, logger="asyncsess"):
            async with sess:
                await sess.run(model.inc)
        assert "Eval.after_run()" in caplog.text
        assert sess.stop_reason is not None
        assert sess.stop_reason.source == "Eval.after_run()"

    async def test_end_error_propagates_and_session_closes(
        self, model: Model, no_thread_leaks: None
    ) -> None:
        log: list[str] = []

        class BadEnd(asyncsess.SessionRunHook):
            async def end(self, session: Any) -> None:
                raise KeyError("end")

        sess = asyncsess.MonitoredSession(hooks=[BadEnd(), Recorder(log, "b")])
        with pytest.raises(KeyError, match="end"):
            async with sess:
                pass
        assert "b.end" not in log
        assert sess.should_stop()


class TestGraph:
    async def test_two_graphs_interleaved(self) -> None:
        models = [Model(), Model()]
        sessions = []
        for m in models:
            with m.graph.as_default():
                sessions.append(asyncsess.MonitoredSession())
        async with sessions[0] as a, sessions[1] as b:
            for i in range(1, 6):
                assert await a.run(models[0].inc) == i
                assert await b.run(models[1].inc) == 2 * i - 1
                assert await b.run(models[1].inc) == 2 * i
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.run, models[0].inc)
                tg.start_soon(b.run, models[1].inc)
        assert not models[0].graph.finalized
        assert not models[1].graph.finalized

    async def test_finalized_graph_error_names_the_hook(self, model: Model) -> None:
        class AddsOps(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                tf.constant(1.0)

        sess = asyncsess.MonitoredSession(hooks=[AddsOps()])
        with pytest.raises(RuntimeError, match=r"AddsOps in after_run\(\).*begin\(\)"):
            async with sess:
                await sess.run(model.inc)


class TestRunWithoutHooks:
    async def test_skips_hooks(self, model: Model) -> None:
        log: list[str] = []
        async with asyncsess.MonitoredSession(hooks=[Recorder(log, "a")]) as sess:
            log.clear()
            assert await sess.run_without_hooks(model.inc) == 1
            assert log == []


class TestValidation:
    def test_bad_session_creator(self, model: Model) -> None:
        with pytest.raises(TypeError, match="session_creator must be"):
            asyncsess.MonitoredSession(session_creator=object())

    def test_bad_hook(self, model: Model) -> None:
        with pytest.raises(TypeError, match=r"neither an asyncsess\.SessionRunHook"):
            asyncsess.MonitoredSession(hooks=[object()])

    def test_bad_grace_period(self, model: Model) -> None:
        with pytest.raises(ValueError, match="stop_grace_period_secs"):
            asyncsess.MonitoredSession(stop_grace_period_secs=-1)


class TestOptionsAsKeywords:
    """API.md "Session options as keywords": same as setting the attributes."""

    @pytest.mark.parametrize(
        "make",
        [
            asyncsess.MonitoredSession,
            asyncsess.SingularMonitoredSession,
            asyncsess.MonitoredTrainingSession,
        ],
    )
    async def test_keywords_equal_attributes(self, model: Model, make: Any) -> None:
        options: dict[str, Any] = {"step_cancel_grace": 0.5, "caller_thread_below": 0}
        policy = asyncsess.RecoveryPolicy(max_recoveries=3)
        if make is not asyncsess.SingularMonitoredSession:
            options["recovery"] = policy
        sess = make(**options)
        assert sess.step_cancel_grace == 0.5
        assert sess.caller_thread_below == 0
        if "recovery" in options:
            assert sess.recovery is policy
        async with sess:
            assert sess._run_cache is not None
            assert sess._run_cache.probe_below == 0
            await sess.run(model.inc)
            sess.caller_thread_below = 2e-3  # attributes stay live once open
            assert sess._run_cache.probe_below == 2e-3

    def test_singular_does_not_recover(self, model: Model) -> None:
        with pytest.raises(TypeError, match="recovery"):
            asyncsess.SingularMonitoredSession(  # type: ignore[call-arg]
                recovery=asyncsess.RecoveryPolicy()
            )

    @pytest.mark.parametrize(
        ("name", "value", "error", "match"),
        [
            ("step_cancel_grace", -1, ValueError, "Received: step_cancel_grace=-1"),
            ("caller_thread_below", "1ms", ValueError, "caller_thread_below='1ms'"),
            ("recovery", 16, TypeError, "Received: recovery=16"),
        ],
    )
    def test_bad_values_name_the_culprit(
        self, model: Model, name: str, value: Any, error: type, match: str
    ) -> None:
        with pytest.raises(error, match=match):
            asyncsess.MonitoredSession(**{name: value})
        sess = asyncsess.MonitoredSession()
        with pytest.raises(error, match=match):
            setattr(sess, name, value)


class TestRunInSessionThread:
    async def test_hooks_reach_the_session_worker_and_graph(self) -> None:
        # Two graphs: the hook must run its TF call in its own session's graph,
        # whatever the loop thread's default graph is.
        seen: list[Any] = []

        class Reads(asyncsess.SessionRunHook):
            async def after_run(self, run_context: Any, run_values: Any) -> None:
                def read() -> Any:
                    seen.append(
                        (threading.current_thread().name, v1.get_default_graph())
                    )
                    return run_context.session.run(m.global_step)

                await asyncsess.run_in_session_thread(read)

        m = Model()
        with m.graph.as_default():
            sess = asyncsess.MonitoredSession(hooks=[Reads()])
        with tf.Graph().as_default():
            async with sess:
                await sess.run(m.inc)
        name, graph = seen[0]
        assert name.startswith("asyncsess-worker")
        assert graph is m.graph


class TestOnError:
    async def test_plain_def_on_error_runs_in_the_graph(self, model: Model) -> None:
        seen: list[Any] = []

        class Plain(asyncsess.SessionRunHook):
            def on_error(self, exc: BaseException, session: Any) -> None:  # type: ignore[override]
                seen.append((type(exc), v1.get_default_graph()))

        sess = asyncsess.MonitoredSession(hooks=[Plain()])
        with pytest.raises(KeyError):
            async with sess:
                raise KeyError("x")
        assert seen == [(KeyError, model.graph)]
