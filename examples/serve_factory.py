"""A factory for ``python -m asyncsess serve examples.serve_factory:build``.

The factory builds a small MLP regression in TF1 style, in the graph asyncsess
makes the default for it, and returns an `asyncsess.ServeSpec`: what to serve
(the ``x`` placeholder in, ``y`` out) and what to train (the train op, its
hooks, where checkpoints go). The service trains in the background, answers
predictions from the same session, batched, and writes a final checkpoint on
SIGINT/SIGTERM or ``POST /stop``::

    python -m asyncsess serve examples.serve_factory:build --logdir runs/mlp
    curl -s localhost:8000/status
    curl -s -X POST localhost:8000/predict \\
        -d '{"inputs": {"x": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]]}}'

`build_serving` is the same model without training: it serves the last
checkpoint of ``runs/mlp`` (``serve examples.serve_factory:build_serving``).
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

import asyncsess

v1 = tf.compat.v1

FEATURES = 8
HIDDEN = 64
#: Rows of one training step (drawn in the graph, so nothing is fed).
TRAIN_BATCH = int(os.environ.get("SERVE_FACTORY_BATCH", "256"))


def _mlp(x: Any) -> Any:
    """Two dense layers whose variables are shared by every call."""
    with v1.variable_scope("mlp", reuse=v1.AUTO_REUSE):
        init = v1.glorot_uniform_initializer(seed=0)
        w1 = v1.get_variable("w1", [FEATURES, HIDDEN], initializer=init)
        b1 = v1.get_variable("b1", [HIDDEN], initializer=v1.zeros_initializer())
        w2 = v1.get_variable("w2", [HIDDEN, 1], initializer=init)
        b2 = v1.get_variable("b2", [1], initializer=v1.zeros_initializer())
        return tf.squeeze(tf.nn.relu(x @ w1 + b1) @ w2 + b2, axis=1)


def _target(x: Any) -> Any:
    """What the model learns: a fixed smooth function of the features."""
    return tf.reduce_sum(tf.sin(x), axis=1) + 0.5 * x[:, 0] * x[:, 1]


def _serving_inputs() -> tuple[Any, Any]:
    x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
    return x, tf.identity(_mlp(x), name="y")


def build() -> asyncsess.ServeSpec:
    """Train the MLP on data drawn in the graph; serve x -> y meanwhile."""
    global_step = v1.train.get_or_create_global_step()
    x_train = tf.random.normal([TRAIN_BATCH, FEATURES])
    loss = tf.reduce_mean(tf.square(_mlp(x_train) - _target(x_train)), name="loss")
    train_op = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=global_step)
    x, y = _serving_inputs()
    return asyncsess.ServeSpec(
        inputs={"x": x},
        outputs={"y": y},
        train_op=train_op,
        loss=loss,
        hooks=[asyncsess.hooks.NanTensorHook(loss)],
        save_checkpoint_secs=60,
        model_name="mlp",
    )


def build_serving() -> asyncsess.ServeSpec:
    """The same model, served only, from the checkpoints `build` wrote."""
    v1.train.get_or_create_global_step()
    x, y = _serving_inputs()
    return asyncsess.ServeSpec(
        inputs={"x": x}, outputs={"y": y}, checkpoint_dir="runs/mlp", model_name="mlp"
    )
