"""Factories for ``python -m asyncsess serve tests._factory_models:NAME`` tests.

Each builds a small graph in the default graph (a new one, set by the caller) and
returns an `asyncsess.ServeSpec`; the broken ones fail in one way each.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

import asyncsess

v1 = tf.compat.v1

#: Features of `build`'s input rows.
FEATURES = 3
#: The function `build` learns: y = x @ TRUE_W + TRUE_B.
TRUE_W = [[1.0], [-2.0], [0.5]]
TRUE_B = 0.25


def _linear(x: Any) -> Any:
    w = v1.get_variable("w", [FEATURES, 1], initializer=v1.zeros_initializer())
    b = v1.get_variable("b", [], initializer=v1.zeros_initializer())
    return tf.squeeze(x @ w, axis=1) + b


def build() -> asyncsess.ServeSpec:
    """A linear regression training on data made in the graph; served as x -> y.

    Checkpoints go to ``$FACTORY_CHECKPOINT_DIR`` when that is set (else the
    service's --logdir).
    """
    global_step = v1.train.get_or_create_global_step()
    with v1.variable_scope("model", reuse=v1.AUTO_REUSE):
        x_train = tf.random.normal([64, FEATURES], seed=1)
        y_train = tf.squeeze(x_train @ tf.constant(TRUE_W), axis=1) + TRUE_B
        loss = tf.reduce_mean(tf.square(_linear(x_train) - y_train))
        train_op = v1.train.GradientDescentOptimizer(0.05).minimize(
            loss, global_step=global_step
        )
        x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
        y = tf.identity(_linear(x), name="y")
    return asyncsess.ServeSpec(
        inputs={"x": x},
        outputs={"y": y, "doubled": 2.0 * y},
        train_op=train_op,
        loss=loss,
        checkpoint_dir=os.environ.get("FACTORY_CHECKPOINT_DIR"),
        model_name="linear",
    )


def serve_only() -> asyncsess.ServeSpec:
    """No train op: two inputs of two dtypes, a string output, no batch dimension."""
    a = v1.placeholder(tf.float32, [None, 2], name="a")
    n = v1.placeholder(tf.int32, [], name="n")
    words = v1.placeholder(tf.string, [None], name="words")
    total = tf.reduce_sum(a, axis=1) * tf.cast(n, tf.float32)
    return asyncsess.ServeSpec(
        inputs={"a": a, "n": n, "words": words},
        outputs={"total": total, "shout": tf.strings.upper(words)},
    )


def broken() -> asyncsess.ServeSpec:
    raise ValueError("the factory's own bug")


def not_a_spec() -> Any:
    return {"inputs": {}, "outputs": {}}


def variable_output() -> asyncsess.ServeSpec:
    x = v1.placeholder(tf.float32, [None], name="x")
    w = v1.get_variable("w", [], initializer=v1.ones_initializer())
    return asyncsess.ServeSpec(inputs={"x": x}, outputs={"w": w})


#: A graph of its own, made at import: its tensors belong to no factory.
_OTHER = tf.Graph()
with _OTHER.as_default():
    _FOREIGN = v1.placeholder(tf.float32, [None], name="foreign")


def other_graph() -> asyncsess.ServeSpec:
    x = v1.placeholder(tf.float32, [None], name="x")
    return asyncsess.ServeSpec(inputs={"x": x}, outputs={"y": _FOREIGN * 2.0})


def not_feedable() -> asyncsess.ServeSpec:
    x = v1.placeholder(tf.float32, [None], name="x")
    y = x + 1.0
    # Fetching y while feeding it: TensorFlow forbids feeding what a fetch needs
    # only when told so; a tensor marked unfeedable is the plain case.
    tf.compat.v1.get_default_graph().prevent_feeding(y)
    return asyncsess.ServeSpec(inputs={"y": y}, outputs={"z": y * 2.0})


def no_global_step() -> asyncsess.ServeSpec:
    x = v1.placeholder(tf.float32, [None], name="x")
    w = v1.get_variable("w", [], initializer=v1.ones_initializer())
    loss = tf.reduce_mean(tf.square(w * x))
    train_op = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    return asyncsess.ServeSpec(inputs={"x": x}, outputs={"y": w * x}, train_op=train_op)


#: Not callable: the target names data, not a factory.
NOT_CALLABLE = 42
