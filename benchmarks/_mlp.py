"""The small MLP the serving benchmark serves, as a SavedModel and as a factory.

``FEATURES -> HIDDEN x LAYERS (relu) -> CLASSES``: 256 -> 1024 -> 1024 -> 1024 ->
10, 2.4 M float32 parameters (9.5 MB). `export` writes it with Keras 3's
``model.export`` (what a user of Keras would serve); `trainer` is the
``serve MODULE:FACTORY`` factory of the same network, training on batches made
in the graph while it serves ``x -> logits``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import tensorflow as tf

import asyncsess

v1 = tf.compat.v1

FEATURES = 256
HIDDEN = 1024
LAYERS = 3
CLASSES = 10
#: Rows of one training step of `trainer`.
TRAIN_ROWS = 64


def parameters() -> int:
    """The MLP's parameter count (weights and biases)."""
    sizes = [FEATURES, *[HIDDEN] * LAYERS, CLASSES]
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def describe() -> str:
    """The MLP's shape and size, for the rows' detail."""
    shape = "-".join(str(n) for n in [FEATURES, *[HIDDEN] * LAYERS, CLASSES])
    return f"MLP {shape} relu ({parameters() / 1e6:.1f} M params)"


def export(export_dir: str, *, seed: int = 0) -> str:
    """The MLP, untrained (seeded weights), written by Keras 3's ``model.export``."""
    import keras  # type: ignore[import-untyped]

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,), name="x"),
            *[keras.layers.Dense(HIDDEN, activation="relu") for _ in range(LAYERS)],
            keras.layers.Dense(CLASSES),
        ]
    )
    model.export(export_dir, verbose=False)
    return export_dir


def instance(seed: int = 1) -> list[float]:
    """One input row."""
    rng = np.random.default_rng(seed)
    return [round(float(v), 4) for v in rng.normal(size=FEATURES)]


def _dense(x: Any, units: int, name: str) -> Any:
    with v1.variable_scope(name):
        w = v1.get_variable("kernel", [x.shape[1], units], tf.float32,
                            v1.glorot_uniform_initializer())  # fmt: skip
        b = v1.get_variable("bias", [units], tf.float32, v1.zeros_initializer())
    return x @ w + b


def _network(x: Any) -> Any:
    h = x
    for i in range(LAYERS):
        h = tf.nn.relu(_dense(h, HIDDEN, f"dense_{i}"))
    return _dense(h, CLASSES, "logits")


def trainer() -> asyncsess.ServeSpec:
    """The MLP, trained on random batches of `TRAIN_ROWS` rows; serves x -> logits."""
    global_step = v1.train.get_or_create_global_step()
    with v1.variable_scope("mlp", reuse=v1.AUTO_REUSE):
        x_train = tf.random.normal([TRAIN_ROWS, FEATURES], seed=1)
        labels = tf.random.uniform([TRAIN_ROWS], 0, CLASSES, tf.int64, seed=2)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=_network(x_train)
            )
        )
        x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
        logits = _network(x)
    train_op = v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=global_step)
    return asyncsess.ServeSpec(
        inputs={"x": x},
        outputs={"logits": logits},
        train_op=train_op,
        loss=loss,
        model_name="mlp",
    )
