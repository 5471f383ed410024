"""The hook dispatcher: classifies hooks once, then calls them for each phase.

At construction every hook is sorted into async (asyncsess.SessionRunHook, or a
duck-typed hook with an ``async def`` method) or sync (TensorFlow's SessionRunHook,
or a duck-typed hook with plain methods), and for each phase we record only the
hooks that override it, so a phase nobody overrides costs nothing. Async hooks of
one phase run concurrently (a task group only when more than one runs); sync hooks
run in list order on the session's worker thread, batched with the device step.
An async hook whose method holds the loop too long in a step is logged once.
"""

from __future__ import annotations

import inspect
import logging
import time
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ._exceptions import end_of_input, explain_finalized, tag_source
from ._graph import _drive, graph_context
from ._hook import SessionRunHook, describe, hook_name
from ._stop import current_hook
from ._tf import TFSessionRunHook

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._runargs import StepOutcome
    from ._worker import WorkerThread

PHASES = ("begin", "after_create_session", "before_run", "after_run", "end", "on_error")
#: TensorFlow's hook methods: a duck-typed hook has at least one of these.
TF_METHODS = PHASES[:5]
#: The phases whose async hook methods are timed (they run on every step).
TIMED = frozenset({"before_run", "after_run"})
#: Seconds an async hook method may hold the event loop (run without awaiting) in
#: a step before it is logged, once per hook and phase. A fixed bound, not one
#: relative to the step: whatever the step's length, the loop's other tasks (a
#: server's requests, say) wait all that time.
HELD_LOOP_SECS = 0.1

logger = logging.getLogger("asyncsess")
_clock = time.perf_counter


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
    #: Per phase, how many calls in a row finished without suspending; once it
    #: reaches _QUIET the hook is probed without a cancel scope of its own.
    quiet: dict[str, int] = field(default_factory=dict)
    #: The phases already logged for holding the event loop (see `held_loop`).
    held: set[str] = field(default_factory=set)


def _overrides(hook: Any, base: type, name: str) -> bool:
    method = getattr(type(hook), name, None)
    return method is not None and method is not getattr(base, name, None)


def classify(hooks: Sequence[Any]) -> list[HookEntry]:
    """Classify *hooks*, raising TypeError for anything that is not a hook."""
    entries: list[HookEntry] = []
    slot = 0
    for hook in hooks:
        phases, is_async = _kind(hook)
        request_slot = -1
        if "before_run" in phases:
            request_slot, slot = slot, slot + 1
        overlap = bool(getattr(hook, "overlap_after_run", False)) and is_async
        entries.append(
            HookEntry(hook, hook_name(hook), is_async, phases, request_slot, overlap)
        )
    return entries


def _kind(hook: Any) -> tuple[frozenset[str], bool]:
    """The phases *hook* takes part in, and whether it is an async hook."""
    if isinstance(hook, SessionRunHook):
        return frozenset(p for p in PHASES if _overrides(hook, SessionRunHook, p)), True
    if isinstance(hook, TFSessionRunHook):
        phases = frozenset(p for p in PHASES if _overrides(hook, TFSessionRunHook, p))
        _refuse_async_tf_hook(hook, phases)
        return phases, False
    if isinstance(hook, type):
        raise TypeError(
            f"Hook {describe(hook)} is neither an asyncsess.SessionRunHook nor a "
            "tf.compat.v1.train.SessionRunHook instance: it is a class; pass an "
            f"instance (call it: {hook.__name__}(...))."
        )
    # Duck-typed, as TensorFlow allows: the hook methods it has, async if any of
    # them is ``async def`` (its plain methods then run on the loop, as an
    # asyncsess.SessionRunHook's do), else a sync hook run on the worker thread.
    phases = frozenset(p for p in PHASES if callable(getattr(hook, p, None)))
    if not phases & set(TF_METHODS):
        raise TypeError(
            f"Hook {describe(hook)} is neither an asyncsess.SessionRunHook nor a "
            "tf.compat.v1.train.SessionRunHook, and has none of their methods "
            f"({', '.join(TF_METHODS)}); subclass asyncsess.SessionRunHook."
        )
    return phases, bool(_async_methods(hook, phases))


def _async_methods(hook: Any, phases: frozenset[str]) -> list[str]:
    """*hook*'s methods among *phases* that are ``async def``, in phase order."""
    return [
        p
        for p in PHASES
        if p in phases and inspect.iscoroutinefunction(getattr(hook, p))
    ]


def _refuse_async_tf_hook(hook: Any, phases: frozenset[str]) -> None:
    """TypeError for a TF hook with ``async def`` methods: nobody would await them."""
    methods = _async_methods(hook, phases)
    if methods:
        names = ", ".join(f"{m}()" for m in methods[:-1])
        names = f"{names} and {methods[-1]}()" if names else f"{methods[0]}()"
        raise TypeError(
            f"Hook {describe(hook)} subclasses tf.compat.v1.train.SessionRunHook but "
            f"its {names} {'is' if len(methods) == 1 else 'are'} async def: "
            "TensorFlow's hooks are called without await, so they would never run. "
            "Subclass asyncsess.SessionRunHook instead."
        )


async def call_async(entry: HookEntry, phase: str, graph: Any, *args: Any) -> Any:
    """Call an async hook's method inside the graph, tagging what it raises."""
    token = current_hook.set(entry.hook)
    try:
        start = _clock()
        with graph_context(graph):  # a plain method's whole body, a coroutine's start
            result = getattr(entry.hook, phase)(*args)
        if type(result) is not types.CoroutineType and inspect.isawaitable(result):
            result = _await(result)  # so that it, too, runs inside the graph
        if type(result) is types.CoroutineType:
            if phase in TIMED:
                result = _Timed(result, entry, phase)
            result = await _drive(result, graph)
        elif phase in TIMED:
            held_loop(entry, phase, _clock() - start)
        return result
    except BaseException as exc:
        raise _tagged(exc, entry, phase)  # noqa: B904 (exc, or caused by it)
    finally:
        current_hook.reset(token)


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

    Each coroutine's first step runs at once, here, in the graph and inside a
    cancel scope of its own: hooks that finish without suspending (most of them,
    on most steps) cost no task. The first hook that suspends is driven on by
    this task inside its scope, and the hooks not started yet run beside it as
    tasks of the session. Errors keep their type; when one hook fails the others
    are cancelled, except a hook that had not suspended in its last calls (it runs
    without a cancel scope of its own, to cost nothing): that one is waited for.
    Pinned by tests/test_session.py::TestRun and ::TestExit, tests/test_dispatch.py.
    """
    results: list[Any] = [None] * len(entries)
    token = current_hook.set(None)
    try:
        # One graph entry for every first step: nothing is awaited in between.
        with graph_context(graph):
            suspended = _first_steps(entries, phase, arglists, results)
        if suspended is not None:  # this hook goes on here, the later ones beside
            index, coro, yielded, scope = suspended
            await _finish_beside(
                entries, index, coro, yielded, scope, phase, graph, arglists, spawn,
                results,
            )  # fmt: skip
    finally:
        current_hook.reset(token)
    return results


def _first_steps(
    entries: Sequence[HookEntry],
    phase: str,
    arglists: Sequence[tuple[Any, ...]],
    results: list[Any],
) -> tuple[int, Any, Any, Any] | None:
    """Run each hook's first step until one suspends: (index, coro, yielded, scope).

    The hooks before it have finished and their results are in *results*. Each
    hook is timed from the previous one's end: one clock read a hook.
    """
    clock, bound = _clock, HELD_LOOP_SECS
    start = clock()
    for index, entry in enumerate(entries):
        quiet = entry.quiet.get(phase, 0)
        if quiet >= _QUIET:
            # A hook that has not suspended lately is probed without a scope
            # (cheap); should it suspend now, it is driven here and a failing
            # sibling waits for it instead of cancelling it.
            scope = _NO_SCOPE
        else:  # others get a scope first, so that they can be cancelled
            scope = anyio.CancelScope()
            scope.__enter__()
        current_hook.set(entry.hook)  # who calls run_context.request_stop()
        try:
            result = getattr(entry.hook, phase)(*arglists[index])
            if type(result) is types.CoroutineType or inspect.isawaitable(result):
                coro = result if type(result) is types.CoroutineType else _await(result)
                try:
                    yielded = coro.send(None)
                except StopIteration as stop:  # finished without suspending
                    result = stop.value
                else:
                    entry.quiet[phase] = 0
                    held_loop(entry, phase, clock() - start)
                    return index, coro, yielded, scope
            results[index] = result  # a plain method's value, or the coroutine's
        except BaseException as exc:
            scope.__exit__(type(exc), exc, exc.__traceback__)
            raise _tagged(exc, entry, phase)  # noqa: B904 (exc, or caused by it)
        now = clock()
        if now - start > bound:  # the hot path: no call unless it was slow
            held_loop(entry, phase, now - start)
        start = now
        if quiet < _QUIET:
            scope.__exit__(None, None, None)
            entry.quiet[phase] = quiet + 1
    return None


class _NoScope:
    """Stands in for a cancel scope around a hook that does not suspend."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: Any) -> Literal[False]:
        return False

    def cancel(self) -> None:
        pass


_NO_SCOPE: Any = _NoScope()
#: Calls in a row without suspending before a hook is probed without a scope.
_QUIET = 3


async def _await(awaitable: Any) -> Any:
    return await awaitable


class _Timed:
    """A hook method's coroutine, each of its steps timed (see `held_loop`).

    Stands in for the coroutine in `_drive`, which calls only ``send`` and ``throw``;
    used once a hook suspended, where a step costs a trip through the loop anyway.
    """

    __slots__ = ("_coro", "_entry", "_phase")

    def __init__(self, coro: Any, entry: HookEntry, phase: str) -> None:
        self._coro, self._entry, self._phase = coro, entry, phase

    def send(self, value: Any) -> Any:
        start = _clock()
        try:
            return self._coro.send(value)
        finally:
            held_loop(self._entry, self._phase, _clock() - start)

    def throw(self, error: BaseException) -> Any:
        start = _clock()
        try:
            return self._coro.throw(error)
        finally:
            held_loop(self._entry, self._phase, _clock() - start)


def held_loop(entry: HookEntry, phase: str, seconds: float) -> None:
    """Log, once per hook and phase, a method that held the loop *seconds* > bound.

    tf.keras warns of a callback slower than the batch; here the cost is the
    loop's: no other task ran meanwhile. Pinned by tests/test_hook_checks.py.
    """
    if seconds <= HELD_LOOP_SECS or phase in entry.held:
        return
    entry.held.add(phase)
    logger.warning(
        "Hook %s held the event loop for %.2fs in %s() without awaiting (more than "
        "%.1fs), so every other task of the loop waited. Move blocking work off the "
        "loop (await asyncsess.run_in_session_thread(fn) or anyio.to_thread.run_sync"
        "(fn)), or make it a tf.compat.v1.train.SessionRunHook, whose methods run on "
        "the session's worker thread. Logged once per hook and method.",
        entry.name,
        seconds,
        phase,
        HELD_LOOP_SECS,
    )


async def _finish_beside(
    entries: Sequence[HookEntry],
    index: int,
    coro: Any,
    yielded: Any,
    scope: Any,
    phase: str,
    graph: Any,
    arglists: Sequence[tuple[Any, ...]],
    spawn: Callable[..., None] | None,
    results: list[Any],
) -> None:
    """Drive hook *index* here (in *scope*) while the later hooks run as tasks.

    *scope* was entered before the hook's first step, so the hook's own cancel
    scopes nest inside it and it can be cancelled when a sibling fails.
    """
    rest = range(index + 1, len(entries))
    siblings = _Siblings(len(rest))
    siblings.scopes.append(scope)
    if not rest:
        siblings.done.set()
    elif spawn is None:  # pragma: no cover - the session always passes spawn
        raise RuntimeError("concurrent hooks need an open session")

    async def sibling(position: int) -> None:
        current_hook.set(entries[position].hook)
        with anyio.CancelScope() as own:
            siblings.scopes.append(own)
            try:
                results[position] = await call_async(
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
            timed: Any = _Timed(coro, entries[index], phase)
            results[index] = await _drive(timed, graph, yielded)
        except BaseException as exc:
            # True when the exception is this scope's own cancellation (a sibling
            # failed): then the sibling's error is raised below.
            if not scope.__exit__(type(exc), exc, exc.__traceback__):
                raise _tagged(exc, entries[index], phase)  # noqa: B904 (exc, or caused by it)
        else:
            scope.__exit__(None, None, None)
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
    """What to raise for *exc* from a hook: *exc*, or a clearer error caused by it.

    Raised with a bare ``raise _tagged(...)``: a clearer error already has *exc* as
    its cause, and *exc* itself keeps its own.
    """
    better = explain_finalized(exc, f"Hook {entry.name} in {phase}()")
    if better is not exc:
        better.__cause__ = exc
        return better
    if end_of_input(exc):
        tag_source(exc, f"{entry.name}.{phase}()")
    return exc


def call_sync(entry: HookEntry, phase: str, *args: Any) -> Any:
    """Call a TF hook's method on the current (worker) thread, tagging its errors."""
    token = current_hook.set(entry.hook)
    try:
        return getattr(entry.hook, phase)(*args)
    except BaseException as exc:
        raise _tagged(exc, entry, phase)  # noqa: B904 (exc, or caused by it)
    finally:
        current_hook.reset(token)


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
        #: Whether some after_run needs SessionRunValues (options, run_metadata).
        self.wants_values = bool(after)
        #: Starts a task in the session's task group (set when the session opens).
        self.spawn: Callable[..., None] | None = None

    # -- lifecycle: sequential, in list order, as in TensorFlow ------------------

    async def call_in_order(self, phase: str, worker: WorkerThread, *args: Any) -> None:
        """Call *phase* on every hook that overrides it, one after another."""
        for entry in self.entries:
            if phase not in entry.phases:
                continue
            if entry.is_async:
                await call_async(entry, phase, self.graph, *args)
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

    def sync_after_run(self, run_context: Any, step: StepOutcome) -> None:
        """Call the TF hooks' after_run (on the worker thread) with their values."""
        for entry in self.sync_after:
            values = step.values_for(entry.request_slot)
            call_sync(entry, "after_run", run_context, values)

    def after_run_args(
        self, entries: list[HookEntry], run_context: Any, step: StepOutcome
    ) -> list[tuple[Any, ...]]:
        """The arguments of *entries*' after_run for *step*: each its own values."""
        return [(run_context, step.values_for(e.request_slot)) for e in entries]

    async def after_run(
        self, entries: list[HookEntry], arglists: list[tuple[Any, ...]]
    ) -> None:
        """Await *entries*' after_run concurrently (see `after_run_args`)."""
        if entries:
            await call_phase(entries, "after_run", self.graph, arglists, self.spawn)
