"""TensorFlow Serving's Classify and Regress APIs: JSON examples in, results out.

A ``:classify`` or ``:regress`` request lists ``"examples"`` (objects of
features) and an optional ``"context"`` shared by all; each becomes a
serialized ``tf.Example`` (the context's bytes before the example's, so its
features merge in, as TF Serving does), fed to the signature's ``inputs``
tensor. Checks, texts and the ``{"results": ...}`` shapes follow TF Serving's
``json_tensor.cc``, ``classifier.cc`` and ``regressor.cc``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from ._json_tensor import JsonTensorError, signature_name_of
from ._signature import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    invalid_argument,
)
from ._tf import tf

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._signature import ServedVersion, Signature

_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1


async def classify_or_regress(
    served: ServedVersion, verb: str, document: Mapping[str, Any]
) -> bytes:
    """Answer a parsed ``:classify`` or ``:regress`` request with *served*.

    Raises:
      JsonTensorError, ServingError: what the request or the signature got
        wrong (400), with TensorFlow Serving's texts.

    Cancellation: as `ServedVersion.predict`.
    """
    name = signature_name_of(document)
    examples = serialized_examples(document, verb)  # parsed first, as TF Serving
    signature = _signature(served.signatures, name, verb)
    batch = np.empty(len(examples), dtype=object)
    batch[:] = examples
    outputs = await served.predict(signature.name, {"inputs": batch})
    if verb == "classify":
        return _classifications(signature, outputs, len(examples))
    return _regressions(signature, outputs, len(examples))


def _signature(signatures: Mapping[str, Signature], name: str, verb: str) -> Signature:
    name = name or DEFAULT_SIGNATURE
    signature = signatures.get(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    method, what = (
        (CLASSIFY_METHOD, "classification")
        if verb == "classify"
        else (REGRESS_METHOD, "regression")
    )
    if signature.method_name != method:
        raise invalid_argument(
            f"Expected {what} signature method_name to be {method}. "
            f"Was: {signature.method_name}"
        )
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid_argument(f"No {what} inputs found in SignatureDef: {name}")
    outputs = set(signature.outputs)
    if verb == "regress":
        if len(outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if outputs != {"outputs"}:
            raise invalid_argument(
                f"No regression outputs found in SignatureDef: {name}"
            )
    elif len(outputs) not in (1, 2) or not outputs & {"classes", "scores"}:
        raise invalid_argument(
            "Expected classification signature outputs to contain at least one "
            f'of "classes" or "scores". Signature was: {name}'
        )
    return signature


def serialized_examples(document: Mapping[str, Any], verb: str) -> list[bytes]:
    """The request's examples as serialized ``tf.Example`` protos, context first."""
    context = b""
    if "context" in document:
        context = _example(document["context"]).SerializeToString()
    if "examples" not in document:
        raise JsonTensorError(
            f"When method is {verb}, key 'examples' is expected and was not found"
        )
    examples = document["examples"]
    if type(examples) is not list:
        raise JsonTensorError("Expecting 'examples' value to be an list/array")
    if not examples:
        raise JsonTensorError("'examples' value is an empty array")
    return [context + _example(value).SerializeToString() for value in examples]


def _example(value: Any) -> Any:
    if type(value) is not dict:
        raise JsonTensorError(
            f"Example must be JSON object but got JSON {_json_type(value)}"
        )
    example = tf.train.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        feature.SetInParent()
        for item in content if type(content) is list else [content]:
            _add(feature, name, item)
    return example


def _add(feature: Any, name: str, value: Any) -> None:
    """Add one JSON value to *feature*: TensorFlow Serving's AddValueToFeature."""
    if type(value) is bool:
        kind, value = "int64_list", int(value)
    elif type(value) is int and not _INT64[0] <= value <= _UINT64_MAX:
        kind, value = "float_list", float(value)  # past 64 bits: a double
    elif type(value) is int:
        if value > _INT64[1]:
            raise JsonTensorError(
                f"Feature: {name} has uint64_t element. Only int64_t is supported."
            )
        kind = "int64_list"
    elif type(value) is float:
        kind = "float_list"
    elif type(value) is str:
        kind, value = "bytes_list", value.encode()
    elif type(value) is dict and set(value) == {"b64"} and type(value["b64"]) is str:
        kind, value = "bytes_list", _b64(value["b64"], name)
    else:
        raise JsonTensorError(
            f"Feature: {name} has element with unexpected JSON type: "
            f"{_json_type(value)}"
        )
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        expected = {"bytes_list": "bytes", "float_list": "float"}.get(current, "int64")
        raise JsonTensorError(
            f"Unexpected element type in feature: {name} expecting type: {expected}"
        )
    getattr(feature, kind).value.append(value)


def _b64(text: str, name: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise JsonTensorError(
            f"Unable to base64 decode the value of feature: {name}"
        ) from None


def _json_type(value: Any) -> str:
    names = {type(None): "Null", bool: "Bool", dict: "Object", list: "Array"}
    names.update({str: "String", int: "Number", float: "Number"})
    return names.get(type(value), type(value).__name__)


def _classifications(
    signature: Signature, outputs: Mapping[str, Any], rows: int
) -> bytes:
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for alias, tensor, kind in (("classes", classes, "O"), ("scores", scores, "f")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument(
                "Expected Tensor shape: [batch_size num_classes] but got "
                f"{list(tensor.shape)}"
            )
        if tensor.dtype.kind != kind or (kind == "f" and tensor.dtype != np.float32):
            wanted = "DT_STRING" if alias == "classes" else "DT_FLOAT"
            raise invalid_argument(
                f"Expected {alias} Tensor of {wanted}. Got: "
                f"{signature.outputs[alias].spec.dtype_name}"
            )
        if tensor.shape[0] != rows:
            raise invalid_argument(
                f"Expected {alias} output batch size of {rows}. Got: {tensor.shape[0]}"
            )
    if (
        classes is not None
        and scores is not None
        and classes.shape[1] != scores.shape[1]
    ):
        raise invalid_argument(
            "Tensors class and score should match in dim_size(1). Got "
            f"{classes.shape[1]} vs. {scores.shape[1]}"
        )
    count = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    results = [
        [
            [
                "" if classes is None else _label(classes[i, c]),
                0.0 if scores is None else _decimal(scores[i, c]),
            ]
            for c in range(count)
        ]
        for i in range(rows)
    ]
    return json.dumps({"results": results}).encode()


def _regressions(signature: Signature, outputs: Mapping[str, Any], rows: int) -> bytes:
    tensor = outputs["outputs"]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or "
            f"[batch_size, 1] but got {list(tensor.shape)}"
        )
    if tensor.shape[0] != rows:
        raise invalid_argument(
            "Input batch size did not match output batch size: "
            f"{rows} vs. {tensor.shape[0]}"
        )
    if tensor.dtype != np.float32:
        raise invalid_argument(
            "Expected output Tensor of DT_FLOAT.  Got: "
            f"{signature.outputs['outputs'].spec.dtype_name}"
        )
    results = [_decimal(v) for v in tensor.reshape(-1)]
    return json.dumps({"results": results}).encode()


def _label(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _decimal(value: Any) -> float:
    """A float32 as the shortest decimal that reads back to it (12.0, 0.1)."""
    return float(str(np.float32(value)))
