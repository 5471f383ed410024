"""TensorFlow Serving's REST API over a `ModelSource`: status, metadata, predict.

Paths, JSON shapes, error texts and status codes follow TensorFlow Serving's
``http_rest_api_handler.cc`` and ``http_rest_api_util.cc``: every ``/v1/...``
request is matched against its two patterns, and an error is answered
``{"error": "..."}`` with the status of its TensorFlow code (`HTTP_STATUS`).
No request gets a 500: what nothing expected is logged and answered 503.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route

from ._json_encode import encode_outputs, error_body
from ._json_tensor import (
    JsonTensorError,
    decode_inputs,
    loads_request,
    signature_name_of,
)
from ._model_examples import classify_or_regress
from ._serve_app import NO_SNIFF, Refused, _authorize, _read_body
from ._serve_trainer import ServiceConfig
from ._signature import (
    ServingError,
    find_signature,
    invalid_argument,
    not_found,
    servable_not_found,
    serving_error_of,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.requests import Request

    from ._json_tensor import TensorSpec
    from ._signature import ModelSource, Signature

logger = logging.getLogger("asyncsess.serve")

# TensorFlow Serving's kPredictionApiGegex and kModelStatusApiRegex.
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1
# Every method reaches `handle`, which answers the ones it does not take.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
JSON_TYPE = "application/json"


class RequestObserver(Protocol):
    """Where the routes report each answered request (Prometheus metrics)."""

    def observe(self, api: str, status: int, seconds: float) -> None:
        """One request of *api* answered with *status* after *seconds*."""


class ModelRoutes:
    """The ``/v1/models/...`` routes of one `ModelSource`.

    ``GET`` routes need no token; ``POST`` (predict) needs ``Authorization:
    Bearer TOKEN`` when *token* is set (401 otherwise) and a body of at most
    *max_body_bytes* (413 above).

    Cancellation: a request cancelled mid-prediction (the client went away)
    cancels its `ServedVersion.predict`; the version keeps serving.
    """

    def __init__(
        self,
        source: ModelSource,
        *,
        token: str | None = None,
        max_body_bytes: int = 16 << 20,
        observer: RequestObserver | None = None,
    ) -> None:
        self.source = source
        self.max_body_bytes = max_body_bytes
        self.observer = observer
        self._auth = ServiceConfig(logdir="", token=token or None)
        #: Input specs by id() of their signature (kept, so the id stays its own).
        self._specs: dict[int, tuple[Signature, Mapping[str, TensorSpec]]] = {}

    def routes(self) -> list[Route]:
        """The Starlette routes: every method of every ``/v1/`` path."""
        return [Route("/v1/{rest:path}", self.handle, methods=_METHODS)]

    async def handle(self, request: Request) -> Response:
        """Answer one ``/v1/`` request; never raises but a cancellation.

        Cancellation: see the class docstring.
        """
        started = time.perf_counter()
        api = "predict" if request.method == "POST" else "status"
        try:
            api, body = await self._dispatch(request)
            response: Response = JsonAnswer(body)
        except ClientDisconnect:
            raise  # nobody is left to answer; QuietDisconnects logs it at DEBUG
        except Exception as exc:  # every error gets an answer, never a 500
            response = _error_response(exc, request)
        if self.observer is not None:
            self.observer.observe(
                api, response.status_code, time.perf_counter() - started
            )
        return response

    async def _dispatch(self, request: Request) -> tuple[str, bytes]:
        method, path = request.method, _path_of(request)
        if method == "POST":
            _authorize(request, self._auth)
            match = _PREDICT_PATH.fullmatch(path)
            spec = None if match is None else _spec(match)
            if match is not None and match[4] == "predict":
                assert spec is not None
                return "predict", await self._predict(request, *spec)
            if match is not None and match[4] in ("classify", "regress"):
                assert spec is not None
                return match[4], await self._examples(request, match[4], *spec)
        elif method in ("GET", "HEAD"):
            match = _STATUS_PATH.fullmatch(path)
            if match is not None:
                if not match[1]:
                    raise invalid_argument("Missing model name in request.")
                name, version = _spec(match)
                if match[4] == "metadata":
                    return "metadata", await self._metadata(name, version)
                return "status", self._status(name, version)
        else:
            raise Refused(
                405,
                f"Method {method} is not allowed: the REST API takes GET (status, "
                "metadata) and POST (predict).",
                {"Allow": "GET, HEAD, POST"},
            )
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _status(self, name: str, version: int | None) -> bytes:
        statuses = self.source.statuses() if name == self.source.name else []
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise not_found(f"Could not find version {version} of model {name}")
        elif not statuses:
            raise not_found(f"Could not find any versions of model {name}")
        document = {"model_version_status": [s.to_json() for s in statuses]}
        return json.dumps(document, indent=1).encode()

    async def _metadata(self, name: str, version: int | None) -> bytes:
        async with self._use(name, version) as served:
            signatures = {n: s.metadata() for n, s in served.signatures.items()}
            document = {
                "model_spec": {
                    "name": name,
                    "signature_name": "",
                    "version": str(served.version),
                },
                "metadata": {"signature_def": {"signature_def": signatures}},
            }
        return json.dumps(document, indent=1).encode()

    async def _predict(self, request: Request, name: str, version: int | None) -> bytes:
        body = await _read_body(request, self.max_body_bytes)
        document = loads_request(body)
        signature_name = signature_name_of(document)
        async with self._use(name, version) as served:
            signature = find_signature(served.signatures, signature_name)
            fmt, inputs = decode_inputs(document, self._input_specs(signature))
            outputs = await served.predict(signature.name, inputs)
        return encode_outputs(outputs, fmt)

    def _input_specs(self, signature: Signature) -> Mapping[str, TensorSpec]:
        """``signature.input_specs()``, built once per signature (of any version)."""
        cached = self._specs.get(id(signature))
        if cached is None or cached[0] is not signature:
            if len(self._specs) >= _SPECS_KEPT:  # versions come and go
                self._specs.clear()
            cached = self._specs[id(signature)] = (signature, signature.input_specs())
        return cached[1]

    async def _examples(
        self, request: Request, verb: str, name: str, version: int | None
    ) -> bytes:
        body = await _read_body(request, self.max_body_bytes)
        document = loads_request(body)
        signature_name_of(document)
        async with self._use(name, version) as served:
            return await classify_or_regress(served, verb, document)

    def _use(self, name: str, version: int | None) -> Any:
        if name != self.source.name:
            raise servable_not_found(name, version)
        return self.source.use(version)


class JsonAnswer(Response):
    """A 200 answer of JSON *body* with the REST API's headers.

    The same status, body and headers as ``Response(body,
    media_type=JSON_TYPE, headers=NO_SNIFF)``, the headers put together once
    rather than per answer.
    """

    media_type = JSON_TYPE

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            *_ANSWER_HEADERS,
            (b"content-length", str(len(body)).encode()),
            _JSON_CONTENT_TYPE,
        ]


_ANSWER_HEADERS = [
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in NO_SNIFF.items()
]
_JSON_CONTENT_TYPE = (b"content-type", JSON_TYPE.encode("latin-1"))
_SPECS_KEPT = 256
#: Characters Starlette's ``request.url`` escapes or drops from a path.
_URL_CHANGES = re.compile(r"[?#\\\t\r\n]")


def _path_of(request: Request) -> str:
    """``request.url.path``, without building the URL for a path it keeps as is."""
    path: str = request.scope["path"]
    if path.startswith("//") or _URL_CHANGES.search(path):
        return request.url.path
    return path


def _spec(match: re.Match[str]) -> tuple[str, int | None]:
    """The model name and version (None: the latest) a path names."""
    name, version, label = match[1] or "", match[2], match[3]
    if label is not None:
        raise invalid_argument(f"Unrecognized servable version label: {label}")
    if version is None:
        return name, None
    number = int(version)
    if number > _INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {version} to numeric.")
    return name, number


def _error_response(exc: Exception, request: Request) -> Response:
    headers = dict(NO_SNIFF)
    if isinstance(exc, Refused):
        status, message = exc.status, exc.detail
        headers.update(exc.headers)
    elif isinstance(exc, JsonTensorError):
        status, message = 400, str(exc)
    else:
        error = serving_error_of(exc)
        if error is None:
            logger.exception(
                "Unexpected error answering %s %s", request.method, request.url.path
            )
            error = ServingError(
                "UNAVAILABLE",
                f"The model could not answer this request ({type(exc).__name__}: "
                f"{exc}); the error is logged on the server.",
            )
        status, message = error.status, str(error)
    if status == 503:
        headers.setdefault("Retry-After", "1")
    return Response(error_body(message), status, headers=headers, media_type=JSON_TYPE)
