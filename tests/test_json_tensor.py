"""The REST codec: TF Serving's json_tensor_test.cc cases, ported, and fuzzing."""

from __future__ import annotations

import base64
import json
import math
import random
import re
from typing import Any

import numpy as np
import pytest

from asyncsess._json_encode import encode_outputs, error_body
from asyncsess._json_tensor import (
    JsonTensorError,
    TensorSpec,
    decode_inputs,
    loads_request,
    signature_name_of,
)

F32 = TensorSpec(np.float32)
F64 = TensorSpec(np.float64)
I32 = TensorSpec(np.int32)
I64 = TensorSpec(np.int64)
STR = TensorSpec(object)
BOOL = TensorSpec(np.bool_)


def decode(
    body: str | bytes, inputs: dict[str, TensorSpec]
) -> tuple[str, dict[str, Any]]:
    raw = body.encode() if isinstance(body, str) else body
    return decode_inputs(loads_request(raw), inputs)


def assert_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for alias, arr in want.items():
        assert got[alias].dtype == arr.dtype, alias
        assert got[alias].shape == arr.shape, alias
        if arr.dtype.kind == "f":
            np.testing.assert_array_equal(got[alias], arr)
        else:
            assert got[alias].tolist() == arr.tolist(), alias


def strs(*values: bytes, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr.reshape(shape if shape is not None else (len(values),))


# ----------------------------------------------------------------- TensorSpec


class TestTensorSpec:
    @pytest.mark.parametrize(
        ("dtype", "name"),
        [
            (np.float32, "DT_FLOAT"),
            (np.float64, "DT_DOUBLE"),
            (np.int32, "DT_INT32"),
            (np.uint8, "DT_UINT8"),
            (np.int64, "DT_INT64"),
            (np.bool_, "DT_BOOL"),
            (object, "DT_STRING"),
            (np.float16, "DT_HALF"),
        ],
    )
    def test_dtype_name_derived(self, dtype: Any, name: str) -> None:
        spec = TensorSpec(dtype)
        assert spec.dtype == np.dtype(dtype)
        assert isinstance(spec.dtype, np.dtype)
        assert spec.dtype_name == name

    def test_explicit_fields_kept(self) -> None:
        spec = TensorSpec(np.dtype(np.float32), (None, 3), "DT_FLOAT")
        assert (spec.shape, spec.dtype_name) == ((None, 3), "DT_FLOAT")


# ------------------------------------------------------- loads / signature name


class TestLoadsRequest:
    @pytest.mark.parametrize(
        ("body", "match"),
        [
            (b"", "The document is empty"),
            (b" \n\t ", "The document is empty"),
            (b"{", r"JSON Parse error: .* at offset: 1"),
            (b'{"instances": [1,]}', "JSON Parse error"),
            (b"\xff\xfe{}", "Invalid encoding"),
            (b'{"a": "\xc3"}', "Invalid encoding"),
            (b"[1, 2]", r"JSON Value: \[1, 2\] Is not object"),
            (b'"abc"', "Is not object"),
            (b"null", "Is not object"),
            (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
            (b'{"a": ' + b"9" * 5000 + b"}", "JSON Parse error"),
        ],
    )
    def test_errors(self, body: bytes, match: str) -> None:
        with pytest.raises(JsonTensorError, match=match):
            loads_request(body)

    def test_nan_and_infinity_tokens(self) -> None:
        doc = loads_request(b'{"x": [NaN, Infinity, -Infinity, 1e5]}')
        x = doc["x"]
        assert math.isnan(x[0])
        assert x[1:] == [math.inf, -math.inf, 1e5]

    def test_text_after_the_document_is_ignored(self) -> None:
        # rapidjson's kParseStopWhenDoneFlag, as TF Serving parses.
        assert loads_request(b'  {"instances": [1]} trailing') == {"instances": [1]}

    def test_deep_nesting_elsewhere_in_request_is_an_error_not_a_crash(self) -> None:
        body = b'{"instances": [1], "nested": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        with pytest.raises(JsonTensorError, match="too deeply"):
            loads_request(body)

    @pytest.mark.parametrize(
        "body",
        [
            b'{"instances": [[0.1, 2.5e-07, -0.0, 3], [1e308, 5e-324, 1E2, -7]]}',
            b'{"a": 1, "a": 2}',  # duplicate keys: the last one, both ways
            b'{"s": "\\u00e9\\n\\ud83d\\ude00", "b": true, "n": null}',
            b'{"i": [18446744073709551615, -9223372036854775808]}',
            b'{"x": 123456789012345678901234.5, "y": 0.1e-400, "z": 1e400}',
            b'{"s": "\\ud800"}',  # a lone surrogate
            b'\xef\xbb\xbf{"a": 1}',  # a byte order mark
            b'{"a": [NaN]} trailing',
            b'{"instances": [' + b"[" * 1200 + b"]" * 1200 + b"]}",
            b" {} ",
            b"[]",
            b"",
        ],
    )
    def test_fast_parser_reads_every_body_as_the_stdlib_one(
        self, body: bytes, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """orjson's answer (the serve extra's) is the stdlib path's, errors included."""
        import asyncsess._json_tensor as module

        assert module._fast_loads is not None  # the serve extra is installed here

        def parsed() -> tuple[str, Any]:
            try:
                return "ok", loads_request(body)
            except JsonTensorError as exc:
                return "error", str(exc)

        fast = parsed()
        monkeypatch.setattr(module, "_fast_loads", None)
        plain = parsed()
        assert repr(fast) == repr(plain)  # repr: NaN != NaN, and int vs float shows
        if fast[0] == "ok":
            assert [type(v) for v in fast[1].values()] == [
                type(v) for v in plain[1].values()
            ]

    def test_integers_past_64_bits_read_as_doubles_as_tf_serving_reads_them(
        self,
    ) -> None:
        # RapidJSON (TF Serving's parser) and orjson: a double; either way an
        # integer tensor refuses it and a float tensor gets the same value.
        doc = loads_request(b'{"instances": [18446744073709551616]}')
        assert doc["instances"] == [2.0**64]
        assert type(doc["instances"][0]) is float
        with pytest.raises(JsonTensorError, match="element: 0"):
            decode_inputs(doc, {"x": I64})
        _, feeds = decode_inputs(doc, {"x": F32})
        assert feeds["x"].tolist() == [np.float32(2.0**64)]


class TestSignatureName:
    @pytest.mark.parametrize(
        ("request_", "name"),
        [
            ({}, "serving_default"),
            ({"signature_name": ""}, "serving_default"),
            ({"signature_name": "predict_images"}, "predict_images"),
        ],
    )
    def test_names(self, request_: dict[str, Any], name: str) -> None:
        assert signature_name_of(request_) == name

    @pytest.mark.parametrize("value", [5, None, ["a"], {"a": 1}, True])
    def test_not_a_string(self, value: Any) -> None:
        with pytest.raises(JsonTensorError, match="key must be a string value"):
            signature_name_of({"signature_name": value, "instances": [[1, 2]]})


# ----------------------------------------------------------- decode: successes


DECODE_OK: list[tuple[str, str, dict[str, TensorSpec], str, dict[str, np.ndarray]]] = [
    (
        "single_unnamed_tensor",
        '{"instances": [[1,2],[3,4],[5,6]]}',
        {"default": I32},
        "row",
        {"default": np.array([[1, 2], [3, 4], [5, 6]], np.int32)},
    ),
    (
        "half_plus_two_docs_example",
        '{"instances": [1.0, 2.0, 5.0]}',
        {"x": TensorSpec(np.float32, (None, 1))},
        "row",
        {"x": np.array([1.0, 2.0, 5.0], np.float32)},
    ),
    (
        "mixed_ints_for_float",
        '{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}',
        {"default": F32},
        "row",
        {"default": np.array([1, 2.0, 3, 4, 5.003, 0.007, 0.0], np.float32)},
    ),
    (
        "mixed_ints_for_double",
        '{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}',
        {"default": F64},
        "row",
        {"default": np.array([1.0, 2, 3, 4, 0.662, 0, 0.0], np.float64)},
    ),
    (
        "float_precision_loss_int",
        '{"instances": [1435774380]}',
        {"default": F32},
        "row",
        {"default": np.array([1435774380], np.float32)},
    ),
    (
        "float_precision_loss_float",
        '{"instances": [1435774380.0]}',
        {"default": F32},
        "row",
        {"default": np.array([1435774380.0], np.float32)},
    ),
    (
        "float_exceeding_max_is_inf",
        '{"instances": [1.7976931348623157e308, -1.7976931348623157e308]}',
        {"default": F32},
        "row",
        {"default": np.array([np.inf, -np.inf], np.float32)},
    ),
    (
        "float_below_min_is_zero",
        '{"instances": [2.2250738585072014e-308, -2.2250738585072014e-308]}',
        {"default": F32},
        "row",
        {"default": np.array([0.0, -0.0], np.float32)},
    ),
    (
        "huge_int_for_float_is_inf",
        '{"instances": [' + "9" * 60 + "]}",
        {"default": F32},
        "row",
        {"default": np.array([np.inf], np.float32)},
    ),
    (
        "with_signature_name",
        '{"signature_name": "predict_images", "instances": [[1,2]]}',
        {"default": I32},
        "row",
        {"default": np.array([[1, 2]], np.int32)},
    ),
    (
        "base64_scalars",
        '{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}',
        {"default": STR},
        "row",
        {"default": strs(b"hello", b"world")},
    ),
    (
        "base64_lists",
        '{"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}',
        {"default": STR},
        "row",
        {"default": strs(b"hello", b"world", shape=(2, 1))},
    ),
    (
        "base64_without_padding",
        '{"instances": [{"b64": "aGVsbG8"}, {"b64": ""}]}',
        {"default": STR},
        "row",
        {"default": strs(b"hello", b"")},
    ),
    (
        "single_named_base64",
        '{"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}',
        {"default": STR},
        "row",
        {"default": strs(b"hello", b"world", shape=(1, 2, 1))},
    ),
    (
        "strings_utf8",
        '{"instances": ["foo", "b\\u00e4r", "\\ud83d\\ude00"]}',
        {"s": STR},
        "row",
        {"s": strs(b"foo", "bär".encode(), "\U0001f600".encode())},
    ),
    (
        "mixed_strings_and_base64",
        '{"instances": ["foo", {"b64": "AP8="}]}',
        {"s": STR},
        "row",
        {"s": strs(b"foo", b"\x00\xff")},
    ),
    (
        "bools",
        '{"instances": [[true, false], [false, false]]}',
        {"b": BOOL},
        "row",
        {"b": np.array([[True, False], [False, False]])},
    ),
    (
        "int64_range",
        '{"instances": [9223372036854775807, -9223372036854775808]}',
        {"i": I64},
        "row",
        {"i": np.array([2**63 - 1, -(2**63)], np.int64)},
    ),
    (
        "uint64_range",
        '{"instances": [18446744073709551615, 0]}',
        {"u": TensorSpec(np.uint64)},
        "row",
        {"u": np.array([2**64 - 1, 0], np.uint64)},
    ),
    (
        "int8_range",
        '{"instances": [127, -128]}',
        {"i": TensorSpec(np.int8)},
        "row",
        {"i": np.array([127, -128], np.int8)},
    ),
    (
        "uint8",
        '{"instances": [[0, 255]]}',
        {"u": TensorSpec(np.uint8)},
        "row",
        {"u": np.array([[0, 255]], np.uint8)},
    ),
    (
        "float16",
        '{"instances": [0.5, 1]}',
        {"h": TensorSpec(np.float16)},
        "row",
        {"h": np.array([0.5, 1], np.float16)},
    ),
    (
        "empty_inner_lists",
        '{"instances": [[], []]}',
        {"x": F32},
        "row",
        {"x": np.zeros((2, 0), np.float32)},
    ),
    (
        "multiple_named_tensors",
        """{"instances": [
            {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
             "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
            {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
             "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}
        ]}""",
        {"int_tensor": I32, "str_tensor": STR, "float_tensor": F32, "dbl_tensor": F64},
        "row",
        {
            "int_tensor": np.array(
                [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32
            ),
            "str_tensor": strs(b"foo", b"bar", b"baz", b"bat", shape=(2, 2)),
            "float_tensor": np.array([[1.0, np.nan], [2.0, np.inf]], np.float32),
            "dbl_tensor": np.array([[np.nan], [2.0]], np.float64),
        },
    ),
    (
        "docs_row_example",
        """{"instances": [
            {"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
            {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]}
        ]}""",
        {"tag": STR, "signal": I32, "sensor": F32},
        "row",
        {
            "tag": strs(b"foo", b"bar"),
            "signal": np.array([[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]], np.int32),
            "sensor": np.array([[[1, 2], [3, 4]], [[4, 5], [6, 8]]], np.float32),
        },
    ),
    (
        "columnar_single_named",
        '{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
        {"int_tensor": I32},
        "columnar",
        {"int_tensor": np.array([[[1, 2], [3, 4], [5, 6]]], np.int32)},
    ),
    (
        "columnar_single_unnamed",
        '{"inputs": [[[1,2],[3,4],[5,6]]]}',
        {"int_tensor": I32},
        "columnar",
        {"int_tensor": np.array([[[1, 2], [3, 4], [5, 6]]], np.int32)},
    ),
    (
        "columnar_multiple_named",
        """{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]],
                      "str_tensor": ["foo", "bar"],
                      "bin_tensor": {"b64": "aGVsbG8="}}}""",
        {"int_tensor": I32, "str_tensor": STR, "bin_tensor": STR},
        "columnar",
        {
            "int_tensor": np.array([[[1, 2], [3, 4], [5, 6]]], np.int32),
            "str_tensor": strs(b"foo", b"bar"),
            "bin_tensor": strs(b"hello", shape=()),
        },
    ),
    (
        "columnar_different_first_dims",
        '{"inputs": {"a": [1, 2, 3], "b": [[1.5]]}}',
        {"a": I64, "b": F64},
        "columnar",
        {"a": np.array([1, 2, 3], np.int64), "b": np.array([[1.5]])},
    ),
    (
        "columnar_scalar",
        '{"inputs": 5}',
        {"x": F32},
        "columnar",
        {"x": np.array(5, np.float32)},
    ),
    (
        "columnar_extra_keys_ignored_as_tf_serving",
        '{"inputs": {"x": [1], "unused": "whatever"}}',
        {"x": F32},
        "columnar",
        {"x": np.array([1], np.float32)},
    ),
    (
        "columnar_empty_list",
        '{"inputs": []}',
        {"x": STR},
        "columnar",
        {"x": strs()},
    ),
]


@pytest.mark.parametrize(
    ("body", "inputs", "fmt", "want"),
    [pytest.param(*case[1:], id=case[0]) for case in DECODE_OK],
)
def test_decode(
    body: str, inputs: dict[str, TensorSpec], fmt: str, want: dict[str, np.ndarray]
) -> None:
    got_fmt, got = decode(body, inputs)
    assert got_fmt == fmt
    assert_arrays(got, want)


def test_decode_returns_spec_order_and_writable_arrays() -> None:
    _, got = decode('{"instances": [{"b": 1, "a": 2}]}', {"a": I32, "b": I64})
    assert list(got) == ["a", "b"]
    got["a"][0] = 5  # a feed the caller may own


# -------------------------------------------------------------- decode: errors


DECODE_ERRORS: list[tuple[str, str, dict[str, TensorSpec], str]] = [
    # Request structure.
    (
        "both_keys",
        '{"instances": [[1,2]], "inputs": [[1,2]]}',
        {"d": I32},
        "Not formatted correctly expecting only one of 'inputs' or 'instances'",
    ),
    (
        "neither_key",
        '{"signature_name": "x"}',
        {"d": I32},
        "Missing 'inputs' or 'instances' key",
    ),
    (
        "instances_not_list",
        '{"instances": {"d": 1}}',
        {"d": I32},
        "Expecting 'instances' to be an list/array",
    ),
    (
        "instances_null",
        '{"instances": null}',
        {"d": I32},
        "Expecting 'instances' to be an list/array",
    ),
    (
        "empty_instances",
        '{"instances": []}',
        {"d": I32},
        "No values in 'instances' array",
    ),
    # SingleUnnamedTensorErrors.
    (
        "ragged_size",
        '{"instances": [[1,2],[3,4],[5,6,7]]}',
        {"d": I32},
        r"Failed to process element: 2 of 'instances' list\. "
        r"Error: Expecting tensor size: 2 but got: 3",
    ),
    (
        "ragged_shape",
        '{"instances": [[1,2],[3,4],[[5,6]]]}',
        {"d": I32},
        r"element: 2 .*Expecting shape \[2\] but got: \[1,2\]",
    ),
    (
        "scalar_then_list",
        '{"instances": [1, [1]]}',
        {"d": I32},
        r"element: 1 .*Expecting shape \[\] but got: \[1\]",
    ),
    (
        "string_for_int",
        '{"instances": [[1,2],["a", "b"]]}',
        {"d": I32},
        r'element: 1 .*JSON Value: "a" Type: String is not of expected type: int32',
    ),
    # MultipleNamedTensorErrors.
    (
        "named_different_shapes",
        """{"instances": [
            {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
            {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}""",
        {"int_tensor": I32, "str_tensor": STR},
        r"element: 1 key: int_tensor .*Expecting shape \[3,2\] but got: \[1,3,2\]",
    ),
    (
        "named_different_sizes",
        """{"instances": [
            {"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},
            {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}""",
        {"int_tensor": I32, "str_tensor": STR},
        r"element: 1 key: int_tensor .*Expecting tensor size: 8 but got: 6",
    ),
    (
        "object_then_list",
        """{"instances": [
            {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
            [1, 20, 30],
            {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}""",
        {"int_tensor": I32, "str_tensor": STR},
        "Expecting object but got list at item 1 of input list",
    ),
    (
        "object_then_number",
        '{"instances": [{"a": 1}, 5]}',
        {"a": I32},
        "Expecting object but got number at item 1 of input list",
    ),
    (
        "object_then_base64",
        '{"instances": [{"a": "x"}, {"b64": "aA=="}]}',
        {"a": STR},
        "Expecting object but got base64 value at item 1 of input list",
    ),
    (
        "list_then_object",
        '{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}',
        {"str_tensor": STR},
        "Expecting value/list but got object at item 1 of input list",
    ),
    (
        "plain_list_for_many_inputs",
        '{"instances": [1, 2]}',
        {"a": I32, "b": I32},
        r"instances is a plain list, but expecting list of objects .*\(inputs: a, b\)",
    ),
    (
        "base64_list_for_many_inputs",
        '{"instances": [{"b64": "aGVsbG8="}]}',
        {"a": STR, "b": STR},
        "instances is a plain list",
    ),
    (
        "unknown_named_input",
        '{"instances": [{"a": 1, "b": 2}, {"a": 1, "c": 2}]}',
        {"a": I32, "b": I32},
        r"Failed to process element: 1 key: c of 'instances' list\. "
        r"Error: JSON object: does not have named input: c",
    ),
    (
        "missing_named_input",
        '{"instances": [{"a": 1}]}',
        {"a": I32, "b": I32},
        r"Failed to process element: 0 of 'instances' list\. "
        r"JSON object: \{\"a\": 1\} keys must be equal to: a,b",
    ),
    # Columnar format.
    (
        "columnar_missing_input",
        '{"inputs": {"a": [1]}}',
        {"a": I32, "b": I32},
        r"Missing named input: b in 'inputs' object\.",
    ),
    (
        "columnar_single_alias_missing",
        '{"inputs": {"y": [1]}}',
        {"x": I32},
        "Missing named input: x in 'inputs' object",
    ),
    (
        "columnar_plain_for_many_inputs",
        '{"inputs": [1, 2]}',
        {"a": I32, "b": I32},
        r"inputs is a plain value/list, but expecting an object .*\(inputs: a, b\)",
    ),
    (
        "columnar_ragged",
        '{"inputs": {"x": [[1, 2], [3]]}}',
        {"x": F32},
        r"Failed to process input: x of 'inputs' object\. Error: "
        r"Encountered list at unexpected size: 1 at level: 1 expected size: 2",
    ),
    (
        "columnar_value_too_deep",
        '{"inputs": [[1, 2], [3, [4]]]}',
        {"x": F32},
        r"input: x .*Encountered list at unexpected level: 2 expected < 2",
    ),
    (
        "columnar_value_too_shallow",
        '{"inputs": [[1, 2], 3]}',
        {"x": F32},
        r"input: x .*JSON Value: 3 found at incorrect level: 2 in the JSON DOM\. "
        r"Expected at level: 2",
    ),
    (
        "columnar_type",
        '{"inputs": {"x": [1, "2"]}}',
        {"x": F32},
        r'input: x .*JSON Value: "2" Type: String is not of expected type: float',
    ),
    # Types per dtype.
    (
        "float_for_int",
        '{"instances": [1, 2.5]}',
        {"i": I32},
        "JSON Value: 2.5 Type: Number is not of expected type: int32",
    ),
    (
        "integral_float_for_int",
        '{"instances": [1.0]}',
        {"i": I64},
        "JSON Value: 1.0 Type: Number is not of expected type: int64",
    ),
    (
        "bool_for_int",
        '{"instances": [1, true]}',
        {"i": I32},
        "JSON Value: true Type: True is not of expected type: int32",
    ),
    (
        "bool_for_float",
        '{"instances": [false, 1.5]}',
        {"f": F32},
        "JSON Value: false Type: False is not of expected type: float",
    ),
    (
        "null_for_float",
        '{"instances": [1.5, null]}',
        {"f": F32},
        "JSON Value: null Type: Null is not of expected type: float",
    ),
    (
        "numeric_string_for_float",
        '{"instances": ["1.5"]}',
        {"f": F32},
        r'JSON Value: "1\.5" Type: String is not of expected type: float',
    ),
    (
        "object_for_float",
        '{"instances": [[{"a": 1}]]}',
        {"f": F32},
        r'JSON Value: \{"a": 1\} Type: Object is not of expected type: float',
    ),
    (
        "number_for_bool",
        '{"instances": [true, 1]}',
        {"b": BOOL},
        "JSON Value: 1 Type: Number is not of expected type: bool",
    ),
    (
        "number_for_string",
        '{"instances": ["a", 1]}',
        {"s": STR},
        "JSON Value: 1 Type: Number is not of expected type: string",
    ),
    (
        "null_for_string",
        '{"inputs": null}',
        {"s": STR},
        "JSON Value: null Type: Null is not of expected type: string",
    ),
    # Ranges.
    (
        "int32_overflow",
        '{"instances": [1, 2147483648]}',
        {"i": I32},
        r"element: 1 .*JSON Value: 2147483648 Type: Number "
        r"is out of range for type: int32",
    ),
    (
        "int32_underflow",
        '{"inputs": [[-2147483649]]}',
        {"i": I32},
        "out of range for type: int32",
    ),
    (
        "int64_overflow",
        '{"instances": [9223372036854775808]}',
        {"i": I64},
        "out of range for type: int64",
    ),
    (
        "int8_overflow",
        '{"instances": [[1], [128]]}',
        {"i": TensorSpec(np.int8)},
        r"element: 1 .*128 .*out of range for type: int8",
    ),
    (
        "uint8_negative",
        '{"instances": [-1]}',
        {"u": TensorSpec(np.uint8)},
        "out of range for type: uint8",
    ),
    (
        "uint64_negative",
        '{"instances": [1, -1]}',
        {"u": TensorSpec(np.uint64)},
        r"element: 1 .*out of range for type: uint64",
    ),
    (
        "uint64_overflow",  # past 64 bits it reads as a double, as in RapidJSON
        '{"instances": [18446744073709551616]}',
        {"u": TensorSpec(np.uint64)},
        r"1\.8446744073709552e\+19 Type: Number is not of expected type: uint64",
    ),
    (
        "huge_int_for_double",
        '{"instances": [1, ' + "9" * 400 + "]}",
        {"f": F64},
        r"element: 1 .*out of range for type: double",
    ),
    # Strings and base64.
    (
        "bad_base64_alphabet",
        '{"instances": ["a", {"b64": "aGVs!G8="}]}',
        {"s": STR},
        r"element: 1 .*Unable to base64 decode",
    ),
    (
        "bad_base64_length",
        '{"instances": [{"b64": "aGVsb"}]}',
        {"s": STR},
        "Unable to base64 decode",
    ),
    (
        "bad_base64_non_ascii",
        '{"inputs": {"s": {"b64": "\\u00e4"}}}',
        {"s": STR},
        "Unable to base64 decode",
    ),
    (
        "b64_not_string_is_named_object",
        '{"instances": [{"b64": 5}]}',
        {"s": STR},
        "does not have named input: b64",
    ),
    (
        "b64_not_string",
        '{"inputs": [{"b64": 5}]}',
        {"s": STR},
        r"JSON Value: \{\"b64\": 5\} not formatted correctly for base64 data",
    ),
    (
        "b64_extra_key",
        '{"inputs": [{"b64": "aA==", "x": 1}]}',
        {"s": STR},
        "not formatted correctly for base64 data",
    ),
    (
        "b64_for_float",
        '{"instances": [{"b64": "aA=="}]}',
        {"f": F32},
        "Type: Object is not of expected type: float",
    ),
    (
        "unpaired_surrogate",
        '{"instances": ["ok", "\\ud800"]}',
        {"s": STR},
        r"element: 1 .*not valid UTF-8",
    ),
    # Unsupported types and ranks.
    (
        "variant_input",
        '{"instances": ["a"]}',
        {"v": TensorSpec(object, None, "DT_VARIANT")},
        "Input v is of type variant, which JSON cannot feed",
    ),
    (
        "complex_input",
        '{"instances": [1]}',
        {"c": TensorSpec(np.complex64)},
        "Input c is of type complex64, which JSON cannot feed",
    ),
    (
        "rank_too_high",
        '{"inputs": ' + "[" * 40 + "1" + "]" * 40 + "}",
        {"x": F32},
        "nested more than 32 lists deep",
    ),
    (
        "row_rank_too_high",
        '{"instances": ' + "[" * 34 + "1" + "]" * 34 + "}",
        {"x": F32},
        "nested more than 32 lists deep",
    ),
]


@pytest.mark.parametrize(
    ("body", "inputs", "match"),
    [pytest.param(*case[1:], id=case[0]) for case in DECODE_ERRORS],
)
def test_decode_errors(body: str, inputs: dict[str, TensorSpec], match: str) -> None:
    with pytest.raises(JsonTensorError, match=match):
        decode(body, inputs)


def test_no_inputs_names_the_signature() -> None:
    with pytest.raises(
        JsonTensorError, match="input map for signature: serving_default"
    ):
        decode('{"instances": [1]}', {})


def test_error_messages_quote_large_values_truncated() -> None:
    big = "x" * 100_000
    with pytest.raises(JsonTensorError) as info:
        decode(json.dumps({"instances": [1, big]}), {"f": F32})
    assert len(str(info.value)) < 500


def test_error_for_value_in_deep_valid_structure_names_its_instance() -> None:
    rows = [[[0, 1], [2, 3]]] * 5 + [[[0, 1], [2, 2**40]]]
    with pytest.raises(
        JsonTensorError, match=r"element: 5 .*out of range for type: int32"
    ):
        decode(json.dumps({"instances": rows}), {"i": I32})


# ---------------------------------------------------------------------- encode


def encoded(outputs: dict[str, Any], fmt: str) -> Any:
    body = encode_outputs(outputs, fmt)  # type: ignore[arg-type]
    return json.loads(body)


INTS = np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32)
BYTES_2x2 = strs(b"hello", b"world", b"tf", b"serving", shape=(2, 2))


class TestEncode:
    def test_single_tensor(self) -> None:
        want = INTS.tolist()
        assert encoded({"int_tensor": INTS}, "row") == {"predictions": want}
        assert encoded({"int_tensor": INTS}, "columnar") == {"outputs": want}

    def test_single_scalar_tensor(self) -> None:
        x = np.arange(1, 6, dtype=np.int32)
        assert encoded({"t": x}, "row") == {"predictions": [1, 2, 3, 4, 5]}
        assert encoded({"t": x}, "columnar") == {"outputs": [1, 2, 3, 4, 5]}

    def test_half_plus_two_docs_example(self) -> None:
        y = np.array([3.5, 4.0, 5.5], np.float32)
        assert encode_outputs({"y": y}, "row") == b'{"predictions": [3.5, 4.0, 5.5]}'

    def test_bytes_tensor(self) -> None:
        assert encoded({"str_tensor_bytes": BYTES_2x2}, "row") == {
            "predictions": [
                [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            ]
        }

    def test_strings_as_utf8(self) -> None:
        out = strs("bär".encode(), b"\xff", shape=(2,))
        assert encoded({"s": out}, "columnar") == {"outputs": ["bär", "\ufffd"]}

    def test_float_six_digit_precision(self) -> None:
        # TF Serving's own expected texts, which numpy's shortest repr matches.
        x = np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], np.float32)
        body = encode_outputs({"float_tensor": x}, "row")
        assert body == (
            b'{"predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}'
        )

    def test_float32_without_noise_digits(self) -> None:
        x = np.array([0.1, 0.2, 1 / 3], np.float32)
        body = encode_outputs({"y": x}, "columnar")
        assert body == b'{"outputs": [0.1, 0.2, 0.33333334]}'

    def test_float_non_finite(self) -> None:
        x = np.array([[np.nan, np.inf], [3, -np.inf]], np.float32)
        body = encode_outputs({"float_tensor": x}, "row")
        assert body == b'{"predictions": [[NaN, Infinity], [3.0, -Infinity]]}'
        d = np.array([np.nan, -np.inf, 0.1], np.float64)
        assert encode_outputs({"d": d}, "columnar") == (
            b'{"outputs": [NaN, -Infinity, 0.1]}'
        )

    @pytest.mark.parametrize(
        ("dtype", "exponents"), [(np.float16, 4), (np.float32, 30), (np.float64, 300)]
    )
    def test_floats_round_trip(self, dtype: Any, exponents: int) -> None:
        rng = np.random.default_rng(0)
        scale = 10.0 ** rng.integers(-exponents, exponents, 200)
        x = (rng.standard_normal(200) * scale).astype(dtype)
        back = np.asarray(encoded({"x": x}, "columnar")["outputs"], dtype=dtype)
        np.testing.assert_array_equal(back, x)

    def test_multiple_named_tensors(self) -> None:
        outputs = {
            "double_scalar_tensor": np.array([8.0, 9.0]),
            "float_tensor": np.array([[1.0], [2.0]], np.float32),
            "int_tensor": INTS,
            "str_tensor": strs(b"foo", b"bar", b"baz", b"bat", shape=(2, 2)),
            "str_tensor_bytes": BYTES_2x2,
        }
        assert encoded(outputs, "row") == {
            "predictions": [
                {
                    "double_scalar_tensor": 8.0,
                    "float_tensor": [1.0],
                    "int_tensor": [[1, 2], [3, 4], [5, 6]],
                    "str_tensor": ["foo", "bar"],
                    "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                },
                {
                    "double_scalar_tensor": 9.0,
                    "float_tensor": [2.0],
                    "int_tensor": [[7, 8], [9, 0], [1, 2]],
                    "str_tensor": ["baz", "bat"],
                    "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
                },
            ]
        }
        assert encoded(outputs, "columnar") == {
            "outputs": {
                "double_scalar_tensor": [8.0, 9.0],
                "float_tensor": [[1.0], [2.0]],
                "int_tensor": INTS.tolist(),
                "str_tensor": [["foo", "bar"], ["baz", "bat"]],
                "str_tensor_bytes": [
                    [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                    [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
                ],
            }
        }

    def test_outputs_keep_mapping_order(self) -> None:
        body = encode_outputs({"b": np.array([1]), "a": np.array([2])}, "row")
        assert body == b'{"predictions": [{"b": 1, "a": 2}]}'

    def test_bools_uints_and_scalars(self) -> None:
        outputs = {
            "flag": np.array(True),
            "u": np.array([2**64 - 1], np.uint64),
            "s": b"scalar\x00",
            "h": np.float32(0.1),
        }
        assert encoded(outputs, "columnar") == {
            "outputs": {"flag": True, "u": [2**64 - 1], "s": "scalar\x00", "h": 0.1}
        }

    def test_zero_batch(self) -> None:
        one = {"int_tensor": np.zeros((0, 2), np.int32)}
        assert encoded(one, "row") == {"predictions": []}
        two = {"s": np.zeros((0, 1, 2), object), "f": np.zeros((0, 3, 4), np.float32)}
        assert encoded(two, "row") == {"predictions": []}
        assert encoded(two, "columnar") == {"outputs": {"s": [], "f": []}}

    @pytest.mark.parametrize(
        ("outputs", "fmt", "match"),
        [
            ({}, "row", "Cannot convert empty tensor map to JSON"),
            ({}, "columnar", "empty tensor map"),
            (
                {
                    "int_tensor": np.zeros((2, 3)),
                    "str_tensor": strs(b"a", b"b", b"c", shape=(1, 3)),
                },
                "row",
                "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2",
            ),
            (
                {
                    "int_tensor": np.zeros((0, 2)),
                    "str_tensor": strs(b"a", b"b", shape=(1, 2)),
                },
                "row",
                "inconsistent batch size",
            ),
            (
                {"tensor": np.array(1, np.int32)},
                "row",
                "Tensor name: tensor has no shape information",
            ),
            (
                {"tensor": np.array([1 + 2j], np.complex64)},
                "row",
                "tensor type: complex64",
            ),
            ({"tensor": np.array([1 + 2j])}, "columnar", "tensor type: complex128"),
        ],
    )
    def test_errors(self, outputs: dict[str, Any], fmt: str, match: str) -> None:
        with pytest.raises(JsonTensorError, match=match):
            encode_outputs(outputs, fmt)  # type: ignore[arg-type]


def test_invalid_format_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="Received: fmt='rows'"):
        encode_outputs({"y": np.zeros(1)}, "rows")  # type: ignore[arg-type]


def test_bfloat16_inputs_and_outputs() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    spec = TensorSpec(ml_dtypes.bfloat16)
    assert spec.dtype_name == "DT_BFLOAT16"
    _, got = decode('{"inputs": [1.5, 3, 1e39]}', {"x": spec})
    assert got["x"].dtype == spec.dtype
    assert encoded(got, "columnar") == {"outputs": [1.5, 3.0, math.inf]}


def test_error_body() -> None:
    assert json.loads(error_body('Servable not found: "x"')) == {
        "error": 'Servable not found: "x"'
    }
    assert json.loads(error_body("\ud800 bad")) == {"error": "\ud800 bad"}


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        (np.float32, [[1.5, -2.0], [np.nan, np.inf]]),
        (np.int64, [[1, -(2**63)], [2**63 - 1, 0]]),
        (np.bool_, [[True, False], [False, True]]),
    ],
)
@pytest.mark.parametrize("fmt", ["row", "columnar"])
def test_round_trip(dtype: Any, values: list[Any], fmt: str) -> None:
    x = np.array(values, dtype=dtype)
    key = "instances" if fmt == "row" else "inputs"
    body = encode_outputs({"x": x}, fmt)  # type: ignore[arg-type]
    text = (
        body.decode()
        .replace('"predictions"', f'"{key}"')
        .replace('"outputs"', f'"{key}"')
    )
    got_fmt, got = decode(text, {"x": TensorSpec(dtype)})
    assert got_fmt == fmt
    np.testing.assert_array_equal(got["x"], x)


def test_round_trip_bytes() -> None:
    raw = [bytes(range(i, i + 7)) for i in range(0, 200, 7)]
    x = strs(*raw)
    body = encode_outputs({"x_bytes": x}, "columnar")
    text = body.decode().replace('"outputs"', '"inputs"')
    _, got = decode(text, {"x_bytes": STR})
    assert got["x_bytes"].tolist() == raw


# ------------------------------------------------------------------------ fuzz


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, biased towards shapes near real requests."""
    roll = rng.random()
    if depth > 5 or roll < 0.35:
        return rng.choice(
            [
                rng.randint(-5, 5),
                rng.choice([2**31, -(2**31) - 1, 2**63, 2**64, -(2**63) - 1, 10**400]),
                rng.uniform(-1e3, 1e3),
                rng.choice([math.nan, math.inf, -math.inf, 1e39, 5e-324]),
                rng.choice([True, False, None]),
                rng.choice(["", "a", "\ud800", "b64", "instances", "x", "\u00e4"]),
                {"b64": rng.choice(["aGVsbG8=", "!!", "aGVsbG8", "", "\u00e4"])},
            ]
        )
    if roll < 0.8:
        n = rng.randint(0, 4)
        if rng.random() < 0.5:  # a dense block: the happy path
            item = random_json(rng, depth + 1)
            return [item] * n
        return [random_json(rng, depth + 1) for _ in range(n)]
    keys = ["x", "y", "b64", "instances", "inputs", "signature_name", "z"]
    return {
        rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))
    }


SPEC_SETS = [
    {"x": F32},
    {"x": STR},
    {"x": I32},
    {"x": BOOL},
    {"x": TensorSpec(np.uint8)},
    {"x": F64, "y": STR},
    {"x": I64, "y": BOOL, "z": TensorSpec(np.float16)},
]


def fuzz_one(body: bytes, specs: dict[str, TensorSpec]) -> None:
    """Decode, and encode what decoded: only JsonTensorError may come out."""
    message = ""
    try:
        request = loads_request(body)
        signature_name_of(request)
        fmt, arrays = decode_inputs(request, specs)
    except JsonTensorError as exc:
        message = str(exc)
    if message:
        json.loads(error_body(message))
        return
    assert fmt in ("row", "columnar")
    assert list(arrays) == list(specs)
    for alias, arr in arrays.items():
        assert arr.dtype == specs[alias].dtype
    try:
        json.loads(encode_outputs(arrays, fmt), parse_constant=float)
    except JsonTensorError as exc:
        message = str(exc)
    # Row format answers need one batch size; nothing else may fail.
    assert not message or re.search("batch size|no shape information", message)


def test_fuzz_random_json_requests() -> None:
    rng = random.Random(1234)
    for _ in range(10_000):
        top = {rng.choice(["instances", "inputs"]): random_json(rng)}
        if rng.random() < 0.2:
            top[rng.choice(["signature_name", "inputs", "instances"])] = random_json(
                rng
            )
        body = json.dumps(top).encode("utf-8", "surrogatepass")
        fuzz_one(body, rng.choice(SPEC_SETS))


def test_fuzz_random_bytes_and_mutations() -> None:
    rng = random.Random(99)
    seeds = [
        case[1].encode() for case in DECODE_OK + DECODE_ERRORS if len(case[1]) < 2000
    ]
    for _ in range(10_000):
        if rng.random() < 0.3:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        else:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(data) + 1)
                op = rng.random()
                if op < 0.4 and data:
                    del data[pos : pos + rng.randint(1, 3)]
                else:
                    data[pos:pos] = rng.choice(
                        [
                            b"[",
                            b"]",
                            b"{",
                            b"}",
                            b",",
                            b'"',
                            b"1",
                            b"-",
                            b"e9",
                            b"NaN",
                            b'{"b64": "x"}',
                            b"true",
                            b"null",
                            bytes([rng.randrange(256)]),
                        ]
                    )
            body = bytes(data)
        fuzz_one(body, rng.choice(SPEC_SETS))


def reference(value: Any, spec: TensorSpec) -> np.ndarray | None:
    """A plain recursive decoder of one value (TF Serving's rules); None: an error."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    leaves: list[Any] = []

    def leaf_ok(x: Any) -> bool:
        kind = spec.dtype.kind
        if kind == "f":
            return type(x) in (int, float) and (type(x) is float or abs(x) < 2**1000)
        if kind in "iu":
            info = np.iinfo(spec.dtype)
            return type(x) is int and info.min <= x <= info.max
        if kind == "b":
            return type(x) is bool
        if type(x) is str:
            return not re.search("[\ud800-\udfff]", x)
        if type(x) is dict and list(x) == ["b64"] and type(x["b64"]) is str:
            text = x["b64"]
            ok = re.fullmatch("[A-Za-z0-9+/]*={0,2}", text) and len(text) % 4 != 1
            return bool(ok)
        return False

    def walk(v: Any, level: int) -> bool:
        if not isinstance(v, list):
            leaves.append(v)
            return level == len(shape) and leaf_ok(v)
        if level >= len(shape) or len(v) != shape[level]:
            return False
        return all(walk(item, level + 1) for item in v)

    if len(shape) > 32 or not walk(value, 0):
        return None
    if spec.dtype.kind == "O":
        out = np.empty(len(leaves), dtype=object)
        out[:] = [
            x.encode() if type(x) is str else base64.b64decode(x["b64"] + "==")
            for x in leaves
        ]
        return out.reshape(shape)
    with np.errstate(over="ignore"):
        return np.array(leaves, dtype=spec.dtype).reshape(shape)


def is_named(value: Any) -> bool:
    b64 = isinstance(value, dict) and list(value) == ["b64"]
    return isinstance(value, dict) and not (b64 and type(value["b64"]) is str)


def check_against_reference(body: bytes, value: Any, spec: TensorSpec) -> bool:
    want = None if value is Ellipsis else reference(value, spec)
    try:
        _, got = decode(body, {"x": spec})
    except JsonTensorError:
        assert want is None, (value, spec)
        return False
    assert want is not None, (value, spec)
    assert got["x"].shape == want.shape
    if spec.dtype.kind == "f":
        np.testing.assert_array_equal(got["x"], want)
    else:
        assert got["x"].tolist() == want.tolist()
    return True


def test_fuzz_against_reference_decoder() -> None:
    rng = random.Random(7)
    specs = [F32, F64, I32, TensorSpec(np.int8), TensorSpec(np.uint64), BOOL, STR]
    agreed = {"columnar": 0, "row": 0}
    for _ in range(10_000):
        value = random_json(rng)
        spec = rng.choice(specs)
        body = json.dumps({"inputs": value}).encode()
        plain = value.get("x", Ellipsis) if is_named(value) else value
        agreed["columnar"] += check_against_reference(body, plain, spec)
        if isinstance(value, list) and not any(is_named(item) for item in value):
            # Row format: the instances stacked (none at all is an error).
            body = json.dumps({"instances": value}).encode()
            expect = value if value else Ellipsis
            agreed["row"] += check_against_reference(body, expect, spec)
    # The generator reaches the happy path often enough.
    assert min(agreed.values()) > 500, agreed


def test_fuzz_deep_and_huge() -> None:
    for depth in (31, 32, 33, 200, 900, 5000):
        for spec in (F32, STR):
            body = ('{"instances": ' + "[" * depth + "1" + "]" * depth + "}").encode()
            fuzz_one(body, {"x": spec})
            body = ('{"inputs": ' + "[" * depth + "]" * depth + "}").encode()
            fuzz_one(body, {"x": spec})
    fuzz_one(b'{"instances": [' + b"1" * 4300 + b"]}", {"x": I64})
    fuzz_one(b'{"instances": [1e400, -1e400]}', {"x": F32})


def test_message_names_alias_expected_and_received() -> None:
    with pytest.raises(JsonTensorError) as info:
        decode('{"inputs": {"image": [[1, 2], [3, "4"]]}}', {"image": F32})
    message = str(info.value)
    assert re.search(r"\bimage\b", message)
    assert '"4"' in message
    assert "String" in message
    assert "float" in message
