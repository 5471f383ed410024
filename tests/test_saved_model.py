"""Loading SavedModels into asyncsess sessions and predicting: TF1, TF2, Keras 3."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest
import tensorflow as tf

from asyncsess._batch_stats import BatchStats
from asyncsess._model_graph import import_saved_model, is_saved_model
from asyncsess._saved_model import SavedModelCreator, open_saved_model
from asyncsess._signature import ServingError, serving_error_of
from tests import _models

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = str(tmp_path_factory.getbasetemp() / "models")
    return {
        "half_plus_two": _models.built(base, "half_plus_two", _models.half_plus),
        "multi_input": _models.built(base, "multi_input", _models.multi_input),
        "mlp": _models.built(base, "mlp", _models.mlp),
        "tf2": _models.built(base, "tf2_half_plus_two", _models.tf2_half_plus),
    }


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    path = str(tmp_path_factory.mktemp("keras") / "export")
    return path, _models.keras_mlp(path)


def floats(*values: Any) -> np.ndarray:
    return np.array(values, dtype=np.float32)


class TestImport:
    """The MetaGraph as imported: signatures, specs, relaxed inputs."""

    def test_half_plus_two_signatures(self, models: dict[str, str]) -> None:
        model = import_saved_model(models["half_plus_two"])
        assert sorted(model.signatures) == [
            "classify_x_to_y",
            "lookup",
            "regress_x2_to_y3",
            "regress_x_to_y",
            "serving_default",
        ]
        default = model.signatures["serving_default"]
        assert default.method_name == "tensorflow/serving/predict"
        assert default.inputs["x"].name == "x:0"
        spec = default.inputs["x"].spec
        assert spec.dtype == np.float32
        assert spec.shape == (None, 1)
        assert spec.dtype_name == "DT_FLOAT"
        assert model.signatures["regress_x_to_y"].inputs["inputs"].spec.dtype == object
        assert model.graph.finalized

    def test_metadata_is_tf_servings_json(self, models: dict[str, str]) -> None:
        # As saved_model_half_plus_two_2_versions_metadata.json writes it.
        dim = [{"size": "-1", "name": ""}, {"size": "1", "name": ""}]
        shape = {"dim": dim, "unknown_rank": False}
        model = import_saved_model(models["half_plus_two"])
        assert model.signatures["serving_default"].metadata() == {
            "inputs": {
                "x": {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": "x:0"}
            },
            "outputs": {
                "y": {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": "y:0"}
            },
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }

    def test_inputs_take_any_shape(self, models: dict[str, str]) -> None:
        model = import_saved_model(models["half_plus_two"])
        fed = model.plans["serving_default"].feeds["x"]
        # Not x:0 itself (a parsed tf.Example feature of static shape [-1, 1]).
        assert fed.op.type == "PlaceholderWithDefault"
        assert fed.shape.rank is None
        mlp = import_saved_model(models["mlp"])
        assert mlp.plans["serving_default"].feeds["x"].shape.rank is None

    def test_batchable_signatures(self, models: dict[str, str]) -> None:
        model = import_saved_model(models["multi_input"])
        assert model.plans["serving_default"].batchable
        assert not model.plans["unbatched"].batchable  # a scalar output

    def test_is_saved_model(self, models: dict[str, str], tmp_path: Path) -> None:
        assert is_saved_model(models["mlp"])
        assert not is_saved_model(str(tmp_path))

    def test_missing_tags(self, models: dict[str, str]) -> None:
        with pytest.raises(RuntimeError, match="could not be found in SavedModel"):
            import_saved_model(models["mlp"], tags=("train",))


class TestPredict:
    """`SavedModelVersion.predict` with and without batching, on both backends."""

    @pytest.mark.parametrize("batching", [False, True])
    async def test_half_plus_two(self, models: dict[str, str], batching: bool) -> None:
        async with open_saved_model(models["half_plus_two"], batching=batching) as m:
            # TF Serving's documented example: not forced to the static [-1, 1].
            y = (await m.predict("", {"x": floats(1.0, 2.0, 5.0)}))["y"]
            np.testing.assert_array_equal(y, floats(2.5, 3.0, 4.5))
            y = (await m.predict("serving_default", {"x": floats([1, 2], [3, 4])}))["y"]
            np.testing.assert_array_equal(y, floats([2.5, 3.0], [3.5, 4.0]))
            examples = np.array([_models.example(x=80.0)], dtype=object)
            result = await m.predict("regress_x_to_y", {"inputs": examples})
            np.testing.assert_array_equal(result["outputs"], floats([42.0]))
            result = await m.predict("classify_x_to_y", {"inputs": examples})
            np.testing.assert_array_equal(result["scores"], floats([42.0]))

    async def test_assets_and_main_op(self, models: dict[str, str]) -> None:
        async with open_saved_model(models["half_plus_two"], batching=False) as m:
            words = np.array([b"dog", b"zebra", b"cat"], dtype=object)
            ids = (await m.predict("lookup", {"words": words}))["ids"]
            np.testing.assert_array_equal(ids, [1, -1, 0])

    async def test_tf2_saved_model(self, models: dict[str, str]) -> None:
        async with open_saved_model(models["tf2"], batching=False) as m:
            assert {"serving_default", "regress_x_to_y"} <= set(m.signatures)
            (alias,) = m.signatures["serving_default"].inputs
            y = (await m.predict("", {alias: floats(1.0, 2.0)}))["y"]
            np.testing.assert_array_equal(y, floats(2.5, 3.0))
            examples = np.array([_models.example(x=10.0)], dtype=object)
            out = await m.predict("regress_x_to_y", {"inputs": examples})
            np.testing.assert_array_equal(out["outputs"], floats([7.0]))

    @pytest.mark.parametrize("batching", [False, True])
    async def test_keras_export_predicts_as_model_predict(
        self, keras_model: tuple[str, Any], batching: bool
    ) -> None:
        path, model = keras_model
        rows = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
        expected = model.predict(rows, verbose=0)
        async with open_saved_model(path, batching=batching) as m:
            signature = m.signatures["serving_default"]
            (alias,) = signature.inputs
            (output,) = signature.outputs
            got = (await m.predict("serving_default", {alias: rows}))[output]
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
            # Row by row, concurrently (batched together when batching).
            results: list[Any] = [None] * len(rows)

            async def one(i: int) -> None:
                results[i] = (await m.predict("", {alias: rows[i : i + 1]}))[output]

            async with anyio.create_task_group() as tg:
                for i in range(len(rows)):
                    tg.start_soon(one, i)
            np.testing.assert_allclose(
                np.concatenate(results), expected, rtol=1e-6, atol=1e-6
            )

    async def test_concurrent_calls_batch(self, models: dict[str, str]) -> None:
        stats = BatchStats()
        rng = np.random.default_rng(0)
        calls = [rng.normal(size=(int(rng.integers(1, 6)), 2)) for _ in range(40)]
        results: dict[int, Any] = {}
        async with open_saved_model(
            models["multi_input"], max_batch_size=16, stats=stats
        ) as m:

            async def one(i: int) -> None:
                a = calls[i].astype(np.float32)
                inputs: dict[str, np.ndarray] = {
                    "a": a,
                    "b": np.arange(len(a), dtype=np.int64),
                    "text_bytes": np.array([b"x" * j for j in range(len(a))], object),
                }
                results[i] = await m.predict("", inputs)

            async with anyio.create_task_group() as tg:
                for i in range(len(calls)):
                    tg.start_soon(one, i)
        for i, a in enumerate(calls):
            rows = len(a)
            expected = a.astype(np.float32).sum(axis=1) + np.arange(rows)
            np.testing.assert_allclose(results[i]["sum"], expected, rtol=1e-6)
            np.testing.assert_array_equal(results[i]["length"], np.arange(rows))
            assert list(results[i]["echo_bytes"]) == [b"x" * j for j in range(rows)]
        assert stats.rows == sum(len(a) for a in calls)
        assert stats.batches < len(calls)  # some calls shared a step

    async def test_unbatchable_signature_runs_alone(
        self, models: dict[str, str]
    ) -> None:
        async with open_saved_model(models["multi_input"]) as m:
            a = floats([1, 2], [3, 4])
            total = await m.predict("unbatched", {"a": a})
            assert total["total"] == 10.0

    async def test_feeds_of_different_rows_run_alone(
        self, models: dict[str, str]
    ) -> None:
        async with open_saved_model(models["multi_input"]) as m:
            inputs = {
                "a": floats([1, 2], [3, 4]),
                "b": np.array([1, 2, 3], np.int64),
                "text_bytes": np.array([b"a"], object),
            }
            with pytest.raises(tf.errors.InvalidArgumentError):
                await m.predict("", inputs)

    async def test_request_errors(self, models: dict[str, str]) -> None:
        async with open_saved_model(models["mlp"]) as m:
            with pytest.raises(ServingError, match='name: "nope" not found') as info:
                await m.predict("nope", {"x": floats([1.0])})
            assert info.value.status == 400
            with pytest.raises(ServingError, match=r"Missing but required: \{x\}"):
                await m.predict("", {"y": floats([1.0])})
            with pytest.raises(tf.errors.InvalidArgumentError) as step:
                await m.predict("", {"x": np.zeros((2, 3), np.float32)})
            error = serving_error_of(step.value)
            assert error is not None
            assert (error.code, error.status) == ("INVALID_ARGUMENT", 400)
            # The session still serves.
            y = (await m.predict("", {"x": np.zeros((2, 16), np.float32)}))["y"]
            assert y.shape == (2, 4)


async def test_creator_restores_every_session(models: dict[str, str]) -> None:
    """What recovery after a preemption calls: a new session, variables restored."""
    model = import_saved_model(models["half_plus_two"])
    creator = SavedModelCreator(model)
    fed = model.plans["serving_default"].feeds["x"]
    fetch = model.plans["serving_default"].fetches["y"]
    for _ in range(2):
        sess = await creator.create_session()
        try:
            assert sess.run(fetch, {fed: floats(2.0)}) == 3.0
        finally:
            sess.close()
    assert "half_plus_two" in repr(creator)
