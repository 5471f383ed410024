"""safe_on_caller_thread: which steps give the same results on one thread.

Several cases come from a review that ran each step both ways and saw the
results differ (or the step hang) on the caller thread.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops.data_flow_ops import StagingArea
from tensorflow.python.training import training_util

from asyncsess._caller_thread import MAX_OPS, safe_on_caller_thread

v1 = tf.compat.v1


@pytest.fixture
def graph() -> Any:
    with tf.Graph().as_default() as g:
        yield g


def safe(graph: tf.Graph, *leaves: Any, feeds: Any = None) -> bool:
    return safe_on_caller_thread(graph, list(leaves), feeds)


def test_pure_compute_and_a_lone_update_are_safe(graph: tf.Graph) -> None:
    step = v1.train.get_or_create_global_step()
    inc = step.assign_add(1, read_value=False)
    x = v1.placeholder(tf.float32, [2, 2])
    assert safe(graph, tf.matmul(x, x))
    assert safe(graph, inc)
    assert safe(graph, "global_step:0")  # a read alone
    check = tf.raw_ops.Assert(condition=x[0, 0] > -1.0, data=[x])
    assert safe(graph, v1.random_uniform([3]), check)


def test_a_read_beside_an_update_is_not(graph: tf.Graph) -> None:
    n = v1.get_variable("n", initializer=0, trainable=False)
    inc = v1.assign_add(n, 1)
    assert not safe(graph, inc, n)
    assert not safe(graph, n.assign(5), n.assign_add(1))  # two writers, unordered
    # TF's hooks' global-step read (a cond around the read) beside the increment.
    step = v1.train.get_or_create_global_step()
    bump = step.assign_add(1, read_value=False)
    assert not safe(graph, bump, training_util._get_or_create_global_step_read())


def test_ordered_accesses_are_safe(graph: tf.Graph) -> None:
    n = v1.get_variable("n", initializer=0, trainable=False)
    before = n.read_value()
    with tf.control_dependencies([before]):
        inc = n.assign_add(1)
    with tf.control_dependencies([inc]):
        after = n.read_value()
    assert safe(graph, before, inc, after)


def test_a_feed_cuts_the_path_that_ordered_a_read(graph: tf.Graph) -> None:
    n = v1.get_variable("n", initializer=0, trainable=False)
    before = n.read_value()
    delta = v1.placeholder_with_default(before * 0 + 1, [], name="delta")
    inc = n.assign_add(delta, read_value=False)
    assert safe(graph, before, inc)
    assert not safe(graph, before, inc, feeds=[delta])
    assert not safe(graph, before, inc, feeds=["delta:0"])


def test_training_step_of_a_small_model(graph: tf.Graph) -> None:
    x = v1.placeholder(tf.float32, [None, 3])
    w = v1.get_variable("w", [3, 1])
    loss = tf.reduce_mean(tf.matmul(x, w) ** 2)
    train = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    adam = v1.train.AdamOptimizer().minimize(loss)
    assert safe(graph, train, loss, feeds=[x])  # loss is computed before the update
    assert safe(graph, adam, loss, feeds=[x])
    assert not safe(graph, train, w)  # w beside its own update


def test_reference_variables_are_not(graph: tf.Graph) -> None:
    # Their reads alias the variable's buffer, which in-place updates change.
    x = v1.Variable(1.0, use_resource=False)
    assert not safe(graph, x.assign_add(1.0))
    assert not safe(graph, x.value())


def test_one_variable_behind_two_handles(graph: tf.Graph) -> None:
    with tf.Graph().as_default() as source:
        n = v1.get_variable("n", initializer=0, trainable=False)
        n.assign_add(1, read_value=False, name="inc")
        tf.identity(n.read_value(), name="rd")
    v1.import_graph_def(source.as_graph_def(), name="a")
    v1.import_graph_def(source.as_graph_def(), name="b")
    inc, read = graph.get_operation_by_name("a/inc"), "b/rd:0"
    assert safe(graph, inc)
    assert not safe(graph, inc, read)  # a/n and b/n share a name: one variable


def test_handles_that_may_name_one_variable(graph: tf.Graph) -> None:
    raw = tf.raw_ops
    # "" and "localhost" are one container; handles without a shared name too.
    localhost = {"container": "localhost", "shared_name": "v"}
    for first, second in (
        ({"container": "", "shared_name": "v"}, localhost),
        ({"shared_name": "", "name": "a"}, {"shared_name": "", "name": "b"}),
    ):
        h1 = raw.VarHandleOp(dtype=tf.int32, shape=[], **first)
        h2 = raw.VarHandleOp(dtype=tf.int32, shape=[], **second)
        inc = raw.AssignAddVariableOp(resource=h1, value=tf.constant(1))
        read = raw.ReadVariableOp(resource=h2, dtype=tf.int32)
        assert not safe(graph, inc, read)


def test_ops_running_functions_are_not(graph: tf.Graph) -> None:
    from tensorflow.python.framework import function
    from tensorflow.python.ops import functional_ops

    @function.Defun(tf.int32, tf.int32)  # type: ignore[misc]
    def body(i: Any, x: Any) -> Any:
        return x + 1

    looped = functional_ops.For(
        0, 1, 1, [tf.constant(0)], body, rewrite_with_while=False
    )
    assert not safe(graph, looped)


def test_queues_datasets_staging_and_python_are_not(graph: tf.Graph) -> None:
    staging = StagingArea([tf.float32], shapes=[[]])
    assert not safe(graph, staging.put([tf.constant(1.0)]))
    queue = tf.queue.FIFOQueue(4, tf.float32)
    assert not safe(graph, queue.dequeue())
    item = v1.data.make_one_shot_iterator(tf.data.Dataset.range(3)).get_next()
    assert not safe(graph, item)
    assert not safe(graph, v1.py_func(lambda: np.float32(1), [], tf.float32))
    assert not safe(graph, tf.numpy_function(lambda: np.float32(1), [], tf.float32))


def test_loops_and_function_calls_are_not(graph: tf.Graph) -> None:
    n = v1.get_variable("n", initializer=0, trainable=False)
    looped = v1.while_loop(lambda i: i < 3, lambda i: i + 1, [tf.constant(0)])
    branch = v1.cond(tf.constant(True), n.read_value, lambda: tf.constant(0))
    assert not safe(graph, looped)
    assert not safe(graph, branch)
    v1.disable_control_flow_v2()
    try:
        old = v1.while_loop(lambda i: i < 3, lambda i: i + 1, [tf.constant(0)])
        assert not safe(graph, old)
    finally:
        v1.enable_control_flow_v2()


def test_large_steps_are_looked_through_quickly(graph: tf.Graph) -> None:
    step = v1.train.get_or_create_global_step()
    total = tf.constant(0.0)
    for i in range(300):
        w = v1.get_variable(f"w{i}", initializer=1.0)
        total = total + w.assign_add(1.0)
    start = time.perf_counter()
    assert safe(graph, total, step.assign_add(1))
    assert time.perf_counter() - start < 30  # a hang guard, not a timing target
    chain = tf.constant(0.0)
    for _ in range(MAX_OPS):
        chain = chain + 1.0
    assert not safe(graph, chain)  # past the size cap: keeps the pool


def test_what_it_cannot_resolve_is_unsafe(graph: tf.Graph) -> None:
    assert not safe(graph, "no_such_tensor:0")
