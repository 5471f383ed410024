"""RunCache: Session.run's results and errors, with make_callable underneath."""

from __future__ import annotations

import collections
import itertools
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from asyncsess._run_cache import CALLER_THREAD, RunCache, fetch_key

v1 = tf.compat.v1

Pair = collections.namedtuple("Pair", ["a", "b"])


@pytest.fixture
def model() -> Any:
    graph = tf.Graph()
    with graph.as_default():
        step = v1.train.get_or_create_global_step()
        inc = step.assign_add(1, read_value=False)
        x = v1.placeholder(tf.float32, shape=[], name="x")
        y = tf.identity(x * 2.0, name="y")
        c = tf.constant([1.0, 2.0], name="c")
        sp = tf.SparseTensor([[0, 0]], [3.0], [2, 2])
        bad = tf.strings.to_number(v1.placeholder_with_default("abc", []), name="bad")
        sess = v1.Session(graph=graph)
        sess.run(v1.global_variables_initializer())
    yield (
        graph,
        sess,
        {"step": step, "inc": inc, "x": x, "y": y, "c": c, "sp": sp, "bad": bad},
    )
    sess.close()


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for p, q in zip(a, b, strict=True):
            _same(p, q)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b or repr(a) == repr(b)


class TestRunCache:
    def test_results_match_session_run(self, model: Any) -> None:
        _, sess, t = model
        cache = RunCache()
        structures = [
            t["c"],
            t["inc"],
            [t["c"], t["inc"]],
            (t["c"],),
            Pair(t["c"], [t["c"], "c:0"]),
            {"c": t["c"], "nested": {"op": t["inc"]}, 1: [t["sp"]]},
            "c:0",
            t["step"],
            [[], t["c"]],
        ]
        for fetches in structures:
            for _ in range(2):  # a miss, then a hit
                _same(cache.run(sess, fetches), sess.run(fetches))

    def test_steps_run_once_per_call(self, model: Any) -> None:
        _, sess, t = model
        cache = RunCache()
        for _ in range(3):
            cache.run(sess, [t["inc"]])
        assert sess.run(t["step"]) == 3

    def test_list_mutated_in_place_is_not_stale(self, model: Any) -> None:
        _, sess, t = model
        cache = RunCache()
        fetches = [t["c"]]
        cache.run(sess, fetches)
        fetches.append(t["step"])
        assert len(cache.run(sess, fetches)) == 2

    def test_feeds_and_options_go_through_session_run(self, model: Any) -> None:
        _, sess, t = model
        cache = RunCache()
        assert cache.run(sess, t["y"], {t["x"]: 2.0}) == 4.0
        assert cache.run(sess, t["y"], {"x:0": 3.0}) == 6.0
        meta = v1.RunMetadata()
        options = v1.RunOptions(trace_level=v1.RunOptions.FULL_TRACE)
        cache.run(sess, t["c"], None, options, meta)
        assert meta.step_stats.dev_stats
        assert len(cache._signatures) == 2  # the fed ones; not the one with options
        for _ in range(40):  # fed steps are measured and may use the caller thread
            assert cache.run(sess, t["y"], {t["x"]: 2.0}) == 4.0

    def test_errors_are_session_runs(self, model: Any) -> None:
        _, sess, t = model
        cache = RunCache()
        for _ in range(2):
            with pytest.raises(tf.errors.InvalidArgumentError) as ours:
                cache.run(sess, t["bad"])
            with pytest.raises(tf.errors.InvalidArgumentError) as theirs:
                sess.run(t["bad"])
            assert str(ours.value) == str(theirs.value)
        with pytest.raises(TypeError, match="Cannot be None"):
            cache.run(sess, [None])
        assert cache.run(sess, []) == sess.run([]) == []

    def test_closed_and_new_sessions(self, model: Any) -> None:
        graph, sess, t = model
        cache = RunCache()
        cache.run(sess, t["c"])
        sess.close()
        with pytest.raises(RuntimeError, match="closed Session"):
            cache.run(sess, t["c"])
        with graph.as_default():
            other = v1.Session(graph=graph)
        with other:
            other.run(v1.global_variables_initializer())
            cache.run(other, t["inc"])
            assert cache.run(other, t["step"]) == 1

    def test_session_subclass_overriding_run_is_respected(self, model: Any) -> None:
        graph, _, t = model
        calls = []

        class Spy(v1.Session):  # type: ignore[misc]
            def run(self, *args: Any, **kwargs: Any) -> Any:
                calls.append(args)
                return super().run(*args, **kwargs)

        with Spy(graph=graph) as spy:
            RunCache().run(spy, t["c"])
        assert calls

    def test_keys(self, model: Any) -> None:
        _, _, t = model
        assert fetch_key([t["c"]]) == fetch_key([t["c"]])
        assert fetch_key([t["c"]]) != fetch_key((t["c"],))
        assert fetch_key({1: t["c"]}) != fetch_key({True: t["c"]})
        assert fetch_key(collections.OrderedDict(a=t["c"])) is None
        assert fetch_key([object()]) is None


def _scripted(pool_s: float, thread_s: float) -> Any:
    """A clock for RunCache: pooled probes take *pool_s*, caller-thread *thread_s*.

    Probes alternate pool, caller thread, ...; each reads the clock twice.
    """
    ticks = itertools.count()
    now = 0.0

    def clock() -> float:
        nonlocal now
        tick = next(ticks)
        if tick % 2:
            now += pool_s if (tick // 2) % 2 == 0 else thread_s
        return now

    return clock


def _runs_needed(cache: RunCache) -> int:
    return cache.warmup + 2 * cache.probes


class Spy(v1.Session):  # type: ignore[misc]
    """A session recording the RunOptions each cached step ran with."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options: list[Any] = []

    def _do_call(self, fn: Any, *args: Any) -> Any:
        if len(args) <= 1:  # a cached callable (Session.run passes five)
            self.options.append(args[0] if args else None)
        return super()._do_call(fn, *args)

    def ran_on_caller_thread(self, last: int) -> list[bool]:
        return [o is not None and o.inter_op_thread_pool == -1 for o in self.options][
            -last:
        ]


class TestCallerThread:
    """Steps that run faster on the calling thread than on TF's inter-op pool."""

    @pytest.fixture
    def counter(self) -> Any:
        """A step that increments a resource variable and returns it."""
        graph = tf.Graph()
        with graph.as_default():
            step = v1.train.get_or_create_global_step()
            inc = step.assign_add(1)
            sess = Spy(graph=graph)
            sess.run(v1.global_variables_initializer())
        yield sess, inc
        sess.close()

    def test_faster_caller_thread_is_kept(self, counter: Any) -> None:
        sess, inc = counter
        cache = RunCache()
        cache.clock = _scripted(pool_s=100e-6, thread_s=10e-6)
        values = [cache.run(sess, inc) for _ in range(_runs_needed(cache) + 5)]
        assert values == list(range(1, len(values) + 1))  # one step per call
        assert next(iter(cache._signatures.values())).inline is True
        assert sess.ran_on_caller_thread(5) == [True] * 5

    def test_slower_caller_thread_is_dropped(self, counter: Any) -> None:
        sess, inc = counter
        cache = RunCache()
        cache.clock = _scripted(pool_s=100e-6, thread_s=300e-6)
        for _ in range(_runs_needed(cache) + 5):
            cache.run(sess, inc)
        assert next(iter(cache._signatures.values())).inline is False
        assert sess.ran_on_caller_thread(5) == [False] * 5

    def test_slow_steps_never_try(self, counter: Any) -> None:
        sess, inc = counter
        cache = RunCache()
        cache.clock = _scripted(pool_s=5e-3, thread_s=1e-6)
        for _ in range(cache.warmup + 1):
            cache.run(sess, inc)
        assert next(iter(cache._signatures.values())).inline is False
        assert not any(sess.ran_on_caller_thread(100))

    def test_a_failing_caller_thread_probe_falls_back_to_the_pool(
        self, counter: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sess, inc = counter
        cache = RunCache()
        cache.clock = _scripted(pool_s=100e-6, thread_s=1e-6)
        real = Spy._do_call

        def fail_on_caller_thread(self: Spy, fn: Any, *args: Any) -> Any:
            if len(args) == 1 and args[0] is not None:
                raise tf.errors.InternalError(None, None, "only there")
            return real(self, fn, *args)

        monkeypatch.setattr(Spy, "_do_call", fail_on_caller_thread)
        with pytest.raises(tf.errors.InternalError):
            for _ in range(cache.warmup + 2):
                cache.run(sess, inc)
        assert next(iter(cache._signatures.values())).inline is False
        for _ in range(3):
            cache.run(sess, inc)  # on the pool from now on

    def test_off_and_remote_sessions_never_try(self, counter: Any) -> None:
        sess, inc = counter
        cache = RunCache()
        cache.configure(0)
        cache.clock = _scripted(pool_s=100e-6, thread_s=1e-6)
        for _ in range(_runs_needed(cache) + 1):
            cache.run(sess, inc)
        assert not any(sess.ran_on_caller_thread(100))
        server = v1.train.Server.create_local_server()
        with v1.Session(server.target, graph=sess.graph) as remote:
            remote.run(v1.global_variables_initializer())
            cache = RunCache()
            cache.clock = _scripted(pool_s=100e-6, thread_s=1e-6)
            for _ in range(_runs_needed(cache) + 1):
                cache.run(remote, inc)
        assert next(iter(cache._signatures.values())).inline is False

    def test_step_whose_results_depend_on_order_keeps_the_pool(self) -> None:
        graph = tf.Graph()
        with graph.as_default():
            n = v1.get_variable("n", initializer=0, trainable=False)
            inc = v1.assign_add(n, 1)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            cache = RunCache()
            cache.clock = _scripted(pool_s=100e-6, thread_s=1e-6)
            for _ in range(_runs_needed(cache) + 2):
                cache.run(sess, [inc, n])
            assert next(iter(cache._signatures.values())).inline is False

    def test_caller_thread_options_are_tf_own(self) -> None:
        assert CALLER_THREAD.inter_op_thread_pool == -1


class TestSessionSetting:
    """MonitoredSession.caller_thread_below drives its RunCache."""

    async def test_steps_move_to_the_caller_thread_and_back(self) -> None:
        import asyncsess

        with tf.Graph().as_default():
            step = v1.train.get_or_create_global_step()
            inc = step.assign_add(1)
            sess = asyncsess.MonitoredSession()
            with pytest.raises(ValueError, match="Received: caller_thread_below=-1"):
                sess.caller_thread_below = -1
            assert sess.caller_thread_below == 1e-3
            async with sess:
                cache = sess._run_cache
                cache.clock = _scripted(pool_s=100e-6, thread_s=1e-6)
                for _ in range(_runs_needed(cache) + 3):
                    await sess.run(inc)
                assert [s.inline for s in cache._signatures.values()] == [True]
                sess.caller_thread_below = 0
                for _ in range(3):
                    await sess.run(inc)
                assert [s.inline for s in cache._signatures.values()] == [False]
                assert await sess.run(step) == _runs_needed(cache) + 6
