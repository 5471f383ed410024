"""JSON bodies of TensorFlow Serving's predict answers, written from output arrays.

The other half of `asyncsess._json_tensor`, which reads the requests.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from ._json_tensor import JsonTensorError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._json_tensor import Format


def encode_outputs(outputs: Mapping[str, np.ndarray], fmt: Format) -> bytes:
    """Write a predict response body exactly as TF Serving shapes it.

    Row format: ``{"predictions": [...]}``, one item per index of the shared first
    dimension; a single output's items are its values, several outputs' are
    objects keyed by alias. Columnar format: ``{"outputs": value}`` for a single
    output, else an object keyed by alias. DT_STRING outputs are UTF-8 text
    (invalid bytes replaced) or ``{"b64": ...}`` when the alias ends in
    ``"_bytes"``; floats use the shortest text that reads back to the same value,
    non-finite ones ``NaN``, ``Infinity``, ``-Infinity``. Outputs keep the
    mapping's order.

    Raises:
        JsonTensorError: no outputs, an unsupported dtype, or (row format) an
            output without a first dimension or with another batch size.
    """
    if fmt not in ("row", "columnar"):
        raise ValueError(
            "Invalid request format; expected 'row' or 'columnar'. "
            f"Received: fmt={fmt!r}"
        )
    if not outputs:
        raise JsonTensorError("Cannot convert empty tensor map to JSON")
    arrays = {alias: _as_array(value) for alias, value in outputs.items()}
    if fmt == "row":
        return b'{"predictions": ' + _row_json(arrays).encode() + b"}"
    if len(arrays) == 1:
        ((alias, arr),) = arrays.items()
        body = _whole_json(arr, alias)
    else:
        body = _object_json(
            {alias: _whole_json(arr, alias) for alias, arr in arrays.items()}
        )
    return b'{"outputs": ' + body.encode() + b"}"


def error_body(message: str) -> bytes:
    """The ``{"error": message}`` body TF Serving answers a failed request with."""
    return json.dumps({"error": message}).encode()


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, (bytes, str)):
        # np.asarray(b"...") would make an 'S' array, which drops trailing NULs.
        arr = np.empty((), dtype=object)
        arr[()] = value
        return arr
    return np.asarray(value)


def _row_json(arrays: dict[str, np.ndarray]) -> str:
    batch = -1
    for alias, arr in arrays.items():
        if arr.ndim == 0:
            raise JsonTensorError(
                f"Tensor name: {alias} has no shape information ; a row-format "
                "('instances') response needs every output batched along its first "
                "dimension: send the request in columnar ('inputs') format"
            )
        if batch >= 0 and arr.shape[0] != batch:
            raise JsonTensorError(
                f"Tensor name: {alias} has inconsistent batch size: {arr.shape[0]} "
                f"expecting: {batch}; send the request in columnar ('inputs') format "
                "to get outputs of different batch sizes"
            )
        batch = arr.shape[0]
    if len(arrays) == 1:
        ((alias, arr),) = arrays.items()
        return _whole_json(arr, alias)
    columns = {alias: _rows_json(arr, alias) for alias, arr in arrays.items()}
    keys = [json.dumps(alias) + ": " for alias in columns]
    items = (
        "{" + ", ".join(map(str.__add__, keys, row)) + "}"
        for row in zip(*columns.values(), strict=True)
    )
    return "[" + ", ".join(items) + "]"


def _object_json(parts: dict[str, str]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in parts.items()) + "}"


def _whole_json(arr: np.ndarray, alias: str) -> str:
    texts, nested = _output_values(arr, alias)
    return _join(nested) if texts else json.dumps(nested)


def _rows_json(arr: np.ndarray, alias: str) -> list[str]:
    texts, nested = _output_values(arr, alias)
    return [_join(x) for x in nested] if texts else [json.dumps(x) for x in nested]


def _output_values(arr: np.ndarray, alias: str) -> tuple[bool, Any]:
    """The array as nested lists: ``(True, JSON texts)`` or ``(False, values)``."""
    kind = arr.dtype.kind
    if kind in "biu":
        return False, arr.tolist()
    if kind == "f" and arr.dtype.itemsize >= 8:
        # Python's float repr is already the shortest round trip for float64.
        return False, arr.astype(np.float64, copy=False).tolist()
    if kind == "f" or arr.dtype.name == "bfloat16":
        return True, _float_texts(arr).tolist()
    if kind in "OSU":
        convert = _b64_object if alias.endswith("_bytes") else _utf8_text
        flat = [convert(x) for x in arr.ravel().tolist()]
        nested = np.empty(len(flat), dtype=object)
        nested[:] = flat
        return False, nested.reshape(arr.shape).tolist()
    raise JsonTensorError(
        f"Failed to write JSON value for tensor type: {arr.dtype} (output: {alias})"
    )


def _float_texts(arr: np.ndarray) -> np.ndarray:
    """Shortest round-trip texts of a float16/32 array (no float64 noise digits)."""
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float32)
    texts = arr.astype(str)
    if not np.isfinite(arr).all():
        texts = np.where(np.isnan(arr), "NaN", texts)
        texts = np.where(np.isposinf(arr), "Infinity", texts)
        texts = np.where(np.isneginf(arr), "-Infinity", texts)
    return texts


def _join(nested: Any) -> str:
    if type(nested) is str:
        return nested
    if not nested or type(nested[0]) is str:
        return "[" + ", ".join(nested) + "]"
    return "[" + ", ".join(map(_join, nested)) + "]"


def _utf8_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _b64_object(value: Any) -> dict[str, str]:
    raw = value if isinstance(value, bytes) else str(value).encode()
    return {"b64": base64.b64encode(raw).decode("ascii")}
