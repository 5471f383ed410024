"""The web service's Starlette app: routes, request limits and the bearer token."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ._admission import Admission
from ._json_tensor import JsonTensorError, TensorSpec, decode_inputs, loads_request
from ._serve_factory import demo_graph
from ._serve_metrics import finite_or_none
from ._serve_page import PAGE, PAGE_HEADERS
from ._serve_trainer import (
    ModelUnavailable,
    Overloaded,
    PredictionFailed,
    ServiceConfig,
    Trainer,
)
from ._signature import (
    DEFAULT_SIGNATURE,
    ServingError,
    Signature,
    TensorInfo,
    VersionState,
    VersionStatus,
    code_name,
    servable_not_found,
)
from ._tf import datatype_name, tf

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from starlette.requests import Request

    from ._serve_factory import ServedGraph

logger = logging.getLogger("asyncsess.serve")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"
NO_SNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class Refused(Exception):
    """A request the service turns down with a 4xx status and a message."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def create_app(
    logdir: str,
    *,
    token: str | None = None,
    input_dim: int = 4,
    last_step: int | None = None,
    step_interval: float = 0.0,
    save_checkpoint_secs: float = 600.0,
    max_rows: int = 1024,
    max_body_bytes: int | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
    batching: bool = True,
    max_batch_size: int = 32,
    batch_timeout_secs: float = 0.001,
) -> Starlette:
    """A Starlette app that trains the demo model in the background and serves it.

    Its lifespan opens a `MonitoredTrainingSession` over the demo model (restoring
    the last checkpoint in *logdir*) and trains in a background task until the
    app shuts down or ``POST /stop``; then the current step finishes, the hooks'
    ``end`` runs and the final checkpoint is written. Routes: ``GET /``,
    ``GET /status``, ``GET /history``, ``GET /metrics``, ``POST /predict``,
    ``POST /stop``. Concurrent ``POST /predict`` calls share device steps
    through a `Batcher` (unless *batching* is False).

    Args:
      logdir: Checkpoints and TensorBoard event files.
      token: If set, ``POST`` routes need ``Authorization: Bearer <token>``.
      input_dim: Features per row of the model (and of ``/predict``).
      last_step: Stop training at this global step (None: train until stopped).
      step_interval: Seconds to sleep between steps (0: as fast as it goes).
      save_checkpoint_secs: Seconds between periodic checkpoints.
      max_rows: Most rows one ``/predict`` call may send (422 above).
      max_body_bytes: Largest request body accepted (413 above); by default
        what *max_rows* rows of *input_dim* numbers need (32 bytes a number),
        at least 64 KiB: a limit far above the largest valid body only buys a
        client more parsing time on the event loop.
      allowed_hosts: Host names the app answers to (400 otherwise), against DNS
        rebinding; loopback names by default, ``("*",)`` for any.
      batching: Batch concurrent predictions (`Batcher`).
      max_batch_size: Most rows of one batched step.
      batch_timeout_secs: Longest a prediction waits for others to batch with.

    Cancellation: the app's lifespan owns the training task; see
    `Trainer.running_in_background`.
    """
    served = demo_graph(logdir, input_dim, save_checkpoint_secs=save_checkpoint_secs)
    return create_graph_app(
        served,
        logdir=logdir,
        token=token,
        input_dim=input_dim,
        last_step=last_step,
        step_interval=step_interval,
        max_rows=max_rows,
        max_body_bytes=(
            body_limit(max_rows, input_dim)
            if max_body_bytes is None
            else max_body_bytes
        ),
        allowed_hosts=allowed_hosts,
        batching=batching,
        max_batch_size=max_batch_size,
        batch_timeout_secs=batch_timeout_secs,
        demo=True,
    )


def create_graph_app(
    served: ServedGraph,
    *,
    allowed_hosts: tuple[str, ...] | None = None,
    demo: bool = False,
    **settings: Any,
) -> Starlette:
    """The service's app over *served*: trained in the background if it can be.

    *settings* are `ServiceConfig` fields (``logdir``, ``token``, ``max_rows``,
    ...). The demo's ``POST /predict`` takes ``{"x": rows}`` and answers
    ``{"y": [...]}``; a factory's takes its inputs by name (see
    `parse_inputs`) and answers ``{"outputs": {name: value}}``.

    Cancellation: the app's lifespan owns the training task; see
    `Trainer.running_in_background`.
    """
    if "max_body_bytes" not in settings:
        numbers = numbers_per_row(served.inputs)
        if numbers is not None:
            settings["max_body_bytes"] = body_limit(
                settings.get("max_rows", ServiceConfig.max_rows), numbers
            )
    config = ServiceConfig(**settings)
    if allowed_hosts is None:
        allowed_hosts = config.allowed_hosts
    trainer = Trainer(config, served)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with trainer.running_in_background():
            yield

    # Imported here: the REST routes import this module's request helpers.
    from ._model_routes import ModelRoutes

    source = GraphSource(trainer)
    rest = ModelRoutes(
        source,
        token=config.token,
        max_body_bytes=config.max_body_bytes,
        observer=trainer.metrics,
    )
    routes = [
        Route("/", _page, methods=["GET"]),
        Route("/status", _status, methods=["GET"]),
        Route("/history", _history, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
        Route("/predict", _predict if demo else _predict_inputs, methods=["POST"]),
        Route("/stop", _stop, methods=["POST"]),
        *rest.routes(),
    ]
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
        # Requests take turns with training steps (admission control).
        Middleware(Admission, pace=trainer.pace, exempt=("/stop",)),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={Refused: _refused},  # type: ignore[dict-item]
    )
    app.state.trainer = trainer
    app.state.model = source
    return app


def _trainer(request: Request) -> Trainer:
    trainer: Trainer = request.app.state.trainer
    return trainer


async def _page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)


async def _status(request: Request) -> Response:
    return JSONResponse(_trainer(request).status(), headers=NO_SNIFF)


async def _history(request: Request) -> Response:
    return JSONResponse(_trainer(request).history_document(), headers=NO_SNIFF)


async def _metrics(request: Request) -> Response:
    body = _trainer(request).metrics.exposition()
    return Response(body, media_type=PROMETHEUS_TEXT, headers=NO_SNIFF)


async def _openapi(request: Request) -> Response:
    from ._model_openapi import openapi_document

    source: GraphSource = request.app.state.model
    token = _trainer(request).config.token is not None
    document = openapi_document(source.name, source, token=token)
    document["paths"].update(_service_paths(token))
    return JSONResponse(document, headers=NO_SNIFF)


def _service_paths(token: bool) -> dict[str, Any]:
    """OpenAPI entries of the service's own routes (beside TF Serving's)."""
    json_answer = {"200": {"description": "OK", "content": {JSON: {}}}}
    post: dict[str, Any] = {"security": [{"bearer": []}]} if token else {}

    def get(summary: str) -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": json_answer}}

    def posted(summary: str, answers: dict[str, Any]) -> dict[str, Any]:
        return {"post": {"summary": summary, "responses": answers, **post}}

    return {
        "/status": get("Training and serving state: global step, loss, steps/s."),
        "/history": get("The status and the recent loss curve."),
        "/predict": posted(
            'Predict: {"inputs": {name: value}} -> {"outputs": {name: value}}.',
            {**json_answer, "422": {"description": "A bad payload."}},
        ),
        "/stop": posted(
            "End training after the current step (final checkpoint).",
            {"202": {"description": "Stopping."}},
        ),
    }


async def _stop(request: Request) -> Response:
    trainer = _trainer(request)
    _authorize(request, trainer.config)
    await _read_body(request, trainer.config.max_body_bytes)
    trainer.request_stop()
    logger.info("Stop requested by %s", _client(request))
    return JSONResponse(
        {"stopping": trainer.running, "global_step": trainer.global_step},
        status_code=202,
        headers=NO_SNIFF,
    )


async def _predict(request: Request) -> Response:
    trainer = _trainer(request)
    config = trainer.config
    _authorize(request, config)
    body = await _read_body(request, config.max_body_bytes)
    rows = parse_rows(body, config.input_dim, config.max_rows)
    outputs = await _predicted(trainer, {"x": rows})
    y = [finite_or_none(float(v)) for v in outputs["y"]]
    return JSONResponse({"y": y, "global_step": trainer.global_step}, headers=NO_SNIFF)


async def _predict_inputs(request: Request) -> Response:
    trainer = _trainer(request)
    config = trainer.config
    _authorize(request, config)
    body = await _read_body(request, config.max_body_bytes)
    source: GraphSource = request.app.state.model
    inputs = parse_inputs(body, source.signature, config.max_rows)
    outputs = await _predicted(trainer, inputs)
    document = {
        "outputs": {name: jsonable(value) for name, value in outputs.items()},
        "global_step": trainer.global_step,
    }
    return JSONResponse(document, headers=NO_SNIFF)


async def _predicted(
    trainer: Trainer, inputs: dict[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    """The trainer's prediction, or the 4xx/503 that says why there is none."""
    try:
        return await trainer.predict(inputs)
    except (ModelUnavailable, Overloaded) as exc:
        raise Refused(503, str(exc), {"Retry-After": "1"}) from None
    except PredictionFailed as exc:
        detail = f"The model refused the inputs ({code_name(exc.error_code)}): {exc}"
        raise Refused(422, detail) from None


async def _refused(request: Request, exc: Refused) -> Response:
    trainer = _trainer(request)
    trainer.metrics.rejected.labels(str(exc.status)).inc()
    headers = {**NO_SNIFF, **exc.headers}
    return JSONResponse({"detail": exc.detail}, exc.status, headers=headers)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


# -- who may control it ------------------------------------------------------------


def _authorize(request: Request, config: ServiceConfig) -> None:
    """Refuse cross-site browser requests, and requests without the bearer token."""
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request):
        raise Refused(403, f"Cross-origin request from {origin!r} refused.")
    if config.token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Headers arrive as latin-1 text: back to their bytes, whatever they hold.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("latin-1"), config.token.encode("utf-8")
    ):
        raise Refused(
            401,
            "Missing or wrong token: send the header 'Authorization: Bearer <token>' "
            "with the token the service was started with.",
            {"WWW-Authenticate": 'Bearer realm="asyncsess"'},
        )


def _same_origin(origin: str, request: Request) -> bool:
    """Whether a browser's Origin header names this very host and port."""
    _, _, rest = origin.partition("://")
    return rest.rstrip("/").lower() == request.headers.get("host", "").lower()


# -- request bodies ----------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes *limit* bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"The request body is over the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"The request body is over the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_rows(body: bytes, input_dim: int, max_rows: int) -> np.ndarray[Any, Any]:
    """Validate a ``/predict`` body; the rows as a float32 array, or 422 saying why.

    Nothing reaches the session unless it is ``{"x": [[n, ...], ...]}`` with 1 to
    *max_rows* rows of *input_dim* finite numbers each (float32 range).
    """
    _refuse_unparsed(body, max_rows)
    payload = _parse_json(body)
    if not isinstance(payload, dict) or "x" not in payload:
        raise Refused(422, 'Expected a JSON object {"x": [[number, ...], ...]}.')
    extra = sorted(set(payload) - {"x"})
    if extra:
        raise Refused(422, f"Unexpected key(s) {few(extra)}; only 'x' is accepted.")
    rows = payload["x"]
    if not isinstance(rows, list) or not rows:
        raise Refused(422, "'x' must be a non-empty list of rows.")
    if len(rows) > max_rows:
        raise Refused(422, f"'x' has {len(rows)} rows; at most {max_rows} per call.")
    fast = _plain_rows(body, rows, input_dim)
    if fast is not None:
        return fast
    for i, row in enumerate(rows):  # slow, but names what is wrong
        _check_row(i, row, input_dim)
    return np.asarray(rows, dtype=np.float32)


def _plain_rows(
    body: bytes, rows: list[Any], input_dim: int
) -> np.ndarray[Any, Any] | None:
    """The rows as float32 in one numpy pass when they are plainly valid, else None.

    The per-value checks of `_check_row` cost about 1.5 ms for 1024 rows on
    the event loop (5 demo steps). numpy reads numbers alone at C speed; a body
    with JSON booleans or strings (which numpy would turn into numbers), or
    whose values are ragged, non-finite or out of float32 range, takes the
    slow path, which refuses it with the exact problem.
    """
    if b"true" in body or b"false" in body or body.count(b'"') > 2:
        return None
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if array.shape != (len(rows), input_dim) or not np.isfinite(array).all():
        return None
    if np.abs(array).max(initial=0.0) > _FLOAT32_MAX:
        return None
    plain: np.ndarray[Any, Any] = array.astype(np.float32)
    return plain


def numbers_per_row(inputs: Mapping[str, Any]) -> int | None:
    """Numbers one row of *inputs* holds; None when a shape or dtype leaves it open.

    Numeric inputs whose dimensions after the first are all known, only: a
    string input, or an unknown dimension, has no bound to size a body from.
    """
    total = 0
    for tensor in inputs.values():
        dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
        numeric = tensor.dtype.is_floating or tensor.dtype.is_integer
        if not dims or any(d is None for d in dims[1:]) or not numeric:
            return None
        total += math.prod(dims[1:])
    return total


def body_limit(rows: int, numbers_per_row: int) -> int:
    """Bytes a JSON body of *rows* rows of *numbers_per_row* numbers may need."""
    return max(64 << 10, rows * numbers_per_row * 32 + 1024)


def few(names: list[str], most: int = 5, width: int = 40) -> str:
    """*names* for a message: the first *most*, each cut to *width* characters.

    A body with 60,000 unexpected keys gets a short answer, not a 589 KB one.
    """
    shown = [repr(n if len(n) <= width else n[:width] + "...") for n in names[:most]]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return "[" + ", ".join(shown) + "]" + more


#: A body with more ':' than this has more keys than a 422 lists: refused unparsed.
_MOST_COLONS = 64


def _refuse_unparsed(body: bytes, max_rows: int) -> None:
    """422, before parsing, for a body that byte counts already show invalid.

    A valid body holds at most *max_rows* + 1 ``[`` and one ``:``. Parsing 44,000
    empty rows or 11,000 keys under the body limit holds the loop 4-8 ms (10-20
    demo steps) and sets off full collections; counting takes 0.1 ms.
    """
    if body.count(b"[") > max_rows + 1:
        raise Refused(
            422,
            f"'x' holds more than {max_rows} rows, or lists nested too deeply; "
            f"at most {max_rows} per call.",
        )
    if body.count(b":") > _MOST_COLONS:
        raise Refused(422, "The body holds more than one key; only 'x' is accepted.")


def _parse_json(body: bytes) -> Any:
    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        return json.loads(body, parse_constant=reject_constant)
    except RecursionError:
        raise Refused(422, "The JSON body is nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise Refused(422, f"The body is not valid JSON: {exc}") from None


def _check_row(i: int, row: Any, input_dim: int) -> None:
    if not isinstance(row, list):
        raise Refused(422, f"x[{i}] must be a list of {input_dim} numbers.")
    if len(row) != input_dim:
        raise Refused(
            422, f"x[{i}] has {len(row)} values; the model takes {input_dim}."
        )
    for j, value in enumerate(row):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(
                422, f"x[{i}][{j}] must be a number. Received: {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(422, f"x[{i}][{j}] must be finite. Received: {value!r}")
        if abs(value) > _FLOAT32_MAX:
            raise Refused(422, f"x[{i}][{j}] is out of float32 range.")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


# -- a factory's inputs and outputs -------------------------------------------------


def parse_inputs(
    body: bytes, signature: Signature, max_rows: int
) -> dict[str, np.ndarray[Any, Any]]:
    """Validate a factory's ``/predict`` body; arrays by input name, or 422.

    The body is TensorFlow Serving's columnar request, ``{"inputs": {name:
    value, ...}}`` (or its row request, ``{"instances": [...]}``), or the
    inputs' object itself without the ``"inputs"`` wrapper. Values are decoded
    as TensorFlow Serving decodes them; every input must be given, with at
    most *max_rows* rows.
    """
    try:
        document = loads_request(body)
        if not {"inputs", "instances"} & set(document):
            document = {"inputs": document}
        _, inputs = decode_inputs(document, signature.input_specs())
        signature.check_predict(inputs)
    except (JsonTensorError, ServingError) as exc:
        raise Refused(422, str(exc)) from None
    for name, value in inputs.items():
        if value.ndim and value.shape[0] > max_rows:
            raise Refused(
                422,
                f"Input {name} has {value.shape[0]} rows; at most {max_rows} per call.",
            )
    return inputs


# -- TensorFlow Serving's REST API over the served graph ---------------------------


class GraphSource:
    """The served graph as a `ModelSource` of the ``/v1/models/NAME`` routes.

    One version, 1, with one signature, ``serving_default``: the factory's
    inputs and outputs. It predicts through `Trainer.predict` (batched, on the
    session that trains).

    Cancellation: see `Trainer.predict`.
    """

    version = 1

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self.signature = graph_signature(trainer.served)
        self.signatures = {self.signature.name: self.signature}

    @property
    def name(self) -> str:
        return self._trainer.served.model_name

    def statuses(self) -> list[VersionStatus]:
        trainer = self._trainer
        if trainer.serving is not None:
            return [VersionStatus(self.version, VersionState.AVAILABLE)]
        if trainer.error is not None:
            message = trainer.error
            return [VersionStatus(self.version, VersionState.END, "UNKNOWN", message)]
        return [VersionStatus(self.version, VersionState.LOADING)]

    @asynccontextmanager
    async def use(self, version: int | None) -> AsyncIterator[GraphSource]:
        if version not in (None, self.version):
            raise servable_not_found(self.name, version)
        yield self

    async def predict(
        self, signature_name: str, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        self.signatures[signature_name].check_predict(inputs)
        try:
            return await self._trainer.predict(inputs)
        except (ModelUnavailable, Overloaded) as exc:
            raise ServingError("UNAVAILABLE", str(exc)) from None
        except PredictionFailed as exc:
            raise ServingError(code_name(exc.error_code), str(exc)) from None


def graph_signature(served: ServedGraph) -> Signature:
    """The ``serving_default`` signature of a served graph's inputs and outputs."""
    return Signature(
        DEFAULT_SIGNATURE,
        {name: _tensor_info(t) for name, t in served.inputs.items()},
        {name: _tensor_info(t) for name, t in served.outputs.items()},
    )


def _tensor_info(tensor: Any) -> TensorInfo:
    shape = tensor.shape
    dims = None if shape.rank is None else tuple(shape.as_list())
    dtype = tensor.dtype
    np_dtype = (
        np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)
    )
    name = datatype_name(dtype.as_datatype_enum)
    return TensorInfo(tensor.name, TensorSpec(np_dtype, dims, name))


def jsonable(value: Any) -> Any:
    """*value* (an output array) as JSON: lists; NaN and infinities as null.

    Strings that are not UTF-8 come as ``{"b64": ...}``, as in TensorFlow
    Serving's REST API.
    """
    array = np.asarray(value)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            out = array.astype(object)
            out[~finite] = None
            return out.tolist()
        return array.tolist()
    if array.dtype.kind in "OSU":
        return np.vectorize(_string, otypes=[object])(array).tolist()
    return array.tolist()


def _string(item: Any) -> Any:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode("ascii")}
    return item
