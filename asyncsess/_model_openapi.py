"""``GET /openapi.json``: the REST API of a served model, with its signatures' shapes.

An OpenAPI 3.1 document (JSON Schema 2020-12): the status, metadata and predict
routes of the model, and per signature the row (``instances``) and columnar
(``inputs``) request bodies and their responses, built from the signature's
input and output specs. Shapes are the signature's static ones; TensorFlow
Serving does not force a request to them, so neither do the schemas' lengths
for unknown dimensions.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ._signature import DEFAULT_SIGNATURE, PREDICT_METHODS
from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._json_tensor import TensorSpec
    from ._signature import ServedVersion, Signature

_B64 = {
    "type": "object",
    "properties": {"b64": {"type": "string", "contentEncoding": "base64"}},
    "required": ["b64"],
    "additionalProperties": False,
}
_ERROR = {"$ref": "#/components/schemas/Error"}


def leaf_schema(spec: TensorSpec, *, output_alias: str | None = None) -> dict[str, Any]:
    """The JSON Schema of one value of a tensor of *spec*."""
    kind = spec.dtype.kind
    if kind == "b":
        return {"type": "boolean"}
    if kind in "iu":
        return {"type": "integer"}
    if kind in "fc":
        return {"type": "number"}
    if output_alias is not None:  # TF Serving writes "_bytes" outputs as base64
        if output_alias.endswith("_bytes"):
            return dict(_B64)
        return {"type": "string"}
    return {"oneOf": [{"type": "string"}, dict(_B64)]}


def tensor_schema(
    spec: TensorSpec, *, per_row: bool, output_alias: str | None = None
) -> dict[str, Any]:
    """The JSON Schema of a tensor of *spec*: nested arrays of its shape.

    *per_row*: one row of it (the shape without its first dimension), as the
    row format's instances hold.
    """
    leaf = leaf_schema(spec, output_alias=output_alias)
    if spec.shape is None:
        return {
            "description": "a tensor of any shape",
            "anyOf": [leaf, {"type": "array"}],
        }
    dims = spec.shape[1:] if per_row else spec.shape
    schema = leaf
    for dim in reversed(dims):
        schema = {"type": "array", "items": schema}
        if dim is not None:
            schema["minItems"] = schema["maxItems"] = dim
    shape = ", ".join("-1" if d is None else str(d) for d in spec.shape)
    return {**schema, "description": f"{spec.dtype_name} [{shape}]"}


def _named(
    specs: Mapping[str, TensorSpec], *, per_row: bool, outputs: bool
) -> dict[str, Any]:
    """The schema of tensors by alias: one alone, else an object of them."""
    schemas = {
        alias: tensor_schema(
            spec, per_row=per_row, output_alias=alias if outputs else None
        )
        for alias, spec in specs.items()
    }
    named = {
        "type": "object",
        "properties": schemas,
        "required": sorted(schemas),
        "additionalProperties": False,
    }
    if len(schemas) == 1:
        (alone,) = schemas.values()
        return named if outputs else {"oneOf": [alone, named]}
    return named


def _request(signature: Signature, fmt: str) -> dict[str, Any]:
    specs = signature.input_specs()
    if fmt == "row":
        body = {"type": "array", "items": _named(specs, per_row=True, outputs=False)}
        key = "instances"
    else:
        body = _named(specs, per_row=False, outputs=False)
        key = "inputs"
    name: dict[str, Any] = {"const": signature.name}
    required = [key] if signature.name == DEFAULT_SIGNATURE else ["signature_name", key]
    return {
        "title": f"{signature.name} ({fmt} format)",
        "type": "object",
        "properties": {"signature_name": name, key: body},
        "required": required,
    }


def _response(signature: Signature, fmt: str) -> dict[str, Any]:
    specs = signature.output_specs()
    if len(specs) == 1:
        ((alias, spec),) = specs.items()
        one = tensor_schema(spec, per_row=fmt == "row", output_alias=alias)
    else:
        one = _named(specs, per_row=fmt == "row", outputs=True)
    if fmt == "row":
        key, body = "predictions", {"type": "array", "items": one}
    else:
        key, body = "outputs", one
    return {
        "title": f"{signature.name} ({fmt} format)",
        "type": "object",
        "properties": {key: body},
        "required": [key],
    }


def _component(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def openapi_document(
    model_name: str, served: ServedVersion | None, *, token: bool
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the REST API serving *model_name*.

    *served*: the version whose signatures describe the predict bodies (None
    while none serves: the routes only). *token*: whether POST needs one.
    """
    schemas: dict[str, Any] = {
        "Error": _error_schema(),
        "ModelStatus": _status_schema(),
    }
    requests, responses = [], []
    signatures = {} if served is None else served.signatures
    for name, signature in sorted(signatures.items()):
        if signature.method_name not in PREDICT_METHODS:
            continue
        for fmt in ("row", "columnar"):
            key = _component(f"{name}.{fmt}")
            schemas[f"PredictRequest.{key}"] = _request(signature, fmt)
            schemas[f"PredictResponse.{key}"] = _response(signature, fmt)
            requests.append({"$ref": f"#/components/schemas/PredictRequest.{key}"})
            responses.append({"$ref": f"#/components/schemas/PredictResponse.{key}"})
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": f"{model_name}: TensorFlow Serving's REST API (asyncsess)",
            "version": __version__,
            "description": _description(model_name, served),
        },
        "paths": _paths(model_name, requests, responses, token=token),
        "components": {"schemas": schemas},
    }
    if token:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
    return document


def _description(model_name: str, served: ServedVersion | None) -> str:
    version = "no version yet" if served is None else f"version {served.version}"
    return (
        f"Model {model_name!r} ({version}) over TensorFlow Serving's REST API "
        "(tensorflow_serving/g3doc/api_rest.md): model status, metadata and "
        "predict in the row (instances) or columnar (inputs) format. Errors are "
        '{"error": "..."}.'
    )


def _paths(
    model: str,
    requests: list[dict[str, Any]],
    responses: list[dict[str, Any]],
    *,
    token: bool,
) -> dict[str, Any]:
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
    status = _get(
        "Model status: each version's state.",
        {"$ref": "#/components/schemas/ModelStatus"},
    )
    metadata = _get("Model metadata: every signature_def.", {"type": "object"})
    predict = _post(requests, responses, token=token)
    base = f"/v1/models/{model}"
    paths: dict[str, Any] = {
        base: {"get": status},
        f"{base}/versions/{{version}}": {"get": status, "parameters": [version]},
        f"{base}/metadata": {"get": metadata},
        f"{base}/versions/{{version}}/metadata": {
            "get": metadata,
            "parameters": [version],
        },
        f"{base}:predict": {"post": predict},
        f"{base}/versions/{{version}}:predict": {
            "post": predict,
            "parameters": [version],
        },
        f"{base}:classify": {"post": _examples("classify", token=token)},
        f"{base}:regress": {"post": _examples("regress", token=token)},
        "/metrics": {"get": _text("Prometheus metrics (text format).")},
        "/openapi.json": {"get": _get("This document.", {"type": "object"})},
        "/": {"get": _text("A page describing the model, linking this document.")},
    }
    return paths


def _get(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": _json(schema)},
            "404": {
                "description": "Unknown model or version",
                "content": _json(_ERROR),
            },
        },
    }


def _post(
    requests: list[dict[str, Any]], responses: list[dict[str, Any]], *, token: bool
) -> dict[str, Any]:
    body = {"oneOf": requests} if requests else {"type": "object"}
    answer = {"oneOf": responses} if responses else {"type": "object"}
    operation: dict[str, Any] = {
        "summary": "Predict with a signature (default: serving_default).",
        "requestBody": {"required": True, "content": _json(body)},
        "responses": {
            "200": {"description": "The signature's outputs", "content": _json(answer)},
            "400": {
                "description": "A request the signature cannot take",
                "content": _json(_ERROR),
            },
            "404": {
                "description": "Unknown model or version",
                "content": _json(_ERROR),
            },
            "413": {"description": "The body is too large", "content": _json(_ERROR)},
            "503": {
                "description": "Overloaded or failing; retry",
                "content": _json(_ERROR),
            },
        },
    }
    if token:
        operation["security"] = [{"bearer": []}]
        operation["responses"]["401"] = {
            "description": "Missing or wrong token",
            "content": _json(_ERROR),
        }
    return operation


def _examples(verb: str, *, token: bool) -> dict[str, Any]:
    value = {"oneOf": [{"type": ["number", "boolean", "string"]}, dict(_B64)]}
    example = {
        "type": "object",
        "additionalProperties": {"oneOf": [value, {"type": "array", "items": value}]},
    }
    body = {
        "type": "object",
        "properties": {
            "signature_name": {"type": "string"},
            "context": example,
            "examples": {"type": "array", "items": example, "minItems": 1},
        },
        "required": ["examples"],
    }
    operation = _post([body], [_results(verb)], token=token)
    operation["summary"] = (
        f"{verb.capitalize()} tf.Examples with a {verb} signature (features as JSON)."
    )
    return operation


def _results(verb: str) -> dict[str, Any]:
    if verb == "regress":
        results: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
    else:
        pair = {
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "number"}],
        }
        results = {"type": "array", "items": {"type": "array", "items": pair}}
    return {
        "type": "object",
        "properties": {"results": results},
        "required": ["results"],
    }


def _text(summary: str) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": {"description": "OK"}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }


def _status_schema() -> dict[str, Any]:
    state = {"enum": ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]}
    status = {
        "type": "object",
        "properties": {
            "error_code": {"type": "string"},
            "error_message": {"type": "string"},
        },
    }
    entry = {
        "type": "object",
        "properties": {"version": {"type": "string"}, "state": state, "status": status},
        "required": ["version", "state", "status"],
    }
    return {
        "type": "object",
        "properties": {"model_version_status": {"type": "array", "items": entry}},
        "required": ["model_version_status"],
    }
