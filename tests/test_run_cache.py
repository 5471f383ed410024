"""RunCache: Session.run's results and errors, with make_callable underneath."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from asyncsess._runargs import RunCache, fetch_key

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
        assert not cache._callables

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
