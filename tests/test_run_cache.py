"""RunCache: Session.run's results and errors, with make_callable underneath."""

from __future__ import annotations

import collections
import itertools
import re
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from asyncsess._run_cache import (
    CALLER_THREAD,
    CALLER_THREAD_BUFFER,
    RunCache,
    fetch_key,
)

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


def _on_caller_thread(sess: Any, fn: Any, args: tuple[Any, ...]) -> bool:
    """Whether a step `Session._do_call(fn, *args)` runs is on the caller thread."""
    if getattr(fn, "__self__", None) is sess:  # a planned step: options first
        return args[0] is CALLER_THREAD_BUFFER
    # Session.run's (feeds, fetches, targets, options, run_metadata): only
    # RunCache passes options in these tests.
    return args[3] is not None


class Spy(v1.Session):  # type: ignore[misc]
    """A session recording whether each step ran on the caller thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inline: list[bool] = []
        #: Per step, whether a plan ran it (not Session.run).
        self.planned: list[bool] = []

    def _do_call(self, fn: Any, *args: Any) -> Any:
        self.inline.append(_on_caller_thread(self, fn, args))
        self.planned.append(getattr(fn, "__self__", None) is self)
        return super()._do_call(fn, *args)

    def ran_on_caller_thread(self, last: int) -> list[bool]:
        return self.inline[-last:]


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
            if _on_caller_thread(self, fn, args):
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


# -- fed steps ---------------------------------------------------------------------


class Fed:
    """A graph whose steps feed placeholders of several kinds, and its session."""

    def __init__(self) -> None:
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.step = v1.train.get_or_create_global_step()
            self.inc = self.step.assign_add(1, read_value=False)
            self.x = v1.placeholder(tf.float32, shape=[None, 2], name="x")
            self.n = v1.placeholder(tf.int32, shape=[], name="n")
            self.s = v1.placeholder(tf.string, shape=[], name="s")
            self.b = v1.placeholder_with_default(False, shape=[], name="b")
            self.sp = v1.sparse_placeholder(tf.float32, name="sp")
            self.y = tf.identity(self.x * 2.0, name="y")  # fed, though no placeholder
            self.total = tf.reduce_sum(self.y) + tf.cast(self.n, tf.float32)
            self.sp_sum = tf.sparse.reduce_sum(self.sp)
            self.number = tf.strings.to_number(self.s, name="number")
            check = tf.debugging.assert_positive(self.n, message="n > 0")
            with tf.control_dependencies([check]):
                self.checked = tf.identity(self.n, name="checked")
            self.v = v1.get_variable("v", initializer=1.5, use_resource=True)
            self.ref = v1.get_variable("ref", initializer=2.5, use_resource=False)
            self.v_read = self.graph.as_graph_element(self.v)
            self.frozen = tf.identity(self.n, name="frozen")
            self.graph.prevent_feeding(self.frozen)
            self.sess = Spy(graph=self.graph)
            self.sess.run(v1.global_variables_initializer())
        self.other = tf.Graph()
        with self.other.as_default():
            self.foreign = v1.placeholder(tf.float32, shape=[], name="x")


@pytest.fixture
def fed() -> Any:
    f = Fed()
    yield f
    f.sess.close()


def _error(fn: Any, *args: Any) -> BaseException:
    """What ``fn(*args)`` raises (TensorFlow's reference behaviour)."""
    try:
        fn(*args)
    except Exception as exc:
        return exc
    pytest.fail("expected an error")


def _same_error(cache: RunCache, sess: Any, fetches: Any, feed_dict: Any) -> None:
    expected = _error(sess.run, fetches, feed_dict)
    with pytest.raises(type(expected), match=re.escape(str(expected))) as got:
        cache.run(sess, fetches, feed_dict)
    assert type(got.value) is type(expected)
    assert str(got.value) == str(expected)


class _QuickCache(RunCache):
    """Decides after one timed step each way."""

    warmup = 0
    probes = 1


def _cache(caller_thread: bool) -> RunCache:
    """A RunCache that decides at once: caller thread or TF's pool."""
    cache = _QuickCache()
    cache.clock = _scripted(pool_s=100e-6, thread_s=1e-6 if caller_thread else 1)
    return cache


@pytest.mark.parametrize("caller_thread", [False, True], ids=["pool", "caller"])
class TestFeeds:
    """Fed steps run by a plan give Session.run's results and errors."""

    def _cases(self, f: Fed) -> list[tuple[Any, dict[Any, Any]]]:
        batch = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
        sparse = v1.SparseTensorValue([[0, 0], [1, 1]], [1.5, 2.5], [2, 2])
        return [
            (f.total, {f.x: batch, f.n: 3}),
            (f.total, {"x:0": batch.astype(np.float64), "n:0": np.int64(4)}),
            ([f.y, f.inc], {f.x: [[1, 2]]}),  # a python list, ints for floats
            ({"y": f.y, "pair": Pair(f.inc, "y:0")}, {f.x: [[0.5, 1.5]] * 3}),
            ((f.total,), {f.x: batch, f.n: True}),  # a bool is an int
            (f.y, {f.x: np.zeros([0, 2], np.float32)}),
            ([f.number, f.b], {f.s: "2.5", f.b: True}),  # a fed fetch: Session.run's
            (f.number, {f.s: "2.5", f.b: True}),
            (f.number, {f.s: b"7"}),
            (f.number, {"s:0": np.array("1e3")}),
            (f.sp_sum, {f.sp: sparse}),
            (f.sp_sum, {f.sp: (sparse.indices, [5.0, 6.0], sparse.dense_shape)}),
            (f.sp_sum, {f.sp: sparse, f.x: batch}),
            (f.total, {f.y: [[9.0, 9.0]], f.n: 1}),  # feeding a non-placeholder
            ([f.v_read, f.inc], {f.v_read: 7.0}),  # a variable's read tensor
            (f.v_read, {"v/Read/ReadVariableOp:0": np.float32(8.0)}),
            (f.ref.value(), {"ref:0": 9.0}),  # a reference variable's own tensor
            (f.total, {f.x: batch, f.n: 1.5}),  # numpy truncates it, as in TF
            ([f.x, f.y], {f.x: batch}),  # a fed fetch: the fed value comes back
            ([f.y], {f.x: batch, "x:0": batch + 1}),  # one tensor fed twice
            (f.checked, {f.n: 1}),
            ("y:0", {"x:0": batch}),
        ]

    def test_results_match_session_run(self, fed: Fed, caller_thread: bool) -> None:
        cache = _cache(caller_thread)
        for fetches, feed_dict in self._cases(fed):
            for _ in range(4):  # a miss, probes on both sides, then decided hits
                _same(
                    cache.run(fed.sess, fetches, feed_dict),
                    fed.sess.run(fetches, feed_dict),
                )
        assert fed.sess.run(fed.step) == 2 * 4 * 3  # one step per call

    def test_fed_steps_run_planned(self, fed: Fed, caller_thread: bool) -> None:
        cache = _cache(caller_thread)
        for value in ([[1.0, 2.0]], np.ones([3, 2], np.float32), [[0, 0]]):
            fed.sess.planned.clear()
            assert cache.run(fed.sess, fed.total, {fed.x: value, "n:0": 1}) == (
                fed.sess.run(fed.total, {fed.x: value, "n:0": 1})
            )
            assert fed.sess.planned[0]
        signature = next(iter(cache._signatures.values()))
        assert signature.plan is not None
        assert signature.inline is caller_thread

    def test_bad_feeds_raise_session_runs_errors(
        self, fed: Fed, caller_thread: bool
    ) -> None:
        f = fed
        cache = _cache(caller_thread)
        good = np.ones([1, 2], np.float32)
        for _ in range(3):  # warm the plans of the bad feeds' signatures
            cache.run(f.sess, f.total, {f.x: good, f.n: 1})
            cache.run(f.sess, f.number, {f.s: "1"})
            cache.run(f.sess, f.sp_sum, {f.sp: ([[0, 0]], [1.0], [1, 1])})
        cases = [
            (f.total, {f.x: good, f.n: 2**40}),  # an int the dtype cannot hold
            (f.total, {f.x: [[1.0, 2.0, 3.0]], f.n: 1}),  # wrong shape
            (f.total, {f.x: [1.0, 2.0], f.n: 1}),  # wrong rank
            (f.total, {f.x: [[1.0], [2.0, 3.0]], f.n: 1}),  # ragged
            (f.total, {f.x: [["a", "b"]], f.n: 1}),  # wrong dtype
            (f.total, {f.x: good, f.n: [1]}),  # a list for a scalar
            (f.total, {f.x: tf.constant(good), f.n: 1}),  # a tf.Tensor value
            (f.number, {f.s: 3}),  # an int for a string
            (f.number, {f.s: "abc"}),  # TF's own runtime error, node named
            (f.checked, {f.n: -1}),  # an assert failing inside TF
            (f.total, {f.x: good}),  # a placeholder left unfed
            (f.total, {f.x: good, "nope:0": 1}),  # a name naming no tensor
            (f.total, {f.x: good, "n": 1}),  # an operation's name
            (f.total, {f.x: good, f.foreign: 1.0}),  # another graph's tensor
            (f.frozen, {f.frozen: 1, f.n: 1}),  # a tensor that may not be fed
            (f.sp_sum, {f.sp: ([[0, 0]], [1.0])}),  # a sparse value missing a part
            (f.sp_sum, {f.sp: ([[0, 0]], ["x"], [1, 1])}),  # bad sparse values
            (f.total, {f.x: good, f.n: None}),
        ]
        for fetches, feed_dict in cases:
            for _ in range(2):
                _same_error(cache, f.sess, fetches, feed_dict)
        cache.run(f.sess, f.total, {f.x: good, f.n: 1})  # the plans still work


class TestFeedConverter:
    """feed_converter converts exactly as Session.run's numpy_compat.np_asarray."""

    @pytest.mark.parametrize(
        "dtype",
        [tf.float32, tf.float64, tf.int32, tf.int64, tf.uint8, tf.bool, tf.string,
         tf.float16, tf.complex64],
    )  # fmt: skip
    def test_values_convert_as_tf_converts_them(self, dtype: Any) -> None:
        from tensorflow.python.util import numpy_compat

        from asyncsess._tf import feed_converter

        graph = tf.Graph()
        with graph.as_default():
            tensor = v1.placeholder(dtype)
        convert = feed_converter(graph, tensor)
        np_dtype = dtype.as_numpy_dtype
        values = [
            0, 1, True, 2.5, [1, 2], [[1.0], [2.0]], np.arange(3), np.float64(3),
            np.ones([2, 2], np.float32), np.ones([2], np_dtype), "1", b"2", [b"a"],
            np.array([1, 2], np.int64)[::-1],
        ]  # fmt: skip
        for value in values:
            try:
                expected = numpy_compat.np_asarray(value, np_dtype)
            except Exception:
                assert convert(value) is None
                continue
            got = convert(value)
            if got is None:  # refused for Session.run to decide: it must refuse too
                with pytest.raises((TypeError, ValueError)):
                    with v1.Session(graph=graph) as sess:
                        sess.run(tensor, {tensor: value})
                continue
            assert got.dtype == expected.dtype
            assert got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
            if isinstance(value, np.ndarray) and value.dtype == np_dtype:
                assert got is value  # no copy, as TF makes none


class TestFedMonitoredSession:
    """Fed steps through asyncsess.MonitoredSession, on both backends."""

    async def test_fed_results_and_errors_match_tf(self) -> None:
        import asyncsess

        class Noop(asyncsess.SessionRunHook):
            async def before_run(self, run_context: Any) -> None:
                return None

        f = Fed()
        with f.graph.as_default():
            sess = asyncsess.MonitoredSession(hooks=[Noop()])
        good = np.ones([2, 2], np.float32)
        async with sess:
            for _ in range(RunCache.warmup + 2 * RunCache.probes + 3):
                assert await sess.run(f.total, {f.x: good, "n:0": 2}) == 10.0
            assert await sess.run([f.y, f.inc], {"x:0": [[1, 2]]}) == [
                pytest.approx(np.array([[2.0, 4.0]])),
                None,
            ]
            with f.graph.as_default():
                plain = v1.Session(graph=f.graph)
            with plain:
                for feed_dict in (
                    {f.x: good, f.n: 2**40},
                    {f.x: [[1.0, 2.0, 3.0]], f.n: 1},
                    {f.x: good, "nope:0": 1},
                    {f.x: good, f.frozen: 1},
                    {f.x: good, f.n: -1},
                ):
                    fetches = f.checked if feed_dict.get(f.n) == -1 else f.total
                    expected = _error(plain.run, fetches, feed_dict)
                    with pytest.raises(
                        type(expected), match=re.escape(str(expected))
                    ) as got:
                        await sess.run(fetches, feed_dict)
                    assert type(got.value) is type(expected)
        f.sess.close()
