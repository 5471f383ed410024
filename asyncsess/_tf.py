"""The only module that imports TensorFlow: a friendly ImportError, TF names."""

from __future__ import annotations

from typing import Any

try:
    import tensorflow as tf
    from tensorflow.core.protobuf.config_pb2 import (  # Session.make_callable's
        CallableOptions as CallableOptions,
    )
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

# -- names the standard hooks need (asyncsess.hooks) ---------------------------------
# TensorFlow's own timer, so every-N-secs/steps triggers match TF's to the step.
SecondOrStepTimer = v1.train.SecondOrStepTimer
# TF's own class, so `except` catches what either NanTensorHook raises.
NanLossDuringTrainingError = v1.train.NanLossDuringTrainingError
FileWriterCache = v1.summary.FileWriterCache
FULL_TRACE = RunOptions.FULL_TRACE
# Checkpoint and summary hooks: TF's protos and listener class, so files match TF's.
Summary = v1.Summary
SessionLog = v1.SessionLog
TFCheckpointSaverListener = v1.train.CheckpointSaverListener
write_graph = tf.io.write_graph


def global_step_read(graph: Any = None) -> Any:
    """The graph's global-step read tensor (created once), or None without a step.

    The same tensor TF's hooks fetch: a copy of the value, safe to fetch alongside
    ops that increment the step.
    """
    from tensorflow.python.training import training_util

    return training_util._get_or_create_global_step_read(graph)


def as_graph_element(obj: Any) -> Any:
    """TF hooks' rule turning a tensor or tensor name into a default-graph element."""
    from tensorflow.python.training import basic_session_run_hooks

    return basic_session_run_hooks._as_graph_element(obj)


def chrome_trace(step_stats: Any, show_dataflow: bool, show_memory: bool) -> str:
    """A Chrome trace (JSON text) of a step's ``RunMetadata.step_stats``."""
    from tensorflow.python.client import timeline

    return str(
        timeline.Timeline(step_stats).generate_chrome_trace_format(
            show_dataflow=show_dataflow, show_memory=show_memory
        )
    )


def meta_graph_def(graph: Any, saver_def: Any) -> Any:
    """The MetaGraphDef TF's CheckpointSaverHook adds to the event file."""
    from tensorflow.python.framework import meta_graph

    return meta_graph.create_meta_graph_def(
        graph_def=graph.as_graph_def(add_shapes=True), saver_def=saver_def
    )


def session_interface() -> type:
    """TF's abstract session base, which `Saver.save` requires of its session."""
    from tensorflow.python.client import session

    return session.SessionInterface  # type: ignore[no-any-return]


def default_graph() -> Any:
    """The calling thread's default graph (TensorFlow keeps one per thread)."""
    return v1.get_default_graph()


__all__ = [
    "PREEMPTION_ERRORS",
    "FULL_TRACE",
    "Coordinator",
    "FileWriterCache",
    "Graph",
    "NanLossDuringTrainingError",
    "OutOfRangeError",
    "RunMetadata",
    "RunOptions",
    "Scaffold",
    "SecondOrStepTimer",
    "Session",
    "SessionLog",
    "SessionRunArgs",
    "SessionRunContext",
    "SessionRunValues",
    "Summary",
    "TFCheckpointSaverListener",
    "TFSessionCreator",
    "TFSessionRunHook",
    "as_graph_element",
    "default_graph",
    "errors",
    "global_step_read",
    "meta_graph_def",
    "session_interface",
    "tf",
    "v1",
    "write_graph",
]
