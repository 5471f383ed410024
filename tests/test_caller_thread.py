"""safe_on_caller_thread: which steps give the same results on one thread."""

from __future__ import annotations

from typing import Any

import pytest
import tensorflow as tf
from tensorflow.python.ops.data_flow_ops import StagingArea
from tensorflow.python.training import training_util

from asyncsess._caller_thread import safe_on_caller_thread

v1 = tf.compat.v1


@pytest.fixture
def graph() -> Any:
    with tf.Graph().as_default() as g:
        yield g


def safe(graph: tf.Graph, *leaves: Any) -> bool:
    return safe_on_caller_thread(graph, list(leaves))


def test_pure_compute_and_a_lone_update_are_safe(graph: tf.Graph) -> None:
    step = v1.train.get_or_create_global_step()
    inc = step.assign_add(1, read_value=False)
    x = v1.placeholder(tf.float32, [2, 2])
    assert safe(graph, tf.matmul(x, x))
    assert safe(graph, inc)
    assert safe(graph, "global_step:0")  # a read alone


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


def test_reference_variables(graph: tf.Graph) -> None:
    x = v1.Variable(1.0, use_resource=False)
    bump = x.assign_add(1.0)
    assert safe(graph, bump)
    assert not safe(graph, bump, x)  # the fetched reference is read at the end
    assert not safe(graph, bump, x.value())


def test_training_step_of_a_small_model(graph: tf.Graph) -> None:
    x = v1.placeholder(tf.float32, [None, 3])
    w = v1.get_variable("w", [3, 1])
    loss = tf.reduce_mean(tf.matmul(x, w) ** 2)
    train = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    assert safe(graph, train, loss)  # the loss is computed before the update
    assert not safe(graph, train, w)  # w beside its own update


def test_filling_and_draining_one_area_is_not(graph: tf.Graph) -> None:
    staging = StagingArea([tf.float32], shapes=[[]])
    put = staging.put([tf.constant(1.0)])
    got = staging.get()
    assert not safe(graph, put, got)
    assert safe(graph, put)
    queue = tf.queue.FIFOQueue(4, tf.float32)
    assert not safe(graph, queue.enqueue(1.0), queue.dequeue())
    assert safe(graph, queue.dequeue())


def test_what_it_cannot_resolve_is_unsafe(graph: tf.Graph) -> None:
    assert not safe(graph, "no_such_tensor:0")


def test_loops_of_both_control_flow_versions(graph: tf.Graph) -> None:
    n = v1.get_variable("n", initializer=0, trainable=False)
    looped = v1.while_loop(lambda i: i < 3, lambda i: i + 1, [tf.constant(0)])
    assert safe(graph, looped, n.assign_add(1))
    v1.disable_control_flow_v2()
    try:
        old_style = v1.while_loop(lambda i: i < 3, lambda i: i + 1, [tf.constant(0)])
        assert any(op.type == "NextIteration" for op in graph.get_operations())
        assert safe(graph, old_style, n.assign_add(1))
        # A loop reading the variable its neighbour updates is not.
        reads = v1.while_loop(
            lambda i: i < 3, lambda i: i + tf.cast(n.read_value(), tf.int32), [0]
        )
        assert not safe(graph, reads, n.assign_add(1))
    finally:
        v1.enable_control_flow_v2()


def test_large_steps_are_looked_through_quickly(graph: tf.Graph) -> None:
    import time

    step = v1.train.get_or_create_global_step()
    total = tf.constant(0.0)
    for i in range(300):
        w = v1.get_variable(f"w{i}", initializer=1.0)
        total = total + w.assign_add(1.0)
    start = time.perf_counter()
    assert safe(graph, total, step.assign_add(1))
    assert time.perf_counter() - start < 30  # a hang guard, not a timing target
