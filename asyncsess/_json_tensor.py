"""TensorFlow Serving's REST predict requests: JSON bodies to numpy feeds.

Behaviour and error texts follow TF Serving's ``util/json_tensor.cc``: the row
(``"instances"``) and columnar (``"inputs"``) formats, ``{"b64": ...}`` strings and
``NaN``/``Infinity`` floats. Pure numpy and ``json``; no TensorFlow import. Bodies
are parsed by orjson (the serve extra) when it accepts them, about 4x faster; what
it refuses, the stdlib's parser reads or refuses with TF Serving's messages.
The answers are written by `asyncsess._json_encode`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from numpy.typing import DTypeLike

_fast_loads: Callable[[bytes], Any] | None
try:  # the serve extra's fast parser; the stdlib's below decides what it refuses
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson is part of the serve extra
    _fast_loads = None

Format = Literal["row", "columnar"]

DEFAULT_SIGNATURE = "serving_default"

# numpy cannot hold more dimensions than this on every supported version, and no
# real tensor comes close; deeper lists are answered with an error, not a crash.
_MAX_RANK = 32
# TF Serving truncates the JSON it quotes in error messages to 256 bytes.
_DEBUG_CHARS = 256
_DT_NAMES = {
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "float16": "DT_HALF",
    "bfloat16": "DT_BFLOAT16",
    "bool": "DT_BOOL",
    "object": "DT_STRING",
    "complex64": "DT_COMPLEX64",
    "complex128": "DT_COMPLEX128",
}


class JsonTensorError(ValueError):
    """A request body that cannot become the signature's tensors (HTTP 400).

    ``str()`` is the message for the ``{"error": ...}`` body: TF Serving's text,
    naming the input alias, what was expected and what was received.
    """


@dataclass(frozen=True, slots=True, init=False)
class TensorSpec:
    """A signature tensor as the codec sees it.

    Args:
        dtype: numpy dtype of the tensor (anything ``np.dtype()`` accepts; object
            for DT_STRING).
        shape: the signature's static shape, ``None`` dims unknown; ``None`` for
            unknown rank. Metadata only: requests are not forced to it.
        dtype_name: TensorFlow's enum name (``"DT_FLOAT"``); derived from *dtype*
            when empty.

    Cancellation: plain data, nothing to cancel.
    """

    dtype: np.dtype[Any]
    shape: tuple[int | None, ...] | None
    dtype_name: str

    def __init__(
        self,
        dtype: DTypeLike,
        shape: tuple[int | None, ...] | None = None,
        dtype_name: str = "",
    ) -> None:
        np_dtype = np.dtype(dtype)
        if not dtype_name:
            dtype_name = _DT_NAMES.get(np_dtype.name, f"DT_{np_dtype.name.upper()}")
        object.__setattr__(self, "dtype", np_dtype)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype_name", dtype_name)


class _Bad(Exception):
    """An internal failure: *index* is the offending leaf's position, if known."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


# ---------------------------------------------------------------- request parsing


def loads_request(body: bytes) -> dict[str, Any]:
    """Parse a request body into its top-level JSON object.

    ``NaN``, ``Infinity`` and ``-Infinity`` are accepted, and text after the first
    complete JSON value is ignored, as TF Serving does. An integer outside
    [-2**63, 2**64) reads as a double, as TF Serving's RapidJSON reads it, where
    orjson parses the body (the stdlib's parser would keep it an integer).

    Raises:
        JsonTensorError: empty body, invalid UTF-8 or JSON, nesting deeper than
            Python's parser allows, or a document that is not an object.
    """
    if _fast_loads is not None:
        try:
            doc = _fast_loads(body)
        except ValueError:  # orjson.JSONDecodeError
            pass  # let the stdlib's parser say why, exactly as without orjson
        else:
            if type(doc) is dict:
                return doc
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonTensorError(
            f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}"
        ) from None
    start = _WHITESPACE.match(text).end()  # type: ignore[union-attr]
    if start == len(text):
        raise JsonTensorError("JSON Parse error: The document is empty")
    try:
        doc, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise JsonTensorError(
            f"JSON Parse error: {exc.msg} at offset: {exc.pos}"
        ) from None
    except RecursionError:
        raise JsonTensorError(
            "JSON Parse error: the document nests lists or objects too deeply; "
            f"tensors are at most {_MAX_RANK} lists deep"
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise JsonTensorError(f"JSON Parse error: {exc}") from None
    if type(doc) is not dict:
        raise JsonTensorError(f"JSON Value: {_debug(doc)} Is not object")
    return doc


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def signature_name_of(request: Mapping[str, Any]) -> str:
    """The request's ``"signature_name"``; ``"serving_default"`` if absent or empty.

    Raises:
        JsonTensorError: ``"signature_name"`` is not a string.
    """
    name = request.get("signature_name", "")
    if type(name) is not str:
        raise JsonTensorError(
            f"JSON Value: {_debug(dict(request))} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name or DEFAULT_SIGNATURE


def decode_inputs(
    request: Mapping[str, Any], inputs: Mapping[str, TensorSpec]
) -> tuple[Format, dict[str, np.ndarray]]:
    """Turn a parsed predict request into one numpy array per signature input.

    Row format (``"instances"``) stacks the instances along a new first dimension;
    a signature with one input may give the values without its alias. Columnar
    format (``"inputs"``) takes each input as given, with its own shape; keys that
    are not inputs are ignored there, as TF Serving does.

    Args:
        request: the object `loads_request` returned.
        inputs: the signature's inputs by alias.

    Returns:
        ``"row"`` or ``"columnar"``, and arrays of each spec's dtype keyed by alias
        (DT_STRING as object arrays of bytes).

    Raises:
        JsonTensorError: the request does not fit the signature; the message says
            which input, what was expected and what was received.
    """
    if not inputs:
        raise JsonTensorError(
            "Failed to get input map for signature: " + signature_name_of(request)
        )
    for alias, spec in inputs.items():
        # An object dtype is DT_STRING only: DT_RESOURCE or DT_VARIANT cannot be fed.
        opaque = spec.dtype.kind == "O" and spec.dtype_name != "DT_STRING"
        if opaque or _plan(spec.dtype)[1] is None:
            raise JsonTensorError(
                f"Input {alias} is of type {_tf_type(spec)}, which JSON cannot feed "
                "(TF Serving's REST API takes bool, integer, float and string inputs)"
            )
    has_rows, has_cols = "instances" in request, "inputs" in request
    if has_rows and has_cols:
        raise JsonTensorError(
            f"JSON Value: {_debug(dict(request))} Not formatted correctly expecting "
            "only one of 'inputs' or 'instances' keys to exist "
        )
    if has_rows:
        return "row", _decode_rows(request, inputs)
    if has_cols:
        return "columnar", _decode_columns(request["inputs"], inputs)
    raise JsonTensorError("Missing 'inputs' or 'instances' key")


def _decode_rows(
    request: Mapping[str, Any], inputs: Mapping[str, TensorSpec]
) -> dict[str, np.ndarray]:
    instances = request["instances"]
    if type(instances) is not list:
        raise JsonTensorError(
            f"JSON Value: {_debug(dict(request))} Expecting 'instances' to be an "
            "list/array"
        )
    if not instances:
        raise JsonTensorError(
            f"JSON Value: {_debug(dict(request))} No values in 'instances' array"
        )
    if _is_named(instances[0]):
        _check_named_rows(instances, inputs)
        return {
            alias: _rows_to_array([item[alias] for item in instances], spec, alias)
            for alias, spec in inputs.items()
        }
    if len(inputs) > 1:
        raise JsonTensorError(
            "instances is a plain list, but expecting list of objects as multiple "
            "input tensors required as per tensorinfo_map (inputs: "
            f"{_names(inputs)})"
        )
    for i, item in enumerate(instances):
        if _is_named(item):
            raise JsonTensorError(
                f"Expecting value/list but got object at item {i} of input list"
            )
    ((alias, spec),) = inputs.items()
    return {alias: _rows_to_array(instances, spec, None)}


def _check_named_rows(instances: list[Any], inputs: Mapping[str, TensorSpec]) -> None:
    names = inputs.keys()
    for i, item in enumerate(instances):
        if not _is_named(item):
            got = "list" if type(item) is list else _json_type(item).lower()
            got = "base64 value" if _is_b64(item) else got
            raise JsonTensorError(
                f"Expecting object but got {got} at item {i} of input list"
            )
        if item.keys() == names:
            continue
        for key in item:
            if key not in names:
                key = key[:_DEBUG_CHARS]  # a key may be a megabyte long
                raise JsonTensorError(
                    f"Failed to process element: {i} key: {key} of 'instances' "
                    f"list. Error: JSON object: does not have named input: {key} "
                    f"(the signature's inputs are: {_names(inputs)})"
                )
        raise JsonTensorError(
            f"Failed to process element: {i} of 'instances' list. JSON object: "
            f"{_debug(item)} keys must be equal to: {','.join(sorted(names))}"
        )


def _decode_columns(
    value: Any, inputs: Mapping[str, TensorSpec]
) -> dict[str, np.ndarray]:
    if not _is_named(value):
        if len(inputs) > 1:
            raise JsonTensorError(
                "inputs is a plain value/list, but expecting an object as multiple "
                f"input tensors required as per tensorinfo_map (inputs: "
                f"{_names(inputs)})"
            )
        ((alias, spec),) = inputs.items()
        return {alias: _column_to_array(value, spec, alias)}
    out = {}
    for alias, spec in inputs.items():
        if alias not in value:
            raise JsonTensorError(
                f"Missing named input: {alias} in 'inputs' object. (the signature's "
                f"inputs are: {_names(inputs)})"
            )
        out[alias] = _column_to_array(value[alias], spec, alias)
    return out


def _column_to_array(value: Any, spec: TensorSpec, alias: str) -> np.ndarray:
    try:
        return _to_array(value, _shape_of(value), spec)
    except _Bad as exc:
        raise JsonTensorError(
            f"Failed to process input: {alias} of 'inputs' object. Error: {exc}"
        ) from None


def _rows_to_array(items: list[Any], spec: TensorSpec, key: str | None) -> np.ndarray:
    """Stack *items* (one per instance) into one tensor, or name the bad instance."""
    where = f" key: {key}" if key is not None else ""
    try:
        shape = _shape_of(items)
        return _to_array(items, shape, spec)
    except _Bad as exc:
        row = _diagnose_rows(items, spec)
        if row is None and exc.index is not None:
            # A leaf's value was bad (range, base64, UTF-8): name its instance.
            size = math.prod(_shape_of(items[0])) or 1
            row = (exc.index // size, str(exc))
        if row is None:
            raise JsonTensorError(str(exc)) from None
        raise JsonTensorError(
            f"Failed to process element: {row[0]}{where} of 'instances' list. "
            f"Error: {row[1]}"
        ) from None


def _diagnose_rows(items: list[Any], spec: TensorSpec) -> tuple[int, str] | None:
    """TF Serving's per-instance checks, run only once stacking has failed."""
    allowed = _plan(spec.dtype)[0]
    first: tuple[int, list[int]] | None = None
    for i, item in enumerate(items):
        try:
            shape = _shape_of(item)
            size = len(_leaves(item, shape, allowed, spec))
        except _Bad as exc:
            return i, str(exc)
        if first is None:
            first = size, shape
        elif size != first[0]:
            return i, f"Expecting tensor size: {first[0]} but got: {size}"
        elif shape != first[1]:
            return (
                i,
                f"Expecting shape {_shape_str(first[1])} but got: {_shape_str(shape)}",
            )
    return None


# ----------------------------------------------------------- one value -> ndarray


def _shape_of(value: Any) -> list[int]:
    """The dense shape TF Serving infers: the lengths along the first elements."""
    shape: list[int] = []
    while type(value) is list:
        shape.append(len(value))
        if len(shape) > _MAX_RANK:
            raise _Bad(
                f"JSON Value: {_debug(value)} is nested more than {_MAX_RANK} lists "
                f"deep; tensors of rank above {_MAX_RANK} are not supported"
            )
        if not value:
            break
        value = value[0]
    return shape


def _to_array(value: Any, shape: list[int], spec: TensorSpec) -> np.ndarray:
    allowed, build = _plan(spec.dtype)
    assert build is not None  # decode_inputs checked every spec
    if build is _build_float and len(shape) == 2 and _dense_rows(value, shape, allowed):
        # The hot path (rows of numbers): numpy reads the rows as they are.
        try:
            return _float_array(value, spec)
        except OverflowError:
            pass  # an integer beyond float64's range: the path below names it
    leaves = _leaves(value, shape, allowed, spec)
    return build(leaves, spec).reshape(shape)


def _dense_rows(value: list[Any], shape: list[int], allowed: frozenset[type]) -> bool:
    """Whether *value* is ``shape[0]`` lists of ``shape[1]`` leaves of allowed types."""
    if not set(map(type, value)) <= _LIST or not set(map(len, value)) <= {shape[1]}:
        return False
    kinds: set[type] = set()
    for row in value:
        kinds.update(map(type, row))
    return kinds <= allowed


def _leaves(
    value: Any, shape: list[int], allowed: frozenset[type], spec: TensorSpec
) -> list[Any]:
    """Check *value* is dense with *shape* and of allowed leaf types; flatten it."""
    leaves = _flatten(value, shape, allowed)
    if leaves is None:
        # Something is off: walk it as TF Serving does, to say what and where.
        leaves = []
        _walk(value, 0, shape, allowed, spec, leaves)
    return leaves


def _flatten(
    value: Any, shape: list[int], allowed: frozenset[type]
) -> list[Any] | None:
    """The hot path: one C-level pass per dimension, ``None`` if anything is off."""
    if not shape:
        return [value] if type(value) in allowed else None
    items: list[Any] = value
    for size in shape[1:]:
        if not set(map(type, items)) <= _LIST or not set(map(len, items)) <= {size}:
            return None
        items = list(chain.from_iterable(items))
    return items if set(map(type, items)) <= allowed else None


_LIST = frozenset((list,))


def _walk(
    value: Any,
    level: int,
    shape: list[int],
    allowed: frozenset[type],
    spec: TensorSpec,
    out: list[Any],
) -> None:
    rank = len(shape)
    if type(value) is not list:
        if level != rank:
            raise _Bad(
                f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if type(value) not in allowed:
            raise _Bad(_type_error(value, spec))
        out.append(value)
        return
    if level >= rank:
        raise _Bad(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise _Bad(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    # The innermost lists are checked whole, in C: this is the hot path.
    if level == rank - 1 and set(map(type, value)) <= allowed:
        out.extend(value)
        return
    for item in value:
        _walk(item, level + 1, shape, allowed, spec, out)


@functools.lru_cache(maxsize=64)
def _plan(
    dtype: np.dtype[Any],
) -> tuple[frozenset[type], Callable[[list[Any], TensorSpec], np.ndarray] | None]:
    """The JSON leaf types a dtype accepts and the function that converts them."""
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return frozenset((int, float)), _build_float
    if dtype.kind in "iu":
        return frozenset((int,)), _build_int
    if dtype.kind == "b":
        return frozenset((bool,)), _build_bool
    if dtype.kind in "OSU":
        return frozenset((str, dict)), _build_string
    return frozenset(), None


def _build_float(leaves: list[Any], spec: TensorSpec) -> np.ndarray:
    try:
        return _float_array(leaves, spec)
    except OverflowError:  # an integer beyond float64's range
        for i, x in enumerate(leaves):
            try:
                float(x)
            except OverflowError:
                raise _Bad(_range_error(x, spec), i) from None
        raise


def _float_array(values: list[Any], spec: TensorSpec) -> np.ndarray:
    """*values* (leaves, or rows of them) as an array of the float *spec*."""
    native = spec.dtype if spec.dtype.kind == "f" else np.dtype(np.float32)
    # Beyond the dtype's range a value becomes +/-inf, as in TF Serving.
    with np.errstate(over="ignore"):
        arr = np.asarray(values, dtype=native)
    return arr if native is spec.dtype else arr.astype(spec.dtype)


def _build_int(leaves: list[Any], spec: TensorSpec) -> np.ndarray:
    info = np.iinfo(spec.dtype)
    # Through a 64-bit array, then a range check: numpy 1.x wraps narrower types.
    wide = np.dtype(np.uint64 if info.max > np.iinfo(np.int64).max else np.int64)
    try:
        arr = np.asarray(leaves, dtype=wide)
    except OverflowError:
        for i, x in enumerate(leaves):
            if not info.min <= x <= info.max:
                raise _Bad(_range_error(x, spec), i) from None
        raise
    if arr.dtype == spec.dtype:
        return arr
    bad = np.flatnonzero((arr < info.min) | (arr > info.max))
    if bad.size:
        i = int(bad[0])
        raise _Bad(_range_error(leaves[i], spec), i)
    return arr.astype(spec.dtype)


def _build_bool(leaves: list[Any], spec: TensorSpec) -> np.ndarray:
    return np.asarray(leaves, dtype=np.bool_)


def _build_string(leaves: list[Any], spec: TensorSpec) -> np.ndarray:
    out = np.empty(len(leaves), dtype=object)
    try:
        if dict in set(map(type, leaves)):
            out[:] = [x.encode() if type(x) is str else _b64_bytes(x) for x in leaves]
        else:
            out[:] = list(map(str.encode, leaves))
    except (UnicodeEncodeError, _Bad):
        for i, x in enumerate(leaves):
            try:
                x.encode() if type(x) is str else _b64_bytes(x)
            except UnicodeEncodeError:
                raise _Bad(
                    f"JSON Value: {_debug(x)} is not valid UTF-8 (it holds an "
                    'unpaired surrogate); send binary data as {"b64": ...}',
                    i,
                ) from None
            except _Bad as exc:
                raise _Bad(str(exc), i) from None
        raise
    return out


def _b64_bytes(value: dict[str, Any]) -> bytes:
    if not _is_b64(value):
        raise _Bad(
            f"JSON Value: {_debug(value)} not formatted correctly for base64 data"
        )
    text: str = value["b64"]
    try:
        # Like absl::Base64Unescape: the standard alphabet, padding optional.
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Bad(
            f"Unable to base64 decode JSON Value: {_debug(value)}; expected "
            "standard base64 (A-Z, a-z, 0-9, +, /)"
        ) from None


# ------------------------------------------------------------------------ helpers


def _is_b64(value: Any) -> bool:
    return type(value) is dict and len(value) == 1 and type(value.get("b64")) is str


def _is_named(value: Any) -> bool:
    """An object of named inputs (not a ``{"b64": ...}`` value)."""
    return type(value) is dict and not _is_b64(value)


def _names(inputs: Mapping[str, TensorSpec]) -> str:
    return ", ".join(inputs)


def _tf_type(spec: TensorSpec) -> str:
    name = spec.dtype_name
    return name[3:].lower() if name.startswith("DT_") else str(spec.dtype)


def _type_error(value: Any, spec: TensorSpec) -> str:
    return (
        f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected "
        f"type: {_tf_type(spec)}"
    )


def _range_error(value: Any, spec: TensorSpec) -> str:
    return (
        f"JSON Value: {_debug(value)} Type: Number is out of range for type: "
        f"{_tf_type(spec)}"
    )


def _shape_str(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if type(value) is bool:
        return "True" if value else "False"
    return _JSON_TYPES.get(type(value), "Number")


_JSON_TYPES: dict[type, str] = {dict: "Object", list: "Array", str: "String"}


def _debug(value: Any) -> str:
    """Compact JSON of *value* for error messages, cut at about 256 characters."""
    parts: list[str] = []
    _debug_into(value, parts, [0], 0)
    return "".join(parts)


def _debug_into(value: Any, parts: list[str], size: list[int], depth: int) -> None:
    # Bounded in depth and length: a 1,000-deep list must not overflow the stack,
    # and a megabyte string must not be copied into a message.
    if size[0] > _DEBUG_CHARS or depth > _MAX_RANK:
        parts.append("...")
        size[0] = _DEBUG_CHARS + 1
        return
    if type(value) is list or type(value) is dict:
        items = value.items() if type(value) is dict else value
        parts.append("[" if type(value) is list else "{")
        size[0] += 1
        for i, item in enumerate(items):
            if i:
                parts.append(", ")
            if type(value) is dict:
                key = json.dumps(str(item[0])[:_DEBUG_CHARS]) + ": "
                parts.append(key)
                size[0] += len(key)
                item = item[1]
            _debug_into(item, parts, size, depth + 1)
            if size[0] > _DEBUG_CHARS:
                break
        parts.append("]" if type(value) is list else "}")
        return
    text = _scalar_debug(value)
    if len(text) > _DEBUG_CHARS:
        text = text[:_DEBUG_CHARS] + "..."
    parts.append(text)
    size[0] += len(text)


def _scalar_debug(value: Any) -> str:
    if type(value) is str:
        value = value[: _DEBUG_CHARS + 1]
    try:
        return json.dumps(value)
    except (TypeError, ValueError):  # not a JSON value, or an int too long to print
        return f"<{type(value).__name__}>"
