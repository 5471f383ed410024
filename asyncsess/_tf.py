"""The only module that imports TensorFlow: a friendly ImportError, TF names."""

from __future__ import annotations

from typing import Any

try:
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "TensorFlow is not installed. Install it with: "
        "pip install 'asyncsess[tensorflow-cpu]' (or 'asyncsess[tensorflow]')"
    ) from exc

v1 = tf.compat.v1
errors = tf.errors

Graph = tf.Graph
Session = v1.Session
Scaffold = v1.train.Scaffold
SessionRunArgs = v1.train.SessionRunArgs
SessionRunContext = v1.train.SessionRunContext
SessionRunValues = v1.train.SessionRunValues
TFSessionRunHook = v1.train.SessionRunHook
TFSessionCreator = v1.train.SessionCreator
Coordinator = v1.train.Coordinator
RunOptions = v1.RunOptions
RunMetadata = v1.RunMetadata

#: TensorFlow's preemption errors: a step or a session creation that raises one of
#: these is retried on a new session (monitored_session._PREEMPTION_ERRORS).
PREEMPTION_ERRORS: tuple[type[BaseException], ...] = (
    errors.AbortedError,
    errors.UnavailableError,
)

OutOfRangeError = errors.OutOfRangeError


def default_graph() -> Any:
    """The calling thread's default graph (TensorFlow keeps one per thread)."""
    return v1.get_default_graph()


__all__ = [
    "PREEMPTION_ERRORS",
    "Coordinator",
    "Graph",
    "OutOfRangeError",
    "RunMetadata",
    "RunOptions",
    "Scaffold",
    "Session",
    "SessionRunArgs",
    "SessionRunContext",
    "SessionRunValues",
    "TFSessionCreator",
    "TFSessionRunHook",
    "default_graph",
    "errors",
    "tf",
    "v1",
]
