"""Whether a step gives the same results when its ops run one by one on one thread.

``RunOptions(inter_op_thread_pool=-1)`` runs a step on the calling thread, which
changes the order of ops that do not depend on each other. Results only change
when such ops touch the same variable (or queue, or other resource) and one of
them writes it: a hook fetching a variable beside the op that updates it reads
it before the update on TF's pool and after it on one thread. Such steps, and
steps that fill and drain one staging area (an op would wait for one queued
behind it), keep the pool. Anything not understood counts as unsafe.
"""

from __future__ import annotations

from typing import Any

from ._tf import tf

#: Ops that wait for another op of the step to put something in a shared area.
_WAITS = frozenset({
    "Unstage", "MapUnstage", "MapUnstageNoKey", "OrderedMapUnstage",
    "OrderedMapUnstageNoKey", "StagePeek", "MapPeek", "OrderedMapPeek",
    "QueueDequeue", "QueueDequeueV2", "QueueDequeueMany", "QueueDequeueManyV2",
    "QueueDequeueUpTo", "QueueDequeueUpToV2", "BarrierTakeMany",
    "AccumulatorTakeGradient", "ResourceAccumulatorTakeGradient",
    "SparseAccumulatorTakeGradient",
})  # fmt: skip
_FILLS = frozenset({
    "Stage", "MapStage", "OrderedMapStage", "QueueEnqueue", "QueueEnqueueV2",
    "QueueEnqueueMany", "QueueEnqueueManyV2", "BarrierInsertMany",
    "AccumulatorApplyGradient", "ResourceAccumulatorApplyGradient",
    "SparseAccumulatorApplyGradient",
})  # fmt: skip
#: Ops that only read the resource they are given; any other op may write it.
_READS = frozenset({
    "ReadVariableOp", "ResourceGather", "ResourceGatherNd", "VariableShape",
    "VarIsInitializedOp", "IsVariableInitialized", "Identity", "QueueSize",
    "QueueSizeV2", "QueueIsClosed", "QueueIsClosedV2",
})  # fmt: skip
#: Ops that pass a resource (or a reference) on without touching it.
_FORWARDS = frozenset({
    "Identity", "IdentityN", "Switch", "RefSwitch", "Merge", "RefMerge", "Enter",
    "RefEnter", "Exit", "RefExit", "NextIteration", "RefNextIteration",
    "RefIdentity",
})  # fmt: skip
_CALLS = frozenset({
    "PartitionedCall", "StatefulPartitionedCall", "While", "StatelessWhile", "If",
    "StatelessIf", "Case", "StatelessCase", "RemoteCall", "SymbolicGradient",
})  # fmt: skip


#: Steps with more ops than this keep the pool (no step this big is short).
MAX_OPS = 50_000


def safe_on_caller_thread(graph: Any, leaves: list[Any]) -> bool:
    """Whether the step fetching *leaves* from *graph* may run on one thread."""
    try:
        return _Step(graph, leaves).safe()
    except Exception:
        return False


def _is_handle(tensor: Any) -> bool:
    dtype = tensor.dtype
    return dtype == tf.resource or dtype._is_ref_dtype  # type: ignore[no-any-return]


class _Step:
    """The ops one step runs, and who touches which resource."""

    def __init__(self, graph: Any, leaves: list[Any]) -> None:
        self.graph = graph
        elements = [graph.as_graph_element(leaf) for leaf in leaves]
        #: Fetched references: read after the op producing them, at some point.
        self.fetched_refs = [
            e for e in elements if isinstance(e, tf.Tensor) and e.dtype._is_ref_dtype
        ]
        self.ops = _reachable(
            [e if isinstance(e, tf.Operation) else e.op for e in elements]
        )
        if len(self.ops) > MAX_OPS:
            raise ValueError("too large to look through")
        self._ancestors = _ancestor_bits(self.ops)
        self._bit = {id(op): 1 << i for i, op in enumerate(self.ops)}
        self._sources: dict[int, list[Any]] = {}

    def safe(self) -> bool:
        kinds = {op.type for op in self.ops}
        if kinds & _CALLS:  # what the called functions run counts too
            for function in self.graph.as_graph_def().library.function:
                kinds.update(node.op for node in function.node_def)
        if kinds & _WAITS and kinds & _FILLS:
            return False
        return all(self._ordered(users) for users in self._users().values())

    def _users(self) -> dict[int, list[tuple[Any, bool]]]:
        """For each resource: the ops touching it, and whether each may write."""
        users: dict[int, list[tuple[Any, bool]]] = {}
        for op in self.ops:
            if op.type in _FORWARDS and all(_is_handle(t) for t in op.outputs):
                continue
            writes = op.type not in _READS
            for tensor in op.inputs:
                if _is_handle(tensor):
                    for source in self._source_ops(tensor):
                        users.setdefault(id(source), []).append((op, writes))
        for tensor in self.fetched_refs:
            for source in self._source_ops(tensor):
                users.setdefault(id(source), []).append((_FetchRead(tensor.op), False))
        return users

    def _source_ops(self, tensor: Any) -> list[Any]:
        """The ops creating the resource *tensor* refers to (through forwarders)."""
        op = tensor.op
        if id(op) not in self._sources:
            handles = [t for t in op.inputs if _is_handle(t)]
            self._sources[id(op)] = (
                [s for t in handles for s in self._source_ops(t)] if handles else [op]
            )
        return self._sources[id(op)]

    def _ordered(self, users: list[tuple[Any, bool]]) -> bool:
        """Whether every write to one resource is ordered with its other uses."""
        for i, (a, a_writes) in enumerate(users):
            for b, b_writes in users[i + 1 :]:
                if not (a_writes or b_writes) or a is b:
                    continue
                if not self._before(a, b) and not self._before(b, a):
                    return False
        return True

    def _before(self, a: Any, b: Any) -> bool:
        """Whether op *a* surely runs before *b* (a fetch read surely runs last)."""
        if isinstance(a, _FetchRead):
            return False
        bit = self._bit[id(a)]
        if isinstance(b, _FetchRead):
            return a is b.after or bool(self._ancestors[id(b.after)] & bit)
        return bool(self._ancestors[id(b)] & bit)


class _FetchRead:
    """A fetched reference, read some time after the op that produced it."""

    __slots__ = ("after",)

    def __init__(self, after: Any) -> None:
        self.after = after


def _ancestor_bits(ops: list[Any]) -> dict[int, int]:
    """For each op of *ops* (closed under inputs), the bits of the ops it needs.

    Bit i stands for ``ops[i]``; one pass in dependency order, so the cost is
    about len(ops) big-integer ORs.
    """
    bit = {id(op): 1 << i for i, op in enumerate(ops)}
    ancestors: dict[int, int] = {}
    for op in _in_dependency_order(ops):
        bits = 0
        for parent in _parents(op):  # a loop's back edge is left out: fewer
            # known orderings only ever make a step look less safe
            bits |= ancestors.get(id(parent), 0) | bit[id(parent)]
        ancestors[id(op)] = bits
    return ancestors


def _parents(op: Any) -> list[Any]:
    return [t.op for t in op.inputs] + list(op.control_inputs)


def _in_dependency_order(ops: list[Any]) -> list[Any]:
    """*ops*, each after every op it depends on (iterative depth-first search)."""
    order: list[Any] = []
    done: set[int] = set()
    started: set[int] = set()  # a loop's back edge leads to one of these: skipped
    for root in ops:
        stack = [(root, False)]
        while stack:
            op, expanded = stack.pop()
            if expanded:
                done.add(id(op))
                order.append(op)
            elif id(op) not in started:
                started.add(id(op))
                stack.append((op, True))
                stack += [(p, False) for p in _parents(op) if id(p) not in started]
    return order


def _reachable(roots: list[Any]) -> list[Any]:
    """*roots* and every op they depend on (data and control inputs)."""
    seen: dict[int, Any] = {}
    todo = list(roots)
    while todo:
        op = todo.pop()
        if id(op) in seen:
            continue
        seen[id(op)] = op
        todo += [t.op for t in op.inputs]
        todo += op.control_inputs
    return list(seen.values())
