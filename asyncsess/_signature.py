"""What a served model offers over TensorFlow Serving's REST API (no TensorFlow).

The REST routes (``_model_routes.py``) serve any `ModelSource`: the versions of a
SavedModel (``_model_versions.py``) or a graph a factory builds. A source hands
out `ServedVersion` objects: their `Signature` objects and an async ``predict``.
"""

from __future__ import annotations

import enum
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from contextlib import AbstractAsyncContextManager

    import numpy as np

    from ._json_tensor import TensorSpec

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
#: The signature methods ``:predict`` runs (TensorFlow Serving's predict_util.cc).
PREDICT_METHODS = (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD)

# TensorFlow's canonical error codes (tensorflow/core/protobuf/error_codes.proto).
CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)

#: HTTP status per error code, as TensorFlow Serving's http_server.cc maps them,
#: except that no request gets a 500: the codes TF Serving answers with 500
#: (UNKNOWN, INTERNAL, DATA_LOSS) say the model failed on this request, which we
#: answer 503 so a client may retry (a new version may serve it).
HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 503,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 503,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 503,
    "UNAUTHENTICATED": 401,
}


def code_name(error_code: int) -> str:
    """TensorFlow's name of a canonical error code (3 -> ``"INVALID_ARGUMENT"``)."""
    return CODE_NAMES[error_code] if 0 <= error_code < len(CODE_NAMES) else "UNKNOWN"


class ServingError(Exception):
    """A request answered with an error: TensorFlow's code name and the message.

    ``str()`` is the message TensorFlow Serving would put in ``{"error": ...}``;
    ``status`` the HTTP status for ``code`` (`HTTP_STATUS`).

    Cancellation: plain data, nothing to cancel.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = HTTP_STATUS.get(code, 503)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def invalid_argument(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def servable_not_found(name: str, version: int | None) -> ServingError:
    """TensorFlow Serving's 404 for a model or version that does not serve."""
    request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return not_found(f"Servable not found for request: {request}")


def serving_error_of(exc: BaseException) -> ServingError | None:
    """The `ServingError` answering *exc*, or None for an unexpected error.

    TensorFlow's errors (``tf.errors.OpError``: an ``error_code`` and a
    ``message``) keep their code; ``ValueError``/``TypeError`` are what
    ``Session.run`` raises for a fed value it refuses (a shape the tensor
    cannot take), so INVALID_ARGUMENT.
    """
    if isinstance(exc, ServingError):
        return exc
    error_code = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None)
    if isinstance(error_code, int) and isinstance(message, str):
        return ServingError(code_name(error_code), message)
    if isinstance(exc, (ValueError, TypeError)):
        return invalid_argument(str(exc))
    return None


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature: its graph tensor's name and its spec.

    Cancellation: plain data, nothing to cancel.
    """

    name: str
    spec: TensorSpec

    def metadata(self) -> dict[str, Any]:
        """TensorFlow Serving's JSON of a ``TensorInfo`` (proto field names)."""
        shape = self.spec.shape
        dims = [] if shape is None else [-1 if d is None else d for d in shape]
        return {
            "dtype": self.spec.dtype_name,
            "tensor_shape": {
                "dim": [{"size": str(d), "name": ""} for d in dims],
                "unknown_rank": shape is None,
            },
            "name": self.name,
        }


@dataclass(frozen=True)
class Signature:
    """A signature: named inputs and outputs, its method, defaults for inputs.

    ``defaults`` are values fed for inputs a request leaves out (SignatureDef's
    ``defaults``); ``defaults_metadata`` their JSON for the metadata route.

    Cancellation: plain data, nothing to cancel.
    """

    name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]
    method_name: str = PREDICT_METHOD
    defaults: Mapping[str, np.ndarray] = field(default_factory=dict)
    defaults_metadata: Mapping[str, Any] = field(default_factory=dict)

    def input_specs(self) -> dict[str, TensorSpec]:
        """The inputs' specs by alias, for `asyncsess._json_tensor.decode_inputs`."""
        return {alias: info.spec for alias, info in self.inputs.items()}

    def output_specs(self) -> dict[str, TensorSpec]:
        """The outputs' specs by alias."""
        return {alias: info.spec for alias, info in self.outputs.items()}

    def metadata(self) -> dict[str, Any]:
        """TensorFlow Serving's JSON of this ``SignatureDef``."""
        return {
            "inputs": {a: i.metadata() for a, i in self.inputs.items()},
            "outputs": {a: i.metadata() for a, i in self.outputs.items()},
            "method_name": self.method_name,
            "defaults": dict(self.defaults_metadata),
        }

    def check_predict(self, inputs: Mapping[str, Any]) -> None:
        """Raise `ServingError` if ``:predict`` cannot run with these *inputs*.

        TensorFlow Serving's checks (predict_util.cc): the method is predict,
        classify or regress; no input is extra; none is missing unless it has
        a default.
        """
        if self.method_name not in PREDICT_METHODS:
            raise invalid_argument(
                "Expected prediction signature method_name to be one of {"
                f"{', '.join(PREDICT_METHODS)}}}. Was: {self.method_name}"
            )
        given, wanted = set(inputs), set(self.inputs)
        missing = wanted - given - set(self.defaults)
        if given - wanted or missing:
            raise invalid_argument(
                f"input size does not match signature: {len(given)}!={len(wanted)} "
                f"len({{{','.join(sorted(given))}}}) != "
                f"len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(given - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(missing))}}}."
            )


def find_signature(signatures: Mapping[str, Signature], name: str) -> Signature:
    """The signature called *name* (``""``: the default), or `ServingError` (400)."""
    name = name or DEFAULT_SIGNATURE
    try:
        return signatures[name]
    except KeyError:
        raise invalid_argument(
            f'Serving signature name: "{name}" not found in signature def'
        ) from None


class ServedVersion(Protocol):
    """One loaded version of a model: what it offers and how to predict with it.

    Cancellation: cancelling `predict` cancels its step as
    `asyncsess.MonitoredSession.run_without_hooks` (or `Batcher.run`) does; the
    version keeps serving.
    """

    @property
    def version(self) -> int:
        """The version number (TensorFlow Serving's base-path folder name)."""
        ...

    @property
    def signatures(self) -> Mapping[str, Signature]:
        """Every signature, by name."""
        ...

    async def predict(
        self, signature_name: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run signature *signature_name* on *inputs* (by alias); outputs by alias.

        Raises `ServingError` for what the request got wrong, or TensorFlow's
        error of the step.
        """
        ...


class VersionState(enum.Enum):
    """A version's state, as TensorFlow Serving's ``ModelVersionStatus.State``."""

    START = "START"  # known, not loading yet
    LOADING = "LOADING"  # being loaded (in the background)
    AVAILABLE = "AVAILABLE"  # serving requests
    UNLOADING = "UNLOADING"  # replaced: finishing its requests, then closed
    END = "END"  # unloaded, or failed to load (then status has the error)


@dataclass(frozen=True)
class VersionStatus:
    """One entry of ``GET /v1/models/NAME``: a version, its state and health.

    Cancellation: plain data, nothing to cancel.
    """

    version: int
    state: VersionState
    error_code: str = "OK"
    error_message: str = ""

    def to_json(self) -> dict[str, Any]:
        """TensorFlow Serving's JSON of a ``ModelVersionStatus``."""
        return {
            "version": str(self.version),
            "state": self.state.value,
            "status": {
                "error_code": self.error_code,
                "error_message": self.error_message,
            },
        }


class ModelSource(Protocol):
    """A named model whose versions the REST routes serve.

    `use` holds a version for the time of one request: a version being
    replaced finishes the requests that hold it before it is closed.

    Cancellation: a block of `use` that is cancelled releases its version.
    """

    @property
    def name(self) -> str:
        """The model's name, as in ``/v1/models/NAME``."""
        ...

    def statuses(self) -> list[VersionStatus]:
        """Every version known, newest first (TensorFlow Serving's order)."""
        ...

    def use(self, version: int | None) -> AbstractAsyncContextManager[ServedVersion]:
        """Hold *version* (None: the one serving) while the block runs.

        Raises `ServingError` (404) when that version does not serve.
        """
        ...


class SingleVersion:
    """A `ModelSource` of one version that always serves (a graph of your own).

    For the REST routes over a graph a factory builds: *served* answers every
    request for the model *name* (and for its version number).

    Cancellation: nothing to cancel; see `ServedVersion`.
    """

    def __init__(self, name: str, served: ServedVersion) -> None:
        self._name = name
        self.served = served

    @property
    def name(self) -> str:
        """The model's name."""
        return self._name

    def statuses(self) -> list[VersionStatus]:
        """The one version, available."""
        return [VersionStatus(self.served.version, VersionState.AVAILABLE)]

    @asynccontextmanager
    async def use(self, version: int | None) -> AsyncIterator[ServedVersion]:
        """The version, if *version* is None or its number (else 404)."""
        if version is not None and version != self.served.version:
            raise servable_not_found(self._name, version)
        yield self.served
