"""Whether a step is simple enough to run on its calling thread, with the same results.

``RunOptions(inter_op_thread_pool=-1)`` runs a step's ops one by one on the
calling thread (the session's worker thread here). TensorFlow says to use it
only for simple graphs, and it changes more than speed: ops that do not depend on
each other run in another order, an async op's waiter goes on in the thread that
wakes it, and a ``py_func`` runs on the worker thread. So a step qualifies only
if every op it runs is either stateless (not a function call, a loop or a
``py_func``) or one of a few stateful kinds that cannot tell the order apart:
resource-variable ops, random ops, asserts and prints. Every write to a
variable must also be ordered, by data or control dependencies, with every
other use of that variable in the step; otherwise a read beside an update could
see the update where TF's pool would let it run first. Anything else keeps
TF's inter-op pool.
"""

from __future__ import annotations

from typing import Any

from ._tf import tf

#: Steps with more ops than this keep the pool (no step this big is short).
MAX_OPS = 5_000

#: Stateful ops allowed, because their effects cannot depend on op order:
#: variables (with the ordering check below), random numbers (each op has its
#: own generator), and checks and prints.
_VARIABLE_READS = frozenset({
    "ReadVariableOp", "ResourceGather", "ResourceGatherNd", "VariableShape",
    "VarIsInitializedOp",
})  # fmt: skip
_VARIABLE_WRITES = frozenset({
    "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
    "ResourceStridedSliceAssign",
})  # fmt: skip
_WRITE_PREFIXES = ("ResourceApply", "ResourceSparseApply", "ResourceScatter")
_ORDER_FREE = frozenset({
    "VarHandleOp", "RandomUniform", "RandomUniformInt", "RandomStandardNormal",
    "TruncatedNormal", "ParameterizedTruncatedNormal", "RandomShuffle",
    "Multinomial", "RandomGamma", "RandomPoisson", "RandomPoissonV2", "Assert",
    "Print", "PrintV2",
})  # fmt: skip
#: Stateless ops that still may not: they run functions, loops or Python.
_NOT_SIMPLE = frozenset({
    "PartitionedCall", "StatefulPartitionedCall", "StatelessIf", "StatelessWhile",
    "StatelessCase", "If", "While", "Case", "SymbolicGradient", "RemoteCall",
    "PyFunc", "PyFuncStateless", "EagerPyFunc", "Enter", "RefEnter", "Exit",
    "RefExit", "NextIteration", "RefNextIteration", "LoopCond", "GetElementAtIndex",
})  # fmt: skip

#: Per op type: (stateful, runs functions), read from its OpDef once.
_kinds: dict[str, tuple[bool, bool]] = {}


def safe_on_caller_thread(
    graph: Any, leaves: list[Any], feeds: list[Any] | None = None
) -> bool:
    """Whether the step fetching *leaves* (feeding *feeds*) may run on one thread.

    *leaves* and *feeds* are graph elements or their names. Anything this
    cannot resolve or recognise counts as unsafe.
    """
    try:
        return _Step(graph, leaves, feeds or []).safe()
    except Exception:
        return False


class _Step:
    """The ops one step runs (fed tensors cut the graph, as TF prunes it)."""

    def __init__(self, graph: Any, leaves: list[Any], feeds: list[Any]) -> None:
        elements = [graph.as_graph_element(leaf) for leaf in leaves]
        self.fed = {id(graph.as_graph_element(feed)) for feed in feeds}
        roots = [e if isinstance(e, tf.Operation) else e.op for e in elements]
        self.ops = self._reachable(roots)

    def _inputs(self, op: Any) -> list[Any]:
        """The ops *op* waits for in this step."""
        parents = [t.op for t in op.inputs if id(t) not in self.fed]
        return parents + list(op.control_inputs)

    def _reachable(self, roots: list[Any]) -> list[Any]:
        seen: dict[int, Any] = {}
        todo = list(roots)
        while todo:
            op = todo.pop()
            if id(op) not in seen:
                seen[id(op)] = op
                if len(seen) > MAX_OPS:
                    raise ValueError("too large to look through")
                todo += self._inputs(op)
        return list(seen.values())

    def safe(self) -> bool:
        if not all(_simple(op) for op in self.ops):
            return False
        users: dict[bytes, list[tuple[Any, bool]]] = {}
        for op in self.ops:
            if op.type == "VarHandleOp":
                continue
            for tensor in op.inputs:
                if tensor.dtype != tf.resource:
                    continue
                if id(tensor) in self.fed or tensor.op.type != "VarHandleOp":
                    return False  # a handle from elsewhere may alias anything
                users.setdefault(_variable(tensor.op), []).append((op, _writes(op)))
        if not any(len(u) > 1 and any(w for _, w in u) for u in users.values()):
            return True
        ancestors, bit = self._ancestors()
        return all(_ordered(u, ancestors, bit) for u in users.values())

    def _ancestors(self) -> tuple[dict[int, int], dict[int, int]]:
        """For each op, the ops it surely runs after, as bits (a DAG here)."""
        bit = {id(op): 1 << i for i, op in enumerate(self.ops)}
        ancestors: dict[int, int] = {}
        for op in _in_dependency_order(self.ops, self._inputs):
            mine = 0
            for parent in self._inputs(op):
                mine |= ancestors[id(parent)] | bit[id(parent)]
            ancestors[id(op)] = mine
        return ancestors, bit


def _simple(op: Any) -> bool:
    kind = op.type
    if kind in _NOT_SIMPLE or "Dataset" in kind:
        return False
    known = _kinds.get(kind)
    if known is None:
        op_def = op.op_def
        runs_functions = any(a.type in ("func", "list(func)") for a in op_def.attr)
        known = _kinds[kind] = (bool(op_def.is_stateful), runs_functions)
    stateful, runs_functions = known
    if runs_functions:  # For, MapDefun, ...: what they run is not looked at
        return False
    if not stateful:
        return not any(t.dtype._is_ref_dtype for t in op.outputs)
    return kind in _ORDER_FREE or kind in _VARIABLE_READS or _writes(op)


def _writes(op: Any) -> bool:
    kind = op.type
    return kind in _VARIABLE_WRITES or kind.startswith(_WRITE_PREFIXES)


def _variable(handle_op: Any) -> bytes:
    """What names a variable: its shared name, whatever the container.

    Handles in the "" and "localhost" containers, and handles with no shared
    name, can be one variable: grouping too much only makes the check stricter.
    """
    return handle_op.get_attr("shared_name") or b""  # type: ignore[no-any-return]


def _ordered(
    users: list[tuple[Any, bool]], ancestors: dict[int, int], bit: dict[int, int]
) -> bool:
    """Whether every write to one variable is ordered with its other uses."""
    for a, writes in users:
        if not writes:
            continue
        for b, _ in users:
            if a is b:
                continue
            if not (ancestors[id(b)] & bit[id(a)] or ancestors[id(a)] & bit[id(b)]):
                return False
    return True


def _in_dependency_order(ops: list[Any], inputs: Any) -> list[Any]:
    """*ops* (a DAG closed under *inputs*), each after every op it depends on."""
    order: list[Any] = []
    started: set[int] = set()
    for root in ops:
        stack = [(root, False)]
        while stack:
            op, expanded = stack.pop()
            if expanded:
                order.append(op)
            elif id(op) not in started:
                started.add(id(op))
                stack.append((op, True))
                stack += [(p, False) for p in inputs(op) if id(p) not in started]
    return order
