"""``serve MODULE:FACTORY``: loading and checking factories, the app, the command.

Also the README's recipe for embedding asyncsess in your own Starlette app
(examples/starlette_app.py), over real HTTP.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("starlette", reason="needs the serve extra")
httpx = pytest.importorskip("httpx", reason="needs the test group")

import asyncsess  # noqa: E402
from asyncsess import _cli  # noqa: E402
from asyncsess._serve import ServeSetupError  # noqa: E402
from asyncsess._serve_factory import (  # noqa: E402
    build_served,
    create_factory_app,
    load_factory,
)

from . import _factory_models  # noqa: E402
from ._serving import over_http, serve_command  # noqa: E402
from .test_serve import (  # noqa: E402
    AUTH,
    ROOT,
    TOKEN,
    _first_steps,
    advances,
    in_process,
    latest_step,
    until,
)

pytestmark = pytest.mark.anyio

v1 = tf.compat.v1
MODELS = "tests._factory_models"
TARGET = f"{MODELS}:build"
STEP_INTERVAL = 0.002


def reference(checkpoint_dir: Path, rows: np.ndarray) -> dict[str, np.ndarray]:
    """`build`'s outputs for *rows* by a plain tf.Session from the last checkpoint."""
    graph = tf.Graph()
    with graph.as_default():
        spec = _factory_models.build()
        saver = v1.train.Saver()
        with v1.Session(graph=graph) as sess:
            saver.restore(sess, tf.train.latest_checkpoint(str(checkpoint_dir)))
            result: dict[str, np.ndarray] = sess.run(
                dict(spec.outputs), {spec.inputs["x"]: rows}
            )
    return result


class TestLoading:
    """Import strings and factories that cannot be served: ServeSetupError says why."""

    @pytest.mark.parametrize(
        ("target", "message"),
        [
            ("no_such_module_x:build", 'Could not import module "no_such_module_x"'),
            (
                f"{MODELS}:missing",
                f'Attribute "missing" not found in module "{MODELS}"',
            ),
            (f"{MODELS}:build.nested", 'Attribute "build.nested" not found'),
            (f"{MODELS}:NOT_CALLABLE", "42 (a int), not a factory"),
            (f"{MODELS}:", "must be in format"),
            (":build", "must be in format"),
        ],
    )
    def test_bad_targets(self, target: str, message: str) -> None:
        with pytest.raises(ServeSetupError, match=_literal(message)):
            load_factory(target)

    def test_a_module_failing_to_import_shows_why(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "factory_needs_x.py").write_text("import not_installed_dep_x\n")
        (tmp_path / "factory_raises.py").write_text("raise KeyError('at import')\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        with pytest.raises(
            ServeSetupError, match="No module named 'not_installed_dep_x'"
        ):
            load_factory("factory_needs_x:build")
        with pytest.raises(ServeSetupError, match="raised KeyError: 'at import'"):
            load_factory("factory_raises:build")

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            ("broken", "raised ValueError: the factory's own bug"),
            ("not_a_spec", "returned {'inputs'.*must return an asyncsess.ServeSpec"),
            ("variable_output", r"outputs\['w'\] is .*expected a tf.Tensor"),
            ("other_graph", r"outputs\['y'\] \(mul:0\) belongs to another graph"),
            ("not_feedable", r"inputs\['y'\] \(add:0\) cannot be fed"),
            ("no_global_step", "graph has no global step"),
        ],
    )
    def test_bad_factories(self, name: str, message: str) -> None:
        target = f"{MODELS}:{name}"
        with pytest.raises(ServeSetupError, match=message) as info:
            build_served(load_factory(target), target, "unused")
        assert target in str(info.value)

    def test_a_good_factory_builds_in_a_graph_of_its_own(self) -> None:
        outside = tf.compat.v1.get_default_graph()
        served = build_served(load_factory(TARGET), TARGET, "logs")
        assert served.graph is not outside
        assert served.trains
        assert served.batchable
        assert served.checkpoint_dir == "logs"
        assert served.model_name == "linear"
        assert sorted(served.outputs) == ["doubled", "y"]
        only = build_served(_factory_models.serve_only, "m:serve_only", "logs")
        assert not only.trains
        assert not only.batchable  # "n" is a scalar: nothing to batch along

    def test_model_name_overrides_the_spec(self, tmp_path: Path) -> None:
        app = create_factory_app(TARGET, logdir=str(tmp_path), model_name="renamed")
        assert app.state.model.name == "renamed"
        assert app.state.trainer.status()["model"] == "renamed"
        with pytest.raises(ServeSetupError, match="--model-name is 'a/b'"):
            create_factory_app(TARGET, logdir=str(tmp_path), model_name="a/b")

    def test_the_body_limit_is_sized_from_the_inputs(self, tmp_path: Path) -> None:
        from asyncsess._serve_app import body_limit

        app = create_factory_app(TARGET, logdir=str(tmp_path))
        limit = app.state.trainer.config.max_body_bytes
        assert limit == body_limit(1024, _factory_models.FEATURES) < 1 << 20
        # A string input has no bound: TensorFlow Serving's 1 MiB default stays.
        only = create_factory_app("tests._factory_models:serve_only", logdir="x")
        assert only.state.trainer.config.max_body_bytes == 1 << 20

    def test_import_asyncsess_imports_no_web_framework(self) -> None:
        code = (
            "import sys, asyncsess; asyncsess.ServeSpec; "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'prometheus_client')"
            " if m in sys.modules))"
        )
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        assert done.stdout.strip() == "[]"

    def test_the_command_line_prints_the_problem(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert _cli.main(["serve", f"{MODELS}:missing", "--port", "8123"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("asyncsess serve: error: Attribute")
        assert _cli.main(["serve", f"{MODELS}:broken", "--port", "8123"]) == 1
        assert "the factory's own bug" in capsys.readouterr().err


def _literal(text: str) -> str:
    import re

    return re.escape(text)


class TestFactoryApp:
    """The app over a factory's graph, on asyncio and trio (ASGI, no server)."""

    async def test_trains_then_serves_the_final_checkpoint(
        self, tmp_path: Path, no_thread_leaks: None
    ) -> None:
        app = create_factory_app(
            TARGET, logdir=str(tmp_path), token=TOKEN, last_step=30
        )
        async with in_process(app) as client:
            status = await until(
                client, lambda s: s["predictions_from"] == "checkpoint"
            )
            assert status["global_step"] == 30
            assert status["model"] == "linear"
            assert status["inputs"] == {"x": {"dtype": "float32", "shape": [None, 3]}}
            assert latest_step(tmp_path) == 30
            # Concurrent calls of several sizes share steps; each gets its rows.
            rng = np.random.default_rng(0)
            calls = [
                rng.normal(size=(n, 3)).astype(np.float32) for n in (1, 3, 2, 7) * 4
            ]
            answers: list[Any] = [None] * len(calls)

            async def call(i: int) -> None:
                body = {"inputs": {"x": calls[i].tolist()}}
                answers[i] = await client.post("/predict", json=body, headers=AUTH)

            async with anyio.create_task_group() as tg:
                for i in range(len(calls)):
                    tg.start_soon(call, i)
            for rows, response in zip(calls, answers, strict=True):
                assert response.status_code == 200, response.text
                want = reference(tmp_path, rows)
                got = response.json()["outputs"]
                np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)
                np.testing.assert_allclose(got["doubled"], want["doubled"], rtol=1e-6)
            metrics = (await client.get("/metrics")).text
            assert "asyncsess_batches_total" in metrics
            rows_line = _metric(metrics, "asyncsess_batched_rows_total")
            assert rows_line == sum(len(c) for c in calls)
            await self._check_rest_api(client, tmp_path, calls[3])

    async def _check_rest_api(
        self, client: Any, checkpoint_dir: Path, rows: np.ndarray
    ) -> None:
        """TensorFlow Serving's routes for the graph: status, metadata, predict."""
        want = reference(checkpoint_dir, rows)
        base = "/v1/models/linear"
        status = (await client.get(base)).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
        metadata = (await client.get(f"{base}/metadata")).json()
        signature = metadata["metadata"]["signature_def"]["signature_def"]
        assert signature["serving_default"]["inputs"]["x"]["name"] == "model/x:0"
        assert signature["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
        body = {"instances": rows.tolist()}
        assert (await client.post(f"{base}:predict", json=body)).status_code == 401
        response = await client.post(f"{base}:predict", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        np.testing.assert_allclose([p["y"] for p in predictions], want["y"], rtol=1e-6)
        body = {"inputs": {"x": rows.tolist()}}
        response = await client.post(
            f"{base}/versions/1:predict", json=body, headers=AUTH
        )
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        np.testing.assert_allclose(outputs["doubled"], want["doubled"], rtol=1e-6)
        for path, code in [
            ("/v1/models/other:predict", 404),
            (f"{base}/versions/2:predict", 404),
        ]:
            response = await client.post(path, json=body, headers=AUTH)
            assert response.status_code == code, response.text
            assert "error" in response.json()
        response = await client.post(
            f"{base}:predict", json={"inputs": {"x": [[1, 2]]}}, headers=AUTH
        )
        assert response.status_code == 400
        assert "Cannot feed value of shape (1, 2)" in response.json()["error"]
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {f"{base}:predict", "/predict", "/status", "/stop"} <= set(paths)

    async def test_predicts_while_training_until_stopped(
        self, tmp_path: Path, no_thread_leaks: None
    ) -> None:
        app = create_factory_app(
            TARGET, logdir=str(tmp_path), token=TOKEN, step_interval=STEP_INTERVAL
        )
        async with in_process(app) as client:
            await advances(client)
            body = {"x": [[1.0, 2.0, 3.0]]}  # the inputs, without the wrapper
            assert (await client.post("/predict", json=body)).status_code == 401
            response = await client.post("/predict", json=body, headers=AUTH)
            assert response.status_code == 200, response.text
            assert response.json()["global_step"] > 0
            assert (await client.post("/stop")).status_code == 401
            assert (await client.post("/stop", headers=AUTH)).status_code == 202
            stopped = await until(client, lambda s: not s["running"])
        assert latest_step(tmp_path) == stopped["global_step"]

    async def test_serves_a_graph_without_training(
        self, tmp_path: Path, no_thread_leaks: None
    ) -> None:
        app = create_factory_app(
            f"{MODELS}:serve_only", logdir=str(tmp_path), max_rows=2
        )
        async with in_process(app) as client:
            status = (await client.get("/status")).json()
            assert status["running"] is False
            assert status["predictions_from"] == "graph"
            body = {"inputs": {"a": [[1, 2], [3.5, 4]], "n": 2, "words": ["hi", "é"]}}
            response = await client.post("/predict", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"] == {
                "total": [6.0, 15.0],
                "shout": ["HI", "é"],  # tf.strings.upper: ASCII only
            }
            for bad, detail in BAD_INPUTS:
                response = await client.post("/predict", json=bad)
                assert response.status_code == 422, (bad, response.text)
                assert detail in response.json()["detail"], (bad, response.text)
        assert app.state.trainer.error is None


GOOD = {"a": [[1, 2]], "n": 1, "words": ["x"]}
# /predict decodes as TensorFlow Serving does (asyncsess._json_tensor), with its
# texts; what Session.run refuses says so too. All 422 here.
BAD_INPUTS: list[tuple[Any, str]] = [
    ([1, 2], "JSON Value: [1, 2] Is not object"),
    ({"a": [[1, 2]], "n": 1}, "Missing named input: words"),
    ({**GOOD, "a": [[1, 2, 3]]}, "Cannot feed value of shape (1, 3) for Tensor a:0"),
    ({**GOOD, "a": [[1, 2], [3]]}, "Encountered list at unexpected size: 1"),
    ({**GOOD, "a": [[1, "2"]]}, 'JSON Value: "2" Type: String is not of expected'),
    ({**GOOD, "a": [[1, None]]}, "Type: Null is not of expected type: float"),
    ({**GOOD, "a": [[1, True]]}, "Type: True is not of expected type: float"),
    ({**GOOD, "n": 1.5}, "1.5 Type: Number is not of expected type: int32"),
    ({**GOOD, "n": 2**40}, "is out of range for type: int32"),
    ({**GOOD, "n": [1]}, "Cannot feed value of shape (1,) for Tensor n:0"),
    ({**GOOD, "words": [1]}, "is not of expected type: string"),
    ({**GOOD, "a": [[1, 2]] * 3}, "Input a has 3 rows; at most 2 per call."),
]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_command_serves_a_factory_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    env = {"ASYNCSESS_TOKEN": TOKEN, "FACTORY_CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    args = [TARGET, "--logdir", str(tmp_path / "unused")]
    async with serve_command(*args, env=env) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as client:
            status = await _first_steps(client, served.process)
            body = {"inputs": {"x": [[0.5, -1.0, 2.0]]}}
            assert (await client.post("/predict", json=body)).status_code == 401
            response = await client.post("/predict", json=body, headers=AUTH)
            assert response.status_code == 200, response.text
            assert len(response.json()["outputs"]["y"]) == 1
        code = await served.stop()
    log = served.log()
    assert code == 0, log
    assert (latest_step(tmp_path / "ckpt") or 0) >= status["global_step"], log
    assert not (tmp_path / "unused").exists()


def _load_example(name: str) -> Any:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_starlette_recipe_over_http(tmp_path: Path) -> None:
    example = _load_example("starlette_app")
    app = example.create_app(str(tmp_path))
    rows = [[1.0, 2.0, 3.0, 4.0]] * 3
    answers: list[Any] = []
    async with over_http(app) as client:

        async def call() -> None:
            answers.append(await client.post("/predict", json={"x": rows}))

        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(call)
        bad = await client.post("/predict", json={"x": [[1, 2]]})
        assert bad.status_code == 422
    assert all(r.status_code == 200 for r in answers), answers[0].text
    assert all(len(r.json()["y"]) == 3 for r in answers)
    stats = app.state.batcher.stats
    assert stats.rows == 32 * 3
    assert stats.batches <= 32
    assert latest_step(tmp_path)  # shutdown wrote the final checkpoint


def test_the_factory_example_builds() -> None:
    example = _load_example("serve_factory")
    target = "examples/serve_factory.py:build"
    served = build_served(example.build, target, "logs")
    assert served.trains
    assert served.batchable
    only = build_served(example.build_serving, target + "_serving", "logs")
    assert not only.trains
    assert only.checkpoint_dir == "runs/mlp"
    assert asyncsess.ServeSpec.__module__ == "asyncsess"
