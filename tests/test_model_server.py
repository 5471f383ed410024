"""``serve --saved-model``: TF Serving's REST API, its codes, token, OpenAPI, CLI."""

from __future__ import annotations

import base64
import json
import logging
import random
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pytest

pytest.importorskip("starlette", reason="needs the serve extra")
httpx = pytest.importorskip("httpx", reason="needs the test group")

from asyncsess import _cli  # noqa: E402
from asyncsess._json_tensor import TensorSpec  # noqa: E402
from asyncsess._model_routes import ModelRoutes  # noqa: E402
from asyncsess._model_server import create_model_app, default_model_name  # noqa: E402
from asyncsess._signature import (  # noqa: E402
    Signature,
    SingleVersion,
    TensorInfo,
    find_signature,
)
from tests import _models, _serving  # noqa: E402
from tests._serving import serve_command  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "model-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = str(tmp_path_factory.getbasetemp() / "models")
    return {
        "half_plus_two": _models.built(base, "half_plus_two", _models.half_plus),
        "multi_input": _models.built(base, "multi_input", _models.multi_input),
        "mlp": _models.built(base, "mlp", _models.mlp),
    }


@pytest.fixture(scope="module")
def keras_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, Any]:
    """A Keras 3 ``model.export``, rows, and ``model.predict`` of those rows."""
    path = str(tmp_path_factory.mktemp("keras") / "k")
    model = _models.keras_mlp(path, seed=3)
    rows = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    return path, rows, model.predict(rows, verbose=0)


@pytest.fixture
def half(models: dict[str, str], tmp_path: Path) -> str:
    """A base path ``half`` holding half_plus_two as version 1."""
    base = tmp_path / "half"
    shutil.copytree(models["half_plus_two"], base / "1")
    return str(base)


@asynccontextmanager
async def in_process(app: Starlette) -> AsyncIterator[Any]:
    """Drive *app*'s lifespan and talk to it over ASGI (either backend)."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
    ):
        yield client


OK_STATUS = {
    "model_version_status": [
        {
            "version": "1",
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
    ]
}

# TensorFlow Serving's http_rest_api_handler_test.cc: what it answers, and how.
ERRORS = [
    ("GET", "/v1/foo", "", 400, "Malformed request"),
    ("POST", "/v1/foo", "", 400, "Malformed request"),
    ("GET", "/v1/models", "", 400, "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "", 400, "Malformed request"),
    ("POST", "/v1/models", "", 400, "Malformed request"),
    ("GET", "/v1/models/foo:predict", "", 400, "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "", 400, "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "", 400, "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "", 400, "Malformed request"),
    (
        "POST",
        f"/v1/models/foo/versions/{2**64 - 1}:regress",
        "",
        400,
        "Failed to convert version",
    ),
    ("POST", "/v1/models/foo/metadata", "", 400, "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "", 400, "Malformed request"),
    (
        "POST",
        "/v1/models/foo/versions/50/labels/some_label:regress",
        "",
        400,
        "Malformed request",
    ),
    ("POST", "/v1/models/foo/versions/some_label:regress", "", 400, "Malformed"),
    ("POST", "/v1/models/foo:predict", '{"instances": [1]}', 404, "Latest(foo)"),
    (
        "POST",
        "/v1/models/foo/versions/50:predict",
        '{"instances": [1]}',
        404,
        "Specific(foo, 50)",
    ),
    (
        "POST",
        "/v1/models/half/versions/99:predict",
        '{"instances": [1]}',
        404,
        "Specific(half, 99)",
    ),
    ("POST", "/v1/models/half:predict", "", 400, "JSON Parse error"),
    ("POST", "/v1/models/half:predict", "instances = [1, 2]", 400, "JSON Parse error"),
    (
        "POST",
        "/v1/models/half:predict",
        '{"instances": ["x", "y"]}',
        400,
        "not of expected type: float",
    ),
    (
        "POST",
        "/v1/models/half/labels/Version_Nonexistent:predict",
        '{"instances": ["x", "y"]}',
        400,
        "Unrecognized servable version label",
    ),
    (
        "POST",
        "/v1/models/half:predict",
        '{"signature_name": 100}',
        400,
        "'signature_name' key must be a string value.",
    ),
    (
        "POST",
        "/v1/models/half:predict",
        '{"signature_name": "nope", "instances": [1.0]}',
        400,
        'Serving signature name: "nope" not found in signature def',
    ),
    ("GET", "/v1/models/foo", "", 404, "Could not find any versions of model foo"),
    ("GET", "/v1/models/half/versions/7", "", 404, "Could not find version 7"),
    ("GET", "/v1/models/half/versions/7/metadata", "", 404, "Specific(half, 7)"),
    ("PUT", "/v1/models/half", "", 405, "Method PUT is not allowed"),
    ("POST", "/v1/models/half:classify", "{}", 400, "key 'examples' is expected"),
    ("GET", "/nowhere", "", 404, "Not Found"),
]


class TestRestApi:
    """The REST API over ASGI, on both backends."""

    async def test_errors_as_tf_serving_answers_them(self, half: str) -> None:
        async with in_process(create_model_app(half, batching=False)) as client:
            for method, path, body, status, message in ERRORS:
                response = await client.request(method, path, content=body)
                assert response.status_code == status, (method, path, response.text)
                assert response.headers["content-type"] == "application/json"
                assert message in response.json()["error"], (method, path)

    async def test_status_and_metadata(self, half: str) -> None:
        async with in_process(create_model_app(half)) as client:
            for path in ("/v1/models/half", "/v1/models/half/versions/1"):
                response = await client.get(path)
                assert response.status_code == 200
                assert response.json() == OK_STATUS
            for path in (
                "/v1/models/half/metadata",
                "/v1/models/half/versions/1/metadata",
            ):
                metadata = (await client.get(path)).json()
                assert metadata["model_spec"] == {
                    "name": "half",
                    "signature_name": "",
                    "version": "1",
                }
                signatures = metadata["metadata"]["signature_def"]["signature_def"]
                assert signatures["serving_default"]["inputs"]["x"]["name"] == "x:0"
                assert signatures["classify_x_to_y"]["method_name"] == (
                    "tensorflow/serving/classify"
                )

    @pytest.mark.parametrize("batching", [False, True])
    async def test_predict_as_tf_serving(self, half: str, batching: bool) -> None:
        cases = [
            (
                "",
                {"instances": [[1.0, 2.0], [3.0, 4.0]]},
                {"predictions": [[2.5, 3.0], [3.5, 4.0]]},
            ),
            ("/versions/1", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
            ("", {"instances": [1.0, 2.0, 5.0]}, {"predictions": [2.5, 3.0, 4.5]}),
            (
                "/versions/1",
                {"signature_name": "serving_default", "instances": [3.0, 4.0]},
                {"predictions": [3.5, 4.0]},
            ),
            (
                "/versions/1",
                {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
                {"outputs": [3.5, 4.0]},
            ),
            (
                "",
                {
                    "signature_name": "regress_x_to_y",
                    "instances": [{"b64": _b64(_models.example(x=80.0))}],
                },
                {"predictions": [[42.0]]},
            ),
            (
                "",
                {"signature_name": "lookup", "instances": ["dog", "zebra"]},
                {"predictions": [1, -1]},
            ),
        ]
        app = create_model_app(half, batching=batching)
        async with in_process(app) as client:
            for version, body, expected in cases:
                response = await client.post(
                    f"/v1/models/half{version}:predict", json=body
                )
                assert response.status_code == 200, (body, response.text)
                assert response.headers["content-type"] == "application/json"
                assert response.json() == expected

    async def test_classify_and_regress_as_tf_serving(self, half: str) -> None:
        regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
        classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
        context = {
            "signature_name": "regress_x_to_y",
            "context": {"x": 10.0},
            "examples": [{}, {"x": 20.0}],  # an example's own feature wins
        }
        cases = [
            ("half:regress", regress, {"results": [42.0]}),
            ("half/versions/1:regress", regress, {"results": [42.0]}),
            ("half:classify", classify, {"results": [[["", 12.0]]]}),
            ("half:regress", context, {"results": [7.0, 12.0]}),
        ]
        bad = [
            (
                "half:regress",
                {"examples": [{"x": 1.0}]},
                "Expected regression signature method_name to be "
                "tensorflow/serving/regress. Was: tensorflow/serving/predict",
            ),
            (
                "half:classify",
                {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]},
                "Expected classification signature method_name",
            ),
            ("half:regress", {**regress, "examples": []}, "is an empty array"),
            ("half:regress", {**regress, "examples": [1]}, "must be JSON object"),
            (
                "half:regress",
                {**regress, "examples": [{"x": [1, "a"]}]},
                "Unexpected element type in feature: x expecting type: int64",
            ),
            (
                "half:regress",
                {**regress, "examples": [{"x": None}]},
                "unexpected JSON type: Null",
            ),
            ("half:regress", {**regress, "examples": [{"x": 1}]}, "Data types"),
            ("half:regress", {**regress, "signature_name": "no"}, "name: no"),
        ]
        async with in_process(create_model_app(half)) as client:
            for path, body, expected in cases:
                response = await client.post(f"/v1/models/{path}", json=body)
                assert response.status_code == 200, response.text
                assert response.json() == expected
            for path, body, message in bad:
                response = await client.post(f"/v1/models/{path}", json=body)
                assert response.status_code == 400, response.text
                assert message in response.json()["error"]

    async def test_several_inputs_and_binary_strings(
        self, models: dict[str, str]
    ) -> None:
        row = {"a": [1.0, 2.0], "b": 3, "text_bytes": {"b64": _b64(b"\x00hi")}}
        columns = {
            "a": [[1.0, 2.0], [3.0, 4.0]],
            "b": [1, 2],
            "text_bytes": ["x", "yz"],
        }
        async with in_process(create_model_app(models["multi_input"])) as client:
            url = "/v1/models/multi_input:predict"
            response = await client.post(url, json={"instances": [row]})
            assert response.json() == {
                "predictions": [
                    {"echo_bytes": {"b64": _b64(b"\x00hi")}, "length": 3, "sum": 6.0}
                ]
            }
            response = await client.post(url, json={"inputs": columns})
            assert response.json() == {
                "outputs": {
                    "echo_bytes": [{"b64": _b64(b"x")}, {"b64": _b64(b"yz")}],
                    "length": [1, 2],
                    "sum": [4.0, 9.0],
                }
            }
            body = {"signature_name": "unbatched", "inputs": {"a": [[1, 2], [3, 4]]}}
            response = await client.post(url, json=body)
            assert response.json() == {"outputs": 10.0}

    async def test_a_keras_export_answers_as_model_predict(
        self, keras_export: tuple[str, Any, Any]
    ) -> None:
        path, rows, expected = keras_export
        async with in_process(create_model_app(path, model_name="k")) as client:
            url = "/v1/models/k:predict"
            plain = await client.post(url, json={"instances": rows.tolist()})
            named = [{"features": row} for row in rows.tolist()]
            by_name = await client.post(url, json={"instances": named})
            columns = await client.post(
                url, json={"inputs": {"features": rows.tolist()}}
            )
            for got in (plain.json()["predictions"], by_name.json()["predictions"]):
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(
                columns.json()["outputs"], expected, rtol=1e-6, atol=1e-6
            )
            metadata = (await client.get("/v1/models/k/metadata")).json()
            signature = metadata["metadata"]["signature_def"]["signature_def"]
            assert signature["serving_default"]["inputs"]["features"]["dtype"] == (
                "DT_FLOAT"
            )

    async def test_step_errors_and_limits(self, models: dict[str, str]) -> None:
        app = create_model_app(models["mlp"], max_body_bytes=4096)
        async with in_process(app) as client:
            url = "/v1/models/mlp:predict"
            # A row of 3 values for a model taking 16: TensorFlow's own error.
            response = await client.post(url, json={"instances": [[1.0, 2.0, 3.0]]})
            assert response.status_code == 400
            assert "Matrix size-incompatible" in response.json()["error"]
            response = await client.post(url, content=b"[" * 5000)
            assert response.status_code == 413
            assert "limit of 4096 bytes" in response.json()["error"]
            ok = await client.post(url, json={"instances": [[0.0] * 16]})
            assert ok.status_code == 200
            assert len(ok.json()["predictions"][0]) == 4

    async def test_openapi_page_and_metrics(self, half: str) -> None:
        async with in_process(create_model_app(half, token=TOKEN)) as client:
            await client.post(
                "/v1/models/half:predict", json={"instances": [1.0]}, headers=AUTH
            )
            document = (await client.get("/openapi.json")).json()
            assert document["openapi"] == "3.1.0"
            predict = document["paths"]["/v1/models/half:predict"]["post"]
            assert predict["security"] == [{"bearer": []}]
            assert "/v1/models/half/versions/{version}/metadata" in document["paths"]
            schemas = document["components"]["schemas"]
            row = schemas["PredictRequest.serving_default.row"]
            assert row["required"] == ["instances"]
            instance = row["properties"]["instances"]["items"]["oneOf"][0]
            assert instance["type"] == "array"  # a row of x: [-1, 1] -> [1]
            assert instance["maxItems"] == 1
            assert instance["items"] == {"type": "number"}
            regress = schemas["PredictRequest.regress_x_to_y.columnar"]
            assert regress["required"] == ["signature_name", "inputs"]
            leaf = regress["properties"]["inputs"]["oneOf"][0]["items"]
            assert {"type": "string"} in leaf["oneOf"]  # or {"b64": ...}
            response = schemas["PredictResponse.serving_default.row"]
            assert response["required"] == ["predictions"]
            page = await client.get("/")
            assert page.headers["content-type"].startswith("text/html")
            assert 'href="/openapi.json"' in page.text
            metrics = await client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            text = metrics.text
            assert (
                'asyncsess_model_requests_total{api="predict",code="200"} 1.0' in text
            )
            assert 'asyncsess_model_version{model="half"} 1.0' in text
            assert "asyncsess_batches_total" in text
            assert "asyncsess_batched_rows_total" in text


class Doubler:
    """A served version of no SavedModel: ``y = 2 * x`` in numpy."""

    def __init__(self) -> None:
        self.version = 7
        spec = TensorSpec(np.float32, (None,))
        self.signatures = {
            "serving_default": Signature(
                "serving_default",
                inputs={"x": TensorInfo("x:0", spec)},
                outputs={"y": TensorInfo("y:0", spec)},
            )
        }

    async def predict(self, signature_name: str, inputs: Any) -> dict[str, Any]:
        find_signature(self.signatures, signature_name).check_predict(inputs)
        return {"y": inputs["x"] * 2}


async def test_routes_serve_any_model_source() -> None:
    """The REST layer without a SavedModel: what `serve MODULE:FACTORY` can reuse."""
    from starlette.applications import Starlette

    routes = ModelRoutes(SingleVersion("double", Doubler()), token=TOKEN)
    app = Starlette(routes=routes.routes())
    async with in_process(app) as client:
        status = (await client.get("/v1/models/double/versions/7")).json()
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        metadata = (await client.get("/v1/models/double/metadata")).json()
        assert metadata["model_spec"]["version"] == "7"
        url = "/v1/models/double:predict"
        body = {"instances": [1.0, 2.5]}
        assert (await client.post(url, json=body)).status_code == 401
        response = await client.post(url, json=body, headers=AUTH)
        assert response.json() == {"predictions": [2.0, 5.0]}
        response = await client.post(
            "/v1/models/double/versions/8:predict", json=body, headers=AUTH
        )
        assert response.status_code == 404


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_default_names(models: dict[str, str], tmp_path: Path) -> None:
    assert default_model_name(str(tmp_path / "half")) == "half"
    assert default_model_name(models["mlp"]) == "mlp"
    version = tmp_path / "served" / "123"
    shutil.copytree(models["mlp"], version)
    assert default_model_name(str(version)) == "served"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
class TestOverHTTP:
    """uvicorn on 127.0.0.1 and a real HTTP client."""

    async def test_token_rules(self, half: str) -> None:
        async with _serving.over_http(create_model_app(half, token=TOKEN)) as client:
            url = "/v1/models/half:predict"
            body = {"instances": [1.0]}
            response = await client.post(url, json=body)
            assert response.status_code == 401
            assert "Bearer" in response.json()["error"]
            assert response.headers["www-authenticate"].startswith("Bearer")
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.post(url, json=body, headers=wrong)).status_code == 401
            response = await client.post(url, json=body, headers=AUTH)
            assert response.json() == {"predictions": [2.5]}
            for path in (
                "/v1/models/half",
                "/v1/models/half/metadata",
                "/openapi.json",
            ):
                assert (await client.get(path)).status_code == 200

    async def test_a_flood_of_bad_payloads_never_gets_a_500(
        self, half: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        payloads = bad_payloads(random.Random(13), 400)
        statuses: list[int] = []
        limiter = anyio.CapacityLimiter(16)

        async def send(client: Any, path: str, body: bytes) -> None:
            async with limiter:
                response = await client.post(path, content=body)
            statuses.append(response.status_code)
            document = response.json()  # always JSON: an answer or {"error": ...}
            assert ("error" in document) == (response.status_code != 200)

        app = create_model_app(half, max_body_bytes=1 << 16)
        with caplog.at_level(logging.ERROR, logger="asyncsess.serve"):
            async with _serving.over_http(app, timeout=60) as client:
                async with anyio.create_task_group() as tg:
                    for path, body in payloads:
                        tg.start_soon(send, client, path, body)
                ok = await client.post(
                    "/v1/models/half:predict", json={"instances": [1.0]}
                )
        assert ok.json() == {"predictions": [2.5]}
        assert len(statuses) == len(payloads)
        assert all(status < 500 for status in statuses), sorted(set(statuses))
        assert statuses.count(200) < len(statuses) // 4  # mostly refused
        assert not [r for r in caplog.records if "Unexpected" in r.getMessage()]

    async def test_a_client_leaving_mid_body_is_no_error(
        self, half: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        from asyncsess._asgi_guard import QuietDisconnects

        app = QuietDisconnects(create_model_app(half))  # as serve() runs it
        with caplog.at_level(logging.DEBUG):
            async with _serving.over_http(app, timeout=60) as client:
                await client.get("/v1/models/half")  # the model is loaded
                port = int(str(client.base_url).rsplit(":", 1)[1])
                for _ in range(3):
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                    await stream.send(
                        b"POST /v1/models/half:predict HTTP/1.1\r\nhost: 127.0.0.1"
                        b'\r\ncontent-length: 1000\r\n\r\n{"instances"'
                    )
                    await anyio.sleep(0.1)
                    await stream.aclose()
                await anyio.sleep(0.3)
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert "Unexpected" not in caplog.text
        assert caplog.text.count("disconnected during POST") == 3


SIGNATURES = [
    "serving_default",
    "regress_x_to_y",
    "classify_x_to_y",
    "regress_x2_to_y3",
    "lookup",
    "",
    "nope",
]
PATHS = [
    "/v1/models/half:predict",
    "/v1/models/half/versions/1:predict",
    "/v1/models/half/versions/2:predict",
    "/v1/models/other:predict",
    "/v1/models/half:regress",
    "/v1/models/half",
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**70, 1e308, -0.0, rng.randint(-9, 9)])
    if kind == 2:
        return rng.random() * 10 ** rng.randint(-5, 40)
    if kind == 3:
        return rng.choice(["", "x", "NaN", "\u2603", "\x00", "b64"])
    if kind == 4:
        return {"b64": rng.choice(["", "!!", "aGk=", "a", 7, None])}
    if kind == 5:
        return []
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 7:
        n = rng.randint(1, 3)
        width = rng.randint(0, 3)
        return [[random_value(rng, depth + 2) for _ in range(width)] for _ in range(n)]
    keys = ["x", "inputs", "words", "a", "instances", ""]
    return {
        rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))
    }


def bad_payloads(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """Random bodies: bytes, JSON of any shape, requests of wrong types and shapes."""
    payloads = []
    for _ in range(count):
        path = rng.choice(PATHS[:4]) if rng.random() < 0.9 else rng.choice(PATHS)
        kind = rng.randrange(6)
        if kind == 0:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        elif kind == 1:
            body = json.dumps(random_value(rng)).encode()
        elif kind == 2:
            nested = "[" * rng.choice([100, 5000, 60000]) + "1" + "]" * 3
            body = f'{{"instances": {nested}}}'.encode()
        elif kind == 3:
            body = b'{"instances": [NaN, Infinity, -Infinity, 1e999]}'
        else:
            request: dict[str, Any] = {
                rng.choice(["instances", "inputs"]): random_value(rng)
            }
            if rng.random() < 0.7:
                request["signature_name"] = rng.choice([*SIGNATURES, 5, None, []])
            if rng.random() < 0.1:
                request["instances" if "inputs" in request else "inputs"] = [1.0]
            body = json.dumps(request).encode()
        payloads.append((path, body))
    return payloads


class TestCommandLine:
    def test_a_public_host_needs_a_token(
        self,
        half: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.delenv("ASYNCSESS_TOKEN", raising=False)
        argv = ["serve", "--saved-model", half, "--host", "0.0.0.0", "--port", "8123"]
        assert _cli.main(argv) == 2
        assert (
            "refusing to listen on 0.0.0.0 without a token" in capsys.readouterr().err
        )

    def test_a_path_without_a_model_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert _cli.main(["serve", "--saved-model", str(tmp_path / "missing")]) == 1
        assert "no such directory" in capsys.readouterr().err
        assert _cli.main(["serve", "--saved-model", str(tmp_path)]) == 1
        assert "neither a SavedModel" in capsys.readouterr().err


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_command_serves_until_sigterm(half: str) -> None:
    args = ["--saved-model", half, "--batch-timeout-ms", "2"]
    async with serve_command(*args, env={"ASYNCSESS_TOKEN": TOKEN}) as served:
        async with httpx.AsyncClient(base_url=served.url, trust_env=False) as client:
            status = await _ready(client, served.process)
            assert status == OK_STATUS
            predict = "/v1/models/half:predict"
            body = {"instances": [1.0, 2.0, 5.0]}
            assert (await client.post(predict, json=body)).status_code == 401
            response = await client.post(predict, json=body, headers=AUTH)
            assert response.json() == {"predictions": [2.5, 3.0, 4.5]}
        code = await served.stop()
    assert code == 0, served.log()


async def _ready(client: Any, process: Any) -> dict[str, Any]:
    with anyio.fail_after(90):
        while True:
            assert process.returncode is None, "the server exited early"
            try:
                response = await client.get("/v1/models/half")
            except httpx.TransportError:
                await anyio.sleep(0.1)
                continue
            status: dict[str, Any] = response.json()
            return status
