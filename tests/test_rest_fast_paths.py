"""The predict path's shortcuts answer exactly as the general code they skip."""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="needs the serve extra")

from starlette.requests import Request
from starlette.responses import Response

from asyncsess._json_tensor import (
    JsonTensorError,
    TensorSpec,
    _build_float,
    _leaves,
    _plan,
    _shape_of,
    decode_inputs,
)
from asyncsess._model_metrics import ModelMetrics
from asyncsess._model_routes import JSON_TYPE, JsonAnswer, _path_of
from asyncsess._serve_app import NO_SNIFF


def test_the_answer_has_the_headers_response_gives_it() -> None:
    for body in (b"", b'{"predictions": [1.5]}', b"x" * 100_000):
        reference = Response(body, media_type=JSON_TYPE, headers=NO_SNIFF)
        answer = JsonAnswer(body)
        assert answer.raw_headers == reference.raw_headers
        assert (answer.status_code, answer.body) == (200, body)
        assert answer.headers == reference.headers


PIECES = ["/v1/models/m", ":predict", "/versions/2", "?", "#", "\\", "\t", "\r"]
PIECES += ["\n", "//", "%3F", " ", "é", "/", ";a=b"]


@pytest.mark.parametrize("host", [b"127.0.0.1:8000", None])
def test_the_path_is_request_url_path(host: bytes | None) -> None:
    rng = random.Random(5)
    paths = ["/", "//x", "/v1/models/m:predict", "/v1/models/a?b:predict"]
    paths += [
        "/" + "".join(rng.choices(PIECES, k=rng.randint(1, 6))) for _ in range(500)
    ]
    for path in paths:
        headers = [] if host is None else [(b"host", host)]
        scope: dict[str, Any] = {"type": "http", "path": path, "headers": headers}
        scope["server"] = None if host is None else ("127.0.0.1", 8000)
        assert _path_of(Request(scope)) == Request(scope).url.path, path


def reference(rows: Any, spec: TensorSpec) -> np.ndarray:
    """What the general path (flatten, check, build) makes of *rows*."""
    shape = _shape_of(rows)
    leaves = _leaves(rows, shape, _plan(spec.dtype)[0], spec)
    return _build_float(leaves, spec).reshape(shape)


def outcome(rows: Any, spec: TensorSpec) -> Any:
    try:
        _, arrays = decode_inputs({"instances": rows}, {"x": spec})
    except JsonTensorError as exc:
        return str(exc)
    return arrays["x"]


DTYPES = [np.float16, np.float32, np.float64, "bfloat16"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_of_numbers_decode_as_the_general_path(dtype: Any) -> None:
    spec = TensorSpec(dtype, (None, None))
    rng = np.random.default_rng(1)
    leaves = [0, 1, -7, 2**53 + 1, 1e-40, 3.5e38, -1e39, 1e300, float("nan")]
    leaves += [float("inf"), -0.0, *rng.normal(size=20).tolist()]
    for rows_n, cols in itertools.product((1, 2, 7), (1, 3, 256)):
        rows = [rng.choice(leaves, size=cols).tolist() for _ in range(rows_n)]
        rows = [[int(v) if v.is_integer() and abs(v) < 2**60 else v for v in r]
                for r in rows]  # fmt: skip
        got = outcome(rows, spec)
        want = reference(rows, spec)
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_rows_the_shortcut_refuses_get_the_general_errors() -> None:
    spec = TensorSpec(np.float32, (None, 2))
    cases = {
        "bool": [[1.0, True]],
        "string": [[1.0, "2"]],
        "null": [[None, 1.0]],
        "ragged": [[1.0, 2.0], [3.0]],
        "list leaf": [[1.0, [2.0]]],
        "huge int": [[1.0, 10**400]],
    }
    for name, rows in cases.items():
        got = outcome(rows, spec)
        assert isinstance(got, str), name
        assert got.startswith("Failed to process element") or "JSON Value" in got
    assert "out of range" in outcome(cases["huge int"], spec)
    assert "Type: True is not of expected type: float" in outcome(cases["bool"], spec)


def test_metrics_count_each_request_once() -> None:
    class Versions:
        name, current, loads, load_failures = "m", None, 0, 0

    metrics = ModelMetrics(Versions(), None)  # type: ignore[arg-type]
    for status in (200, 200, 400, 200):
        metrics.observe("predict", status, 0.002)
    text = metrics.exposition().decode()
    assert 'asyncsess_model_requests_total{api="predict",code="200"} 3.0' in text
    assert 'asyncsess_model_requests_total{api="predict",code="400"} 1.0' in text
    assert 'asyncsess_model_request_seconds_count{api="predict"} 4.0' in text
