"""A SavedModel's MetaGraph imported for serving: signatures, specs, feeds, fetches.

`import_saved_model` reads a TensorFlow 1 SavedModel or a TensorFlow 2 / Keras 3
export and imports its ``serve`` MetaGraph into a graph of its own, with every
signature input free to take any shape (`relax_inputs`), as TensorFlow Serving
feeds them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf import json_format

from ._json_tensor import TensorSpec
from ._signature import PREDICT_METHOD, Signature, TensorInfo
from ._tf import Graph, datatype_name, saved_model_loader, tf

if TYPE_CHECKING:
    from collections.abc import Mapping

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
