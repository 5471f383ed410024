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


# -- Session.run's own pieces, for the steps RunCache runs itself (_run_cache.py) ----


def fetch_plan(sess: Any, fetches: Any) -> tuple[Any, list[Any], list[Any]]:
    """What `Session.make_callable` builds for *fetches*, once.

    Returns TF's fetch handler (its ``build_results(sess, values)`` shapes a
    step's values as ``Session.run`` returns them), the fetched outputs and the
    target ops. Raises what ``Session.run`` raises for bad fetches.
    """
    from tensorflow.python.client import session

    sess._extend_graph()  # the C session sees ops added since the last run
    handler = session._FetchHandler(sess.graph, fetches, {})
    fetch_list = [t._as_tf_output() for t in handler.fetches()]
    target_list = [op._c_op for op in handler.targets()]
    return handler, fetch_list, target_list


def tf_output(tensor: Any) -> Any:
    """*tensor* as `session_run` takes it in *feeds*."""
    return tensor._as_tf_output()


def options_buffer(options: Any) -> Any:
    """*options* serialized for `session_run`; build it once: it is never freed."""
    from tensorflow.python.client import pywrap_tf_session

    return pywrap_tf_session.TF_NewBufferFromString(options.SerializeToString())


def session_run(
    sess: Any, options: Any, feeds: Any, fetch_list: Any, target_list: Any
) -> Any:
    """One ``TF_SessionRun``, its errors rewritten as ``Session.run`` rewrites them."""
    call = sess._call_tf_sessionrun
    return sess._do_call(call, options, feeds, fetch_list, target_list, None)


def feed_converter(graph: Any, tensor: Any) -> Any:
    """How ``Session.run`` converts a value fed to *tensor* of *graph*.

    The returned function gives the array ``Session.run`` would feed, or None
    where ``Session.run`` raises or takes the value some other way (a tf.Tensor,
    a TensorHandle, an int the dtype cannot hold, a value numpy cannot convert,
    a shape the tensor cannot take, a tensor that may not be fed): the caller
    then leaves the step to ``Session.run``, whose error is TF's own.
    """
    import numpy as np
    from tensorflow.python.client import session
    from tensorflow.python.ops import session_ops

    dtype = tensor.dtype.as_numpy_dtype
    numeric = np.issubdtype(dtype, np.number)  # numpy_compat.np_asarray's rules
    numpy2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0.dev0"
    shape = tensor.get_shape()
    dims = None if shape.rank is None else tuple(shape.as_list())
    taken_otherwise = (tf.Tensor, session_ops.TensorHandle)
    as_dtype = session._convert_to_numpy_obj

    def convert(value: Any) -> Any:
        if isinstance(value, taken_otherwise):
            return None
        try:
            if isinstance(value, int) and as_dtype(dtype, value) != value:
                return None
            if not numpy2:
                array = np.asarray(value, dtype=dtype)
            elif numeric:
                # astype's copy=False is TF's copy=None: a copy only if needed.
                array = np.asarray(value, copy=None).astype(dtype, copy=False)
            else:
                array = np.asarray(value, dtype=dtype, copy=None)
        except Exception:
            return None
        if dims is not None and not _fits(dims, array.shape):
            return None
        return array if graph.is_feedable(tensor) else None

    return convert


def _fits(dims: tuple[int | None, ...], shape: tuple[int, ...]) -> bool:
    """``TensorShape(dims).is_compatible_with(shape)``, for a known rank."""
    if len(dims) != len(shape):
        return False
    for want, got in zip(dims, shape, strict=True):
        if want is not None and want != got:
            return False
    return True


def unfinalize_graph(graph: Any) -> None:
    """Let ops be added to *graph* again (``Graph._unsafe_unfinalize``).

    A session that finalized a graph the user had not finalized undoes it on
    close, so the graph can be used by the next session, as TensorFlow's own
    tests do.
    """
    graph._unsafe_unfinalize()


def session_closed(sess: Any) -> bool:
    """Whether `close()` was called on *sess* (``Session._closed``; False if unknown).

    After it, TensorFlow raises a plain ``RuntimeError`` from any run.
    """
    return bool(getattr(sess, "_closed", False))


def make_callable_from_options(sess: Any, options: Any) -> Any:
    """A C++ callable for `CallableOptions` (``Session._make_callable_from_options``).

    Called with the feeds' values in ``options.feed`` order, it runs the targets
    without ``Session.run``'s Python overhead, as TF's own QueueRunner does.
    """
    return sess._make_callable_from_options(options)


_QueueRunner = v1.train.queue_runner.QueueRunner


def plain_queue_runner(runner: Any) -> bool:
    """Whether *runner* is a TF `QueueRunner` running TF's own enqueue loop.

    True unless a subclass overrides ``QueueRunner._run`` (the loop) or
    `create_threads`, so a caller may run that loop itself.
    """
    kind = type(runner)
    return (
        isinstance(runner, _QueueRunner)
        and kind._run is _QueueRunner._run
        and kind.create_threads is _QueueRunner.create_threads
    )


_SessionManager: Any = v1.train.SessionManager


class _ReportingSessionManager(_SessionManager):  # type: ignore[misc]
    """TF's SessionManager, remembering whether it restored a checkpoint."""

    restored = False

    def _restore_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        sess, restored = super()._restore_checkpoint(*args, **kwargs)
        self.restored = restored
        return sess, restored


def session_manager(**kwargs: Any) -> Any:
    """TF's `SessionManager` (*kwargs* as its constructor's), reporting restores.

    After each ``prepare_session``, its ``restored`` attribute says whether that
    session was restored from a checkpoint (``SessionManager._restore_checkpoint``
    returns it; the public method does not).
    """
    return _ReportingSessionManager(**kwargs)


def try_ready_session(manager: Any, master: str, config: Any) -> tuple[Any, Any]:
    """One attempt of ``SessionManager.wait_for_session``, without its sleep.

    Opens a session on *manager*'s graph, runs its local init op when allowed
    and checks that the model is ready. Returns ``(session, None)``, or
    ``(None, message)`` with the session closed and why it is not ready.
    """
    sess = v1.Session(master, graph=manager._graph, config=config)
    try:
        ok, message = manager._try_run_local_init_op(sess)
        if ok:
            ok, message = manager._model_ready(sess)
            if ok:
                return sess, None
    except BaseException:
        manager._safe_close(sess)
        raise
    manager._safe_close(sess)
    return None, message


# -- SavedModels (``serve --saved-model``, asyncsess/_saved_model.py) ------------------


def saved_model_loader(export_dir: str) -> Any:
    """TensorFlow's ``SavedModelLoader`` for *export_dir* (v1.saved_model.load's).

    Its pieces (``get_meta_graph_def_from_tags``, ``restore_variables``,
    ``run_init_ops``) let a session creator restore into a graph imported once.
    """
    from tensorflow.python.saved_model import loader_impl

    return loader_impl.SavedModelLoader(export_dir)


def datatype_name(datatype: int) -> str:
    """The ``DataType`` enum's name for *datatype* (``1`` -> ``"DT_FLOAT"``)."""
    from tensorflow.core.framework import types_pb2

    return str(types_pb2.DataType.Name(datatype))


__all__ = [
    "FULL_TRACE",
    "PREEMPTION_ERRORS",
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
    "datatype_name",
    "default_graph",
    "errors",
    "feed_converter",
    "fetch_plan",
    "global_step_read",
    "make_callable_from_options",
    "meta_graph_def",
    "options_buffer",
    "plain_queue_runner",
    "saved_model_loader",
    "session_closed",
    "session_interface",
    "session_manager",
    "session_run",
    "tf",
    "tf_output",
    "try_ready_session",
    "unfinalize_graph",
    "v1",
    "write_graph",
]
