"""A SavedModel in a graph-mode asyncsess session: loading, signatures, predict.

TensorFlow 1 SavedModels and TensorFlow 2 / Keras 3 exports (``tf.saved_model.save``,
``model.export``) load alike: their ``serve`` MetaGraph is imported into a graph
once, and a `MonitoredSession` restores its variables and runs its init ops
(again after a preemption, through its session creator).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
from google.protobuf import json_format

from ._batcher import Batcher
from ._creators import SessionCreator
from ._exceptions import BatchQueueFullError, collapse
from ._json_tensor import TensorSpec
from ._session import MonitoredSession
from ._signature import (
    PREDICT_METHOD,
    ServingError,
    Signature,
    TensorInfo,
    find_signature,
)
from ._tf import Graph, datatype_name, errors, saved_model_loader, tf, v1
from ._worker import run_in_session_thread

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from ._batch_stats import BatchStats

logger = logging.getLogger("asyncsess.serve")

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
SERVE_TAGS = ("serve",)
# SavedModel's own entries of the signature map (TF2's "__saved_model_init_op"
# names an op, not tensors): not signatures to serve.
_INTERNAL = "__saved_model"


def is_saved_model(path: str) -> bool:
    """Whether *path* is a SavedModel directory (it holds ``saved_model.pb``)."""
    return any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES)


@dataclass(frozen=True)
class SignaturePlan:
    """How one signature runs: the tensors fed and fetched, and whether it batches.

    ``batchable``: every input and output is batch-major (first dimension
    unknown, so any row count), so rows of several requests can share a step.
    """

    feeds: Mapping[str, Any]
    fetches: Mapping[str, Any]
    batchable: bool


@dataclass(frozen=True)
class ImportedModel:
    """A SavedModel's MetaGraph imported into a graph of its own (no session yet)."""

    path: str
    tags: tuple[str, ...]
    graph: Graph
    loader: Any
    saver: Any
    signatures: Mapping[str, Signature]
    plans: Mapping[str, SignaturePlan]


def import_saved_model(path: str, tags: tuple[str, ...] = SERVE_TAGS) -> ImportedModel:
    """Import the MetaGraph of *path* tagged *tags* into a new, finalized graph.

    Blocking (reads files, builds the graph): run it off the event loop. A
    signature input's tensor takes a value of any shape, as TensorFlow Serving
    feeds it (see `relax_inputs`).

    Raises:
      OSError: *path* holds no SavedModel.
      RuntimeError: it has no MetaGraph tagged *tags* (TensorFlow's message).
    """
    loader = saved_model_loader(path)
    meta_graph = loader.get_meta_graph_def_from_tags(list(tags))
    # The loader imports this very proto (load_graph re-reads it by tags), so
    # relaxing it here is what gets imported.
    fed = relax_inputs(meta_graph)
    graph = Graph()
    saver, _ = loader.load_graph(graph, list(tags))
    served = {
        name: sig
        for name, sig in meta_graph.signature_def.items()
        if not name.startswith(_INTERNAL)
    }
    signatures = {name: _signature(name, sig) for name, sig in served.items()}
    plans = {
        name: _plan(graph, sig, fed) for name, sig in served.items() if _dense(sig)
    }
    graph.finalize()
    return ImportedModel(path, tuple(tags), graph, loader, saver, signatures, plans)


def relax_inputs(meta_graph: Any) -> dict[str, str]:
    """Let every signature input take a value of any shape; the tensors to feed.

    TensorFlow Serving feeds a request's tensors whatever their static shape
    (its C++ session does not check it; ``Session.run`` does). So a signature
    input that is a ``Placeholder`` loses its static shape, and any other
    tensor gets a ``PlaceholderWithDefault`` of unknown shape in front of its
    consumers: fed, it replaces the tensor; not fed, it passes it on, so
    signatures that feed further up still compute it.

    Returns:
      ``{signature input tensor name: name of the tensor to feed}``.
    """
    graph_def = meta_graph.graph_def
    nodes = {node.name: node for node in graph_def.node}
    fed: dict[str, str] = {}
    for signature in meta_graph.signature_def.values():
        for info in signature.inputs.values():
            if info.WhichOneof("encoding") != "name" or info.name in fed:
                continue
            op_name, _, index = info.name.partition(":")
            node = nodes.get(op_name)
            if node is None:
                continue
            if node.op == "Placeholder":
                _unknown_shape(node)
                fed[info.name] = info.name
            else:
                fed[info.name] = _pass_through(graph_def, nodes, info, int(index or 0))
    return fed


def _unknown_shape(node: Any) -> None:
    shape = node.attr["shape"].shape
    shape.Clear()
    shape.unknown_rank = True
    if "_output_shapes" in node.attr:
        del node.attr["_output_shapes"]


def _pass_through(graph_def: Any, nodes: dict[str, Any], info: Any, index: int) -> str:
    """Put a PlaceholderWithDefault between tensor *info* and its consumers."""
    op_name = info.name.partition(":")[0]
    name = f"{op_name}/asyncsess_feed_{index}"
    while name in nodes:
        name += "_"
    source = op_name if index == 0 else f"{op_name}:{index}"
    aliases = {source, f"{op_name}:{index}"}
    for node in graph_def.node:
        for i, consumed in enumerate(node.input):
            if consumed in aliases:
                node.input[i] = name
    feed = graph_def.node.add(name=name, op="PlaceholderWithDefault", input=[source])
    feed.attr["dtype"].type = info.dtype
    feed.attr["shape"].shape.unknown_rank = True
    nodes[name] = feed
    return f"{name}:0"


def _dense(signature_def: Any) -> bool:
    """Whether every input and output is a plain tensor (no sparse/composite)."""
    infos = [*signature_def.inputs.values(), *signature_def.outputs.values()]
    return all(info.WhichOneof("encoding") == "name" for info in infos)


def tensor_spec(info: Any) -> TensorSpec:
    """The `TensorSpec` of a ``TensorInfo`` proto (dtype, static shape, DT_ name)."""
    try:
        dtype = np.dtype(tf.as_dtype(info.dtype).as_numpy_dtype)
    except (TypeError, ValueError):  # DT_RESOURCE, DT_VARIANT, ...
        dtype = np.dtype(object)
    proto = info.tensor_shape
    shape = (
        None
        if proto.unknown_rank
        else tuple(None if d.size < 0 else int(d.size) for d in proto.dim)
    )
    return TensorSpec(dtype=dtype, shape=shape, dtype_name=datatype_name(info.dtype))


def _signature(name: str, signature_def: Any) -> Signature:
    def infos(protos: Any) -> dict[str, TensorInfo]:
        return {
            alias: TensorInfo(
                info.name or f"<{info.WhichOneof('encoding')}>", tensor_spec(info)
            )
            for alias, info in sorted(protos.items())
        }

    defaults = dict(signature_def.defaults.items())
    return Signature(
        name=name,
        inputs=infos(signature_def.inputs),
        outputs=infos(signature_def.outputs),
        method_name=signature_def.method_name or PREDICT_METHOD,
        defaults={k: tf.make_ndarray(v) for k, v in defaults.items()},
        defaults_metadata={
            k: json_format.MessageToDict(v, preserving_proto_field_names=True)
            for k, v in defaults.items()
        },
    )


def _plan(graph: Graph, signature_def: Any, fed: Mapping[str, str]) -> SignaturePlan:
    def tensor(name: str) -> Any:
        return graph.get_tensor_by_name(name)

    feeds = {
        alias: tensor(fed.get(info.name, info.name))
        for alias, info in signature_def.inputs.items()
    }
    fetches = {
        alias: tensor(info.name)
        for alias, info in sorted(signature_def.outputs.items())
    }
    batchable = all(
        _batch_major(info.tensor_shape, output=False)
        for info in signature_def.inputs.values()
    ) and all(
        _batch_major(info.tensor_shape, output=True)
        for info in signature_def.outputs.values()
    )
    return SignaturePlan(feeds, fetches, batchable and bool(fetches))


def _batch_major(shape: Any, *, output: bool) -> bool:
    """Whether a tensor of static *shape* may hold any number of rows.

    An input of unknown rank may (the request's rows decide); an output must
    say so, since `Batcher` splits every fetched tensor along its first axis.
    """
    if shape.unknown_rank:
        return not output
    return len(shape.dim) >= 1 and shape.dim[0].size < 0


class SavedModelCreator(SessionCreator):
    """Creates the session of an `ImportedModel`: restores variables, runs init ops.

    What ``tf.compat.v1.saved_model.load`` does after importing the graph, on
    the session's worker thread; a `MonitoredSession` calls it again to
    recreate its session after a preemption.

    Cancellation: see `asyncsess.SessionCreator`.
    """

    def __init__(self, model: ImportedModel, config: Any = None) -> None:
        self.model = model
        self.config = config or v1.ConfigProto(allow_soft_placement=True)

    def _create(self) -> Any:
        model = self.model
        sess = v1.Session(graph=model.graph, config=self.config)
        try:
            model.loader.restore_variables(sess, model.saver)
            model.loader.run_init_ops(sess, list(model.tags))
        except BaseException:
            sess.close()
            raise
        return sess

    async def create_session(self) -> Any:
        """Open a session on the model's graph with its variables restored.

        Cancellation: see `asyncsess.SessionCreator`.
        """
        return await run_in_session_thread(self._create)

    def __repr__(self) -> str:
        return f"SavedModelCreator({self.model.path!r})"


class SavedModelVersion:
    """One version of a SavedModel, served: its signatures and ``predict``.

    Predictions whose feeds share a first dimension go through the version's
    `Batcher` (when batching); others run as a step of their own.

    Cancellation: `predict` is cancelled as `Batcher.run` or
    `MonitoredSession.run_without_hooks`; the session stays usable.
    """

    def __init__(
        self,
        model: ImportedModel,
        version: int,
        session: MonitoredSession,
        batcher: Batcher | None,
    ) -> None:
        self.model = model
        self._version = version
        self.session = session
        self.batcher = batcher

    @property
    def version(self) -> int:
        """The version number."""
        return self._version

    @property
    def signatures(self) -> Mapping[str, Signature]:
        """Every signature of the MetaGraph, by name."""
        return self.model.signatures

    async def predict(
        self, signature_name: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run *signature_name* on *inputs* (by alias); its outputs by alias.

        Raises:
          ServingError: an unknown signature, wrong input aliases, a signature
            with sparse tensors, a full batch queue (UNAVAILABLE).
          tf.errors.OpError: the step's error (a wrong shape, say).

        Cancellation: see the class docstring.
        """
        signature = find_signature(self.signatures, signature_name)
        signature.check_predict(inputs)
        plan = self.model.plans.get(signature.name)
        if plan is None:
            raise ServingError(
                "UNIMPLEMENTED",
                f"Signature {signature.name!r} has sparse or composite tensors; "
                "the REST API feeds and fetches dense tensors only.",
            )
        feeds = {plan.feeds[alias]: value for alias, value in inputs.items()}
        for alias, value in signature.defaults.items():
            feeds.setdefault(plan.feeds[alias], value)
        if self.batcher is not None and plan.batchable and _rows(feeds):
            try:
                result = await self.batcher.run(plan.fetches, feeds)
            except BatchQueueFullError as exc:
                raise ServingError("UNAVAILABLE", str(exc)) from None
            except (ValueError, TypeError, errors.OpError):
                # The batch failed, maybe for another caller's rows: this
                # request's own step gives its own answer (or error).
                logger.debug("A batched step failed; running the request alone")
            else:
                return dict(result)
        return dict(await self.session.run_without_hooks(plan.fetches, feeds))


def _rows(feeds: Mapping[Any, Any]) -> int:
    """The row count all *feeds* share (their first dimension), or 0 if none."""
    counts = {np.shape(value)[0] if np.ndim(value) else -1 for value in feeds.values()}
    if len(counts) != 1:
        return 0
    rows = counts.pop()
    return max(rows, 0)


@asynccontextmanager
async def open_saved_model(
    path: str,
    *,
    version: int = 1,
    batching: bool = True,
    max_batch_size: int = 32,
    batch_timeout_secs: float = 0.001,
    max_enqueued: int | None = None,
    stats: BatchStats | None = None,
    tags: tuple[str, ...] = SERVE_TAGS,
) -> AsyncIterator[SavedModelVersion]:
    """Load the SavedModel at *path* and serve it for the time of the block.

    The graph is imported on a worker thread (off the event loop), then a
    `MonitoredSession` opens on it and, with *batching*, a `Batcher` with
    *max_batch_size*, *batch_timeout_secs*, *max_enqueued* and *stats*.

    Raises:
      OSError, RuntimeError, tf.errors.OpError: the SavedModel does not load.

    Cancellation: the graph import runs to its end on its thread; cancelled
    while open, the batcher and session close as on leaving the block.
    """
    model = await anyio.to_thread.run_sync(import_saved_model, path, tags)
    with model.graph.as_default():
        session = MonitoredSession(session_creator=SavedModelCreator(model))
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(session)
            batcher = None
            if batching:
                batcher = await stack.enter_async_context(
                    Batcher(
                        session,
                        max_batch_size=max_batch_size,
                        batch_timeout_secs=batch_timeout_secs,
                        max_enqueued=max_enqueued,
                        stats=stats,
                    )
                )
            yield SavedModelVersion(model, version, session, batcher)
    except BaseExceptionGroup as group:  # the batcher's task group wraps errors
        error = collapse(group)
        if error is group:
            raise
        raise error from None
