"""Test SavedModels, built by the tests (none of TensorFlow Serving's files).

`half_plus` is the equivalent of TensorFlow Serving's ``saved_model_half_plus_two``
test model (``y = 0.5 * x + 2``, with its predict, regress and classify
signatures over ``tf.Example`` protos) and, with ``plus=3``, of
``saved_model_half_plus_three``. `multi_input` has several inputs, integers and
binary strings; `keras_mlp` is a Keras 3 ``model.export``; `mlp` a TF1 MLP for
benchmarks; `broken` a version folder that does not load.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    pass

v1 = tf.compat.v1
sig_utils = v1.saved_model.signature_def_utils
build_info = v1.saved_model.utils.build_tensor_info
PREDICT = v1.saved_model.signature_constants.PREDICT_METHOD_NAME
REGRESS = v1.saved_model.signature_constants.REGRESS_METHOD_NAME
CLASSIFY = v1.saved_model.signature_constants.CLASSIFY_METHOD_NAME

VOCABULARY = ("cat", "dog", "fish")


def _signature(inputs: dict[str, Any], outputs: dict[str, Any], method: str) -> Any:
    return sig_utils.build_signature_def(
        {k: build_info(t) for k, t in inputs.items()},
        {k: build_info(t) for k, t in outputs.items()},
        method,
    )


def example(**features: float) -> bytes:
    """A serialized ``tf.Example`` of float features (for regress/classify)."""
    feature = {
        name: tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        for name, value in features.items()
    }
    proto = tf.train.Example(features=tf.train.Features(feature=feature))
    return bytes(proto.SerializeToString())


def half_plus(export_dir: str, *, plus: float = 2.0) -> str:
    """``y = 0.5 * x + plus`` as TensorFlow Serving's half_plus_two is built.

    Signatures: ``serving_default`` (``x`` -> ``y``, where ``x`` is the parsed
    feature of a tf.Example, not a placeholder), ``regress_x_to_y`` and
    ``classify_x_to_y`` (serialized tf.Examples -> y), ``regress_x2_to_y3``
    (``x2`` -> ``0.5 * x2 + plus + 1``) and ``lookup`` (words of an asset
    vocabulary -> ids, through a table its main op initializes).
    """
    with (
        tempfile.TemporaryDirectory() as assets,
        tf.Graph().as_default(),
        v1.Session() as sess,
    ):
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(plus, name="b")
        c = v1.Variable(plus + 1.0, name="c")
        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        features = v1.io.parse_example(
            serialized,
            {
                "x": v1.io.FixedLenFeature([1], tf.float32),
                "x2": v1.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        x = tf.identity(features["x"], name="x")
        x2 = tf.identity(features["x2"], name="x2")
        y = tf.identity(a * x + b, name="y")
        y3 = tf.identity(a * x2 + c, name="y3")
        vocabulary_file = os.path.join(assets, "vocabulary.txt")
        with open(vocabulary_file, "w") as f:
            f.write("\n".join(VOCABULARY) + "\n")
        asset = tf.constant(vocabulary_file, name="vocabulary_path")
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset)
        table = v1.lookup.StaticHashTable(
            v1.lookup.TextFileInitializer(
                asset,
                tf.string,
                v1.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                v1.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=-1,
        )
        words = v1.placeholder(tf.string, shape=[None], name="words")
        ids = table.lookup(words)
        sess.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(
            sess,
            ["serve"],
            signature_def_map={
                "serving_default": _signature({"x": x}, {"y": y}, PREDICT),
                "regress_x_to_y": _signature(
                    {"inputs": serialized}, {"outputs": y}, REGRESS
                ),
                "classify_x_to_y": _signature(
                    {"inputs": serialized}, {"scores": y}, CLASSIFY
                ),
                "regress_x2_to_y3": _signature(
                    {"inputs": x2}, {"outputs": y3}, REGRESS
                ),
                "lookup": _signature({"words": words}, {"ids": ids}, PREDICT),
            },
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            main_op=v1.tables_initializer(),
        )
        builder.save()
    return export_dir


def multi_input(export_dir: str) -> str:
    """Several inputs of several types, a binary string output.

    ``serving_default``: ``a`` float32 ``[-1, 2]``, ``b`` int64 ``[-1]``,
    ``text_bytes`` string ``[-1]`` -> ``sum`` (``a[:, 0] + a[:, 1] + b``),
    ``echo_bytes`` (the strings), ``length`` (their byte lengths).
    ``unbatched``: ``a`` -> ``total`` (a scalar: the sum of every row).
    """
    with tf.Graph().as_default(), v1.Session() as sess:
        a = v1.placeholder(tf.float32, shape=[None, 2], name="a")
        b = v1.placeholder(tf.int64, shape=[None], name="b")
        text = v1.placeholder(tf.string, shape=[None], name="text")
        total = tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32)
        outputs = {
            "sum": tf.identity(total, name="sum"),
            "echo_bytes": tf.identity(text, name="echo"),
            "length": tf.strings.length(text, name="length"),
        }
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(
            sess,
            ["serve"],
            signature_def_map={
                "serving_default": _signature(
                    {"a": a, "b": b, "text_bytes": text}, outputs, PREDICT
                ),
                "unbatched": _signature(
                    {"a": a}, {"total": tf.reduce_sum(a, name="total")}, PREDICT
                ),
            },
        )
        builder.save()
    return export_dir


def mlp(
    export_dir: str,
    *,
    input_dim: int = 16,
    hidden: int = 64,
    outputs: int = 4,
    seed: int = 0,
) -> str:
    """A two-layer MLP (``x`` ``[-1, input_dim]`` -> ``y`` ``[-1, outputs]``)."""
    rng = np.random.default_rng(seed)
    with tf.Graph().as_default(), v1.Session() as sess:
        x = v1.placeholder(tf.float32, shape=[None, input_dim], name="x")
        w1 = v1.Variable(rng.normal(size=(input_dim, hidden)).astype(np.float32))
        w2 = v1.Variable(rng.normal(size=(hidden, outputs)).astype(np.float32))
        y = tf.identity(tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2), name="y")
        sess.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(export_dir)
        builder.add_meta_graph_and_variables(
            sess,
            ["serve"],
            signature_def_map={
                "serving_default": _signature({"x": x}, {"y": y}, PREDICT)
            },
        )
        builder.save()
    return export_dir


def tf2_half_plus(export_dir: str, *, plus: float = 2.0) -> str:
    """``y = 0.5 * x + plus`` saved by TensorFlow 2's ``tf.saved_model.save``.

    Signatures as TF Serving's TF2 half_plus_two: ``serving_default``
    (``x`` float ``[None]`` -> ``y``) and ``regress_x_to_y`` (serialized
    tf.Examples -> ``outputs``).
    """

    numbers = [tf.TensorSpec([None], tf.float32, name="x")]
    examples = [tf.TensorSpec([None], tf.string, name="inputs")]

    class HalfPlus(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(plus)

        @tf.function(input_signature=numbers)  # type: ignore[untyped-decorator]
        def predict(self, x: Any) -> Any:
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=examples)  # type: ignore[untyped-decorator]
        def regress(self, serialized: Any) -> Any:
            spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}
            x = tf.io.parse_example(serialized, spec)["x"]
            return {"outputs": self.a * x + self.b}

    module = HalfPlus()
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            "serving_default": module.predict,
            "regress_x_to_y": module.regress,
        },
    )
    return export_dir


def built(base: str, name: str, build: Any, **kwargs: Any) -> str:
    """``build(base/name, **kwargs)`` once per test session (later calls reuse it)."""
    path = os.path.join(base, name)
    if not os.path.exists(path):
        partial = f"{path}.partial"
        build(partial, **kwargs)
        os.rename(partial, path)
    return path


def keras_mlp(export_dir: str, *, seed: int = 0) -> Any:
    """A small Keras 3 model, exported with ``model.export(export_dir)``; the model."""
    import keras  # type: ignore[import-untyped]

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((4,), name="features"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    model.export(export_dir, verbose=False)
    return model


def broken(export_dir: str) -> str:
    """A version folder whose saved_model.pb is not a SavedModel."""
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
        f.write(b"this is not a SavedModel")
    return export_dir
