"""The hook dispatcher: classifies hooks once, then calls them for each phase.

At construction every hook is sorted into async (asyncsess.SessionRunHook) or sync
(TensorFlow's SessionRunHook), and for each phase we record only the hooks that
override it, so a phase nobody overrides costs nothing. Async hooks of one phase
run concurrently (a task group only when more than one runs); sync hooks run in
list order on the session's worker thread, batched with the device step.
"""

from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import collapse, explain_finalized, tag_source
from ._graph import _drive, in_graph
from ._hook import SessionRunHook, describe, hook_name
from ._tf import OutOfRangeError, SessionRunValues, TFSessionRunHook

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._worker import WorkerThread

PHASES = ("begin", "after_create_session", "before_run", "after_run", "end", "on_error")


@dataclass(frozen=True, slots=True)
class HookEntry:
    """One hook, classified once."""

    hook: Any
    name: str
    is_async: bool
    #: The phases this hook's class overrides.
    phases: frozenset[str]
    #: Position of this hook's request among the before_run requesters, or -1.
    request_slot: int
    overlap: bool


def _overrides(hook: Any, base: type, name: str) -> bool:
    method = getattr(type(hook), name, None)
    return method is not None and method is not getattr(base, name, None)


def classify(hooks: Sequence[Any]) -> list[HookEntry]:
    """Classify *hooks*, raising TypeError for anything that is not a hook."""
    entries: list[HookEntry] = []
    slot = 0
    for hook in hooks:
        if isinstance(hook, SessionRunHook):
            base: type = SessionRunHook
            is_async = True
        elif isinstance(hook, TFSessionRunHook):
            base, is_async = TFSessionRunHook, False
        else:
            raise TypeError(
                f"Hook {describe(hook)} is neither an asyncsess.SessionRunHook nor a "
                "tf.compat.v1.train.SessionRunHook; subclass one of them."
            )
        phases = frozenset(p for p in PHASES if _overrides(hook, base, p))
        request_slot = -1
        if "before_run" in phases:
            request_slot, slot = slot, slot + 1
        overlap = bool(getattr(hook, "overlap_after_run", False)) and is_async
        entries.append(
            HookEntry(hook, hook_name(hook), is_async, phases, request_slot, overlap)
        )
    return entries


async def _call_async(entry: HookEntry, phase: str, graph: Any, *args: Any) -> Any:
    """Call an async hook's method inside the graph, tagging what it raises."""
    try:
        result = getattr(entry.hook, phase)(*args)
        if inspect.isawaitable(result):
            result = await in_graph(result, graph)
        return result
    except BaseException as exc:
        better = _tagged(exc, entry, phase)
        if better is exc:
            raise
        raise better from exc


class _Siblings:
    """Hooks of one phase started as tasks beside the one the caller drives."""

    __slots__ = ("done", "errors", "left", "scopes")

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = anyio.Event()
        self.errors: list[BaseException] = []
        self.scopes: list[anyio.CancelScope] = []

    def cancel(self) -> None:
        for scope in self.scopes:
            scope.cancel()


async def call_phase(
    entries: Sequence[HookEntry],
    phase: str,
    graph: Any,
    arglists: Sequence[tuple[Any, ...]],
    spawn: Callable[..., None] | None,
) -> list[Any]:
    """Call *phase* on every entry concurrently; return their results in order.

    Each coroutine's first step runs at once, here, in the graph: hooks that
    finish without suspending (most of them, on most steps) cost no task. The
    first hook that suspends is driven on by this task, and the hooks not started
    yet run beside it as tasks of the session (spawned outside this task's cancel
    scopes, so the suspended hook's own scopes stay properly nested). Errors keep
    their type; when one hook fails the tasks beside it are cancelled.
    Pinned by tests/test_session.py::TestRun::test_before_run_hooks_run_concurrently.
    """
    results: list[Any] = [None] * len(entries)
    suspended: tuple[int, Any, Any] | None = None
    # One graph entry for the whole probe: nothing awaits in between.
    with graph.as_default():
        for index, entry in enumerate(entries):
            try:
                result = getattr(entry.hook, phase)(*arglists[index])
                if not inspect.isawaitable(result):
                    results[index] = result
                    continue
                if not isinstance(result, types.CoroutineType):
                    result = _await(result)
                try:
                    yielded = result.send(None)
                except StopIteration as stop:
                    results[index] = stop.value
                    continue
            except BaseException as exc:
                better = _tagged(exc, entry, phase)
                if better is exc:
                    raise
                raise better from exc
            suspended = (index, result, yielded)
            break
    if suspended is not None:
        index, coro, yielded = suspended
        await _finish_beside(
            entries, index, coro, yielded, phase, graph, arglists, spawn, results
        )
    return results


async def _await(awaitable: Any) -> Any:
    return await awaitable


async def _finish_beside(
    entries: Sequence[HookEntry],
    index: int,
    coro: Any,
    yielded: Any,
    phase: str,
    graph: Any,
    arglists: Sequence[tuple[Any, ...]],
    spawn: Callable[..., None] | None,
    results: list[Any],
) -> None:
    """Drive hook *index* here while the hooks after it run as session tasks."""
    rest = range(index + 1, len(entries))
    siblings = _Siblings(len(rest))
    if not rest:
        siblings.done.set()
    elif spawn is None:  # pragma: no cover - the session always passes spawn
        raise RuntimeError("concurrent hooks need an open session")

    async def sibling(position: int) -> None:
        with anyio.CancelScope() as scope:
            siblings.scopes.append(scope)
            try:
                results[position] = await _call_async(
                    entries[position], phase, graph, *arglists[position]
                )
            except BaseException as exc:  # reported to the caller, never to the group
                siblings.errors.append(exc)
                siblings.cancel()
        siblings.left -= 1
        if not siblings.left:
            siblings.done.set()

    for position in rest:
        assert spawn is not None
        spawn(sibling, position)
    try:
        try:
            results[index] = await _drive(coro, graph, yielded)
        except BaseException as exc:
            better = _tagged(exc, entries[index], phase)
            if better is exc:
                raise
            raise better from exc
        await siblings.done.wait()
    except BaseException:
        siblings.cancel()
        with anyio.CancelScope(shield=True):
            await siblings.done.wait()
        raise
    errors = [e for e in siblings.errors if not _is_cancelled(e)]
    if errors:
        raise errors[0]


def _is_cancelled(exc: BaseException) -> bool:
    return isinstance(exc, anyio.get_cancelled_exc_class())


def _tagged(exc: BaseException, entry: HookEntry, phase: str) -> BaseException:
    better = explain_finalized(exc, f"Hook {entry.name} in {phase}()")
    if better is not exc:
        better.__cause__ = exc
        return better
    if isinstance(exc, OutOfRangeError):
        tag_source(exc, f"{entry.name}.{phase}()")
    return exc


def call_sync(entry: HookEntry, phase: str, *args: Any) -> Any:
    """Call a TF hook's method on the current (worker) thread, tagging its errors."""
    try:
        return getattr(entry.hook, phase)(*args)
    except BaseException as exc:
        better = _tagged(exc, entry, phase)
        if better is exc:
            raise
        raise better from exc


async def gather(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Await every call concurrently and return their results in order.

    A single call is awaited directly (no task group). When one call raises, the
    others are cancelled and that error propagates with its own type.
    """
    if len(calls) == 1:
        return [await calls[0]()]
    results: list[Any] = [None] * len(calls)

    async def run_one(index: int) -> None:
        results[index] = await calls[index]()

    error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            for index in range(len(calls)):
                tg.start_soon(run_one, index)
    except BaseExceptionGroup as group:
        error = collapse(group)
    if error is not None:
        raise error
    return results


class Dispatcher:
    """Calls the session's hooks for every phase, in TensorFlow's order."""

    def __init__(self, hooks: Sequence[Any], graph: Any) -> None:
        self.entries = classify(hooks)
        self.graph = graph
        self.requesters = [e for e in self.entries if "before_run" in e.phases]
        self.requester_hooks = [e.hook for e in self.requesters]
        self.async_before = [e for e in self.requesters if e.is_async]
        self.sync_before = [e for e in self.requesters if not e.is_async]
        after = [e for e in self.entries if "after_run" in e.phases]
        self.async_after = [e for e in after if e.is_async and not e.overlap]
        #: Hooks whose after_run of step k runs while step k+1 proceeds.
        self.overlap_after = [e for e in after if e.is_async and e.overlap]
        self.sync_after = [e for e in after if not e.is_async]
        #: True when a step needs nothing from any hook: run() takes the fast path.
        self.idle = not self.requesters and not after
        #: Starts a task in the session's task group (set when the session opens).
        self.spawn: Callable[..., None] | None = None

    # -- lifecycle: sequential, in list order, as in TensorFlow ------------------

    async def call_in_order(self, phase: str, worker: WorkerThread, *args: Any) -> None:
        """Call *phase* on every hook that overrides it, one after another."""
        for entry in self.entries:
            if phase not in entry.phases:
                continue
            if entry.is_async:
                await _call_async(entry, phase, self.graph, *args)
            else:
                await worker.call(call_sync, entry, phase, *args)

    # -- the step ----------------------------------------------------------------

    async def before_run(self, run_context: Any, requests: list[Any]) -> None:
        """Await the async hooks' before_run concurrently, filling *requests*."""
        entries = self.async_before
        if not entries:
            return
        values = await call_phase(
            entries,
            "before_run",
            self.graph,
            [(run_context,)] * len(entries),
            self.spawn,
        )
        for entry, value in zip(entries, values, strict=False):
            requests[entry.request_slot] = value

    def sync_before_run(self, run_context: Any, requests: list[Any]) -> None:
        """Call the TF hooks' before_run (on the worker thread), filling *requests*."""
        for entry in self.sync_before:
            requests[entry.request_slot] = call_sync(entry, "before_run", run_context)

    def values_for(
        self,
        entry: HookEntry,
        slots: tuple[int | None, ...],
        outputs: Any,
        options: Any,
        run_metadata: Any,
    ) -> Any:
        """The SessionRunValues for *entry*'s after_run."""
        index = slots[entry.request_slot] if entry.request_slot >= 0 else None
        results = outputs[index] if index is not None else None
        return SessionRunValues(
            results=results, options=options, run_metadata=run_metadata
        )

    def sync_after_run(self, run_context: Any, step: Any) -> None:
        """Call the TF hooks' after_run (on the worker thread) with their values."""
        for entry in self.sync_after:
            values = self.values_for(
                entry, step.slots, step.outputs, step.options, step.run_metadata
            )
            call_sync(entry, "after_run", run_context, values)

    async def after_run(self, run_context: Any, step: Any) -> None:
        """Await the async hooks' after_run concurrently with their own values."""
        entries = self.async_after
        if entries:
            arglists = [
                (
                    run_context,
                    self.values_for(
                        e, step.slots, step.outputs, step.options, step.run_metadata
                    ),
                )
                for e in entries
            ]
            await call_phase(entries, "after_run", self.graph, arglists, self.spawn)

    def after_run_calls(
        self, entries: list[HookEntry], run_context: Any, step: Any
    ) -> list[Callable[[], Any]]:
        """The after_run calls of *entries* for *step*, ready to be awaited later."""
        graph = self.graph
        calls: list[Callable[[], Any]] = []
        for entry in entries:
            values = self.values_for(
                entry, step.slots, step.outputs, step.options, step.run_metadata
            )
            calls.append(
                partial(_call_async, entry, "after_run", graph, run_context, values)
            )
        return calls
