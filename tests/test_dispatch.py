"""The hook dispatcher: classification once, then concurrent phases with fake hooks."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import tensorflow as tf

from asyncsess import SessionRunHook
from asyncsess._backend import current_bridge
from asyncsess._dispatch import (
    Dispatcher,
    HookEntry,
    call_async,
    call_phase,
    call_sync,
    classify,
)
from asyncsess._exceptions import end_of_input, source_of
from asyncsess._stop import RunContext, current_hook
from asyncsess._worker import WorkerThread

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence

v1 = tf.compat.v1
TFSessionRunHook: Any = v1.train.SessionRunHook


@pytest.fixture(scope="module")
def graph() -> tf.Graph:
    return tf.Graph()


def run_context() -> RunContext:
    return RunContext(original_args=v1.train.SessionRunArgs(None), session=None)


def spawn_in(tg: anyio.abc.TaskGroup) -> Callable[..., None]:
    """The dispatcher's ``spawn``: start a task in *tg*."""

    def spawn(fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        tg.start_soon(fn, *args)

    return spawn


def no_spawn(*args: Any) -> None:
    raise AssertionError(f"a task was started for {args!r}")


async def before_run(
    hooks: Sequence[Any], graph: tf.Graph, ctx: Any = None
) -> list[Any]:
    """Call before_run on *hooks* with spawn = a task group's start_soon.

    An error comes out bare (not in the task group's exception group).
    """
    entries = classify(hooks)
    ctx = run_context() if ctx is None else ctx
    arglists = [(ctx,)] * len(entries)
    results: list[Any] = []
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        try:
            results = await call_phase(
                entries, "before_run", graph, arglists, spawn_in(tg)
            )
        except Exception as exc:
            error = exc
    if error is not None:
        raise error
    return results


class ScriptHook(SessionRunHook):
    """An async hook whose before_run is a script given to it."""

    def __init__(self, label: str, script: Any = None) -> None:
        self.label = label
        self.script = script

    def __repr__(self) -> str:
        return f"ScriptHook({self.label!r})"

    async def before_run(self, run_context: Any) -> Any:
        if self.script is None:
            return self.label
        return await self.script(self, run_context)


class PlainHook(SessionRunHook):
    """An asyncsess hook whose before_run is a plain method."""

    def __init__(self, fn: Callable[[PlainHook, Any], Any]) -> None:
        self.fn = fn

    def before_run(self, run_context: Any) -> Any:  # type: ignore[override]
        return self.fn(self, run_context)


class TFHook(TFSessionRunHook):  # type: ignore[misc]
    """A TensorFlow hook recording where its methods ran."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, Any, str]] = []

    def _note(self, phase: str) -> None:
        self.seen.append(
            (
                phase,
                current_hook.get(),
                v1.get_default_graph(),
                threading.current_thread().name,
            )
        )

    def begin(self) -> None:
        self._note("begin")

    def before_run(self, run_context: Any) -> Any:
        self._note("before_run")
        return v1.train.SessionRunArgs("tf")


async def suspend_forever(log: list[str], label: str) -> None:
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        log.append(f"{label} cancelled")
        raise


class _Yield:
    """A non-coroutine awaitable: suspends once, then returns *value*."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        yield from anyio.lowlevel.checkpoint().__await__()
        return self.value


# -- classification ---------------------------------------------------------------


class BeforeAfter(SessionRunHook):
    async def before_run(self, run_context: Any) -> None:
        pass

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        pass


class OnlyBegin(SessionRunHook):
    def begin(self) -> None:  # type: ignore[override]
        pass


class Inherited(BeforeAfter):
    async def end(self, session: Any) -> None:
        pass


class Overlapping(SessionRunHook):
    overlap_after_run = True

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        pass


class TFOverlapping(TFSessionRunHook):  # type: ignore[misc]
    overlap_after_run = True

    def after_run(self, run_context: Any, run_values: Any) -> None:
        pass


class NotAHook:
    def __repr__(self) -> str:
        return "NotAHook()"

    async def on_error(self, exc: BaseException, session: Any) -> None:
        pass  # asyncsess's own phase alone does not make a duck-typed hook


class DuckAsync:
    """A duck-typed hook (no base class) with an async method and a plain one."""

    async def before_run(self, run_context: Any) -> None:
        pass

    def end(self, session: Any) -> None:
        pass


class DuckSync:
    """A duck-typed hook as TensorFlow takes them: plain methods only."""

    overlap_after_run = True  # only async hooks overlap

    def begin(self) -> None:
        pass

    def after_run(self, run_context: Any, run_values: Any) -> None:
        pass


class TestClassify:
    def test_records_the_overridden_phases(self) -> None:
        entries = classify([BeforeAfter(), OnlyBegin(), Inherited(), TFHook()])
        assert [e.phases for e in entries] == [
            {"before_run", "after_run"},
            {"begin"},  # a plain def override counts too
            {"before_run", "after_run", "end"},  # overrides of a base class count
            {"begin", "before_run"},
        ]
        assert [e.name for e in entries] == [
            "BeforeAfter",
            "OnlyBegin",
            "Inherited",
            "TFHook",
        ]

    def test_hooks_overriding_nothing_have_no_phases(self) -> None:
        [mine, tfs] = classify([SessionRunHook(), v1.train.SessionRunHook()])
        assert mine.phases == frozenset() == tfs.phases
        assert mine.request_slot == -1 == tfs.request_slot

    def test_async_and_tf_hooks(self) -> None:
        hooks = [BeforeAfter(), TFHook(), PlainHook(lambda h, c: None)]
        entries = classify(hooks)
        assert [e.is_async for e in entries] == [True, False, True]
        assert [e.hook for e in entries] == hooks

    def test_request_slots_count_before_run_requesters_only(self) -> None:
        entries = classify(
            [OnlyBegin(), BeforeAfter(), Overlapping(), TFHook(), Inherited()]
        )
        assert [e.request_slot for e in entries] == [-1, 0, -1, 1, 2]

    def test_overlap_only_for_async_hooks(self) -> None:
        entries = classify([Overlapping(), BeforeAfter(), TFOverlapping()])
        assert [e.overlap for e in entries] == [True, False, False]

    def test_a_non_hook_raises_type_error_naming_it(self) -> None:
        with pytest.raises(
            TypeError,
            match=r"Hook NotAHook\(\) is neither an asyncsess.SessionRunHook nor a "
            r"tf.compat.v1.train.SessionRunHook, and has none of their methods "
            r"\(begin, after_create_session, before_run, after_run, end\); "
            r"subclass asyncsess.SessionRunHook",
        ):
            classify([BeforeAfter(), NotAHook()])

    def test_duck_typed_hooks_are_classified_by_their_methods(self) -> None:
        entries = classify([DuckAsync(), DuckSync()])
        assert [e.phases for e in entries] == [
            {"before_run", "end"},
            {"begin", "after_run"},
        ]
        assert [e.is_async for e in entries] == [True, False]
        assert [e.request_slot for e in entries] == [0, -1]
        assert [e.overlap for e in entries] == [False, False]

    def test_a_hook_class_instead_of_an_instance(self) -> None:
        with pytest.raises(
            TypeError, match=r"it is a class; pass an instance \(call it: DuckSync"
        ):
            classify([DuckSync])

    def test_a_long_repr_is_shortened(self) -> None:
        class Verbose:
            def __repr__(self) -> str:
                return "V" * 500

        with pytest.raises(TypeError, match=r"Hook V{117}\.\.\. is neither") as info:
            classify([Verbose()])
        assert "V" * 118 not in str(info.value)


class TestDispatcherLists:
    def test_hooks_sorted_by_phase_and_kind(self, graph: tf.Graph) -> None:
        ba, tf_hook, over, tf_over, begin = (
            BeforeAfter(),
            TFHook(),
            Overlapping(),
            TFOverlapping(),
            OnlyBegin(),
        )
        dispatch = Dispatcher([ba, tf_hook, over, tf_over, begin], graph)
        assert dispatch.graph is graph
        assert dispatch.requester_hooks == [ba, tf_hook]
        assert [e.hook for e in dispatch.async_before] == [ba]
        assert [e.hook for e in dispatch.sync_before] == [tf_hook]
        assert [e.hook for e in dispatch.async_after] == [ba]
        assert [e.hook for e in dispatch.overlap_after] == [over]
        assert [e.hook for e in dispatch.sync_after] == [tf_over]
        assert not dispatch.idle
        assert dispatch.wants_values
        assert dispatch.spawn is None

    def test_idle_when_no_hook_takes_part_in_steps(self, graph: tf.Graph) -> None:
        dispatch = Dispatcher([OnlyBegin(), SessionRunHook()], graph)
        assert dispatch.idle
        assert not dispatch.wants_values
        assert Dispatcher([], graph).idle


# -- call_phase -------------------------------------------------------------------


class TestResults:
    async def test_in_order_without_a_task_when_nobody_suspends(
        self, graph: tf.Graph
    ) -> None:
        async def later(hook: ScriptHook, ctx: Any) -> str:
            return hook.label.upper()

        hooks = [ScriptHook("a"), ScriptHook("b", later), ScriptHook("c")]
        entries = classify(hooks)
        arglists = [(run_context(),)] * 3
        for _ in range(5):  # also once the hooks count as quiet
            results = await call_phase(entries, "before_run", graph, arglists, no_spawn)
            assert results == ["a", "B", "c"]

    async def test_no_entries(self, graph: tf.Graph) -> None:
        assert await call_phase([], "before_run", graph, [], no_spawn) == []

    async def test_a_suspending_hook_runs_beside_the_later_ones(
        self, graph: tf.Graph
    ) -> None:
        log: list[str] = []
        first_waits, second_waits, first_resumed = (
            anyio.Event(),
            anyio.Event(),
            anyio.Event(),
        )

        async def first(hook: ScriptHook, ctx: Any) -> str:
            log.append("first waits")
            first_waits.set()
            await second_waits.wait()
            log.append("first resumes")
            first_resumed.set()
            return "first"

        async def second(hook: ScriptHook, ctx: Any) -> str:
            await first_waits.wait()
            log.append("second waits")
            second_waits.set()
            await first_resumed.wait()  # both suspended at once: concurrent
            log.append("second resumes")
            return "second"

        hooks = [
            ScriptHook("before"),
            ScriptHook("first", first),
            ScriptHook("second", second),
            PlainHook(lambda h, c: "plain beside"),
            ScriptHook("last"),
        ]
        results = await before_run(hooks, graph)
        assert results == ["before", "first", "second", "plain beside", "last"]
        assert log == ["first waits", "second waits", "first resumes", "second resumes"]

    async def test_the_last_hook_suspending_needs_no_task(
        self, graph: tf.Graph
    ) -> None:
        async def pause(hook: ScriptHook, ctx: Any) -> str:
            await anyio.lowlevel.checkpoint()
            return hook.label

        entries = classify([ScriptHook("a"), ScriptHook("b", pause)])
        arglists = [(run_context(),)] * 2
        assert await call_phase(entries, "before_run", graph, arglists, no_spawn) == [
            "a",
            "b",
        ]

    @pytest.mark.parametrize("position", ["first", "beside"])
    async def test_a_plain_method_returns_its_value(
        self, graph: tf.Graph, position: str
    ) -> None:
        plain = PlainHook(lambda h, c: ("plain", c))
        ctx = run_context()
        hooks: list[Any] = [plain]
        if position == "beside":
            hooks.insert(0, ScriptHook("pause", pause_once))
        results = await before_run(hooks, graph, ctx)
        assert results[-1] == ("plain", ctx)

    @pytest.mark.parametrize("position", ["first", "beside"])
    async def test_a_plain_method_may_return_an_awaitable(
        self, graph: tf.Graph, position: str
    ) -> None:
        async def coroutine() -> str:
            await anyio.lowlevel.checkpoint()
            return "from a coroutine"

        hooks: list[Any] = [
            PlainHook(lambda h, c: coroutine()),
            PlainHook(lambda h, c: _Yield("from an awaitable")),
        ]
        if position == "beside":
            hooks.insert(0, ScriptHook("pause", pause_once))
        results = await before_run(hooks, graph)
        assert results[-2:] == ["from a coroutine", "from an awaitable"]


async def pause_once(hook: ScriptHook, ctx: Any) -> str:
    await anyio.lowlevel.checkpoint()
    return hook.label


def raise_stop(hook: Any, ctx: Any) -> Any:
    raise StopIteration


class TestStopIteration:
    """A StopIteration must end the phase as an error, never pass for a return."""

    @pytest.mark.parametrize("position", ["first", "beside"])
    async def test_from_a_plain_method(self, graph: tf.Graph, position: str) -> None:
        later = ScriptHook("later")
        hooks: list[Any] = [PlainHook(raise_stop), later]
        if position == "beside":
            hooks.insert(0, ScriptHook("pause", pause_once))
        with pytest.raises(RuntimeError, match="raised StopIteration") as info:
            await before_run(hooks, graph)
        assert isinstance(info.value.__cause__, StopIteration)
        assert end_of_input(info.value)
        assert source_of(info.value) == "PlainHook.before_run()"

    @pytest.mark.parametrize("position", ["first", "beside"])
    async def test_from_an_async_method(self, graph: tf.Graph, position: str) -> None:
        async def stop(hook: ScriptHook, ctx: Any) -> Any:
            raise StopIteration

        hooks: list[Any] = [ScriptHook("stop", stop)]
        if position == "beside":
            hooks.insert(0, ScriptHook("pause", pause_once))
        with pytest.raises(RuntimeError, match="raised StopIteration") as info:
            await before_run(hooks, graph)
        assert isinstance(info.value.__cause__, StopIteration)
        assert end_of_input(info.value)
        # Which hook ended the input is named in the session's log and stop_reason.
        assert source_of(info.value) == "ScriptHook.before_run()"

    async def test_from_a_tf_hook_through_the_worker(self, graph: tf.Graph) -> None:
        class TFStop(TFSessionRunHook):  # type: ignore[misc]
            def before_run(self, run_context: Any) -> Any:
                raise StopIteration

        [entry] = classify([TFStop()])
        worker = WorkerThread(graph, current_bridge(), name="asyncsess-test-dispatch")
        try:
            with pytest.raises(RuntimeError, match="raised StopIteration") as info:
                await worker.call(call_sync, entry, "before_run", run_context())
        finally:
            assert await worker.aclose(30)
        assert end_of_input(info.value)
        assert source_of(info.value) == "TFStop.before_run()"


class TestErrors:
    async def test_an_error_keeps_its_type_and_names_its_hook(
        self, graph: tf.Graph
    ) -> None:
        def exhausted(hook: Any, ctx: Any) -> Any:
            raise tf.errors.OutOfRangeError(None, None, "no more input")

        with pytest.raises(tf.errors.OutOfRangeError, match="no more input") as info:
            await before_run([ScriptHook("a"), PlainHook(exhausted)], graph)
        assert source_of(info.value) == "PlainHook.before_run()"

    async def test_a_failing_sibling_cancels_the_suspended_hooks(
        self, graph: tf.Graph
    ) -> None:
        log: list[str] = []
        waiting = anyio.Event()

        async def driven(hook: ScriptHook, ctx: Any) -> None:
            await suspend_forever(log, "driven")

        async def sibling(hook: ScriptHook, ctx: Any) -> None:
            waiting.set()
            await suspend_forever(log, "sibling")

        async def fail(hook: ScriptHook, ctx: Any) -> None:
            await waiting.wait()
            raise ValueError("the third hook failed")

        hooks = [
            ScriptHook("driven", driven),
            ScriptHook("sibling", sibling),
            ScriptHook("fail", fail),
        ]
        with pytest.raises(ValueError, match="the third hook failed"):
            await before_run(hooks, graph)
        assert sorted(log) == ["driven cancelled", "sibling cancelled"]

    async def test_the_driven_hook_failing_cancels_the_siblings(
        self, graph: tf.Graph
    ) -> None:
        log: list[str] = []
        waiting = anyio.Event()

        async def driven(hook: ScriptHook, ctx: Any) -> None:
            await waiting.wait()
            raise KeyError("the driven hook failed")

        async def sibling(hook: ScriptHook, ctx: Any) -> None:
            waiting.set()
            await suspend_forever(log, "sibling")

        hooks = [ScriptHook("driven", driven), ScriptHook("sibling", sibling)]
        with pytest.raises(KeyError, match="the driven hook failed"):
            await before_run(hooks, graph)
        assert log == ["sibling cancelled"]

    async def test_a_quiet_hook_is_waited_for_not_cancelled(
        self, graph: tf.Graph
    ) -> None:
        # Pins _dispatch._first_steps: a hook that has not suspended for _QUIET
        # calls is probed without a cancel scope, so when it suspends and a
        # sibling fails, the phase waits for it to finish.
        log: list[str] = []
        suspend, release = False, anyio.Event()

        async def sometimes(hook: ScriptHook, ctx: Any) -> str:
            if suspend:
                log.append("quiet hook waits")
                await release.wait()
                log.append("quiet hook finished")
            return "quiet"

        async def fail(hook: ScriptHook, ctx: Any) -> None:
            if suspend:
                raise ValueError("sibling failed")

        entries = classify([ScriptHook("q", sometimes), ScriptHook("f", fail)])
        arglists = [(run_context(),)] * 2
        for _ in range(3):
            await call_phase(entries, "before_run", graph, arglists, no_spawn)
        suspend = True
        error: Exception | None = None
        async with anyio.create_task_group() as tg:

            async def phase() -> None:
                nonlocal error
                try:
                    await call_phase(
                        entries, "before_run", graph, arglists, spawn_in(tg)
                    )
                except Exception as exc:
                    error = exc

            tg.start_soon(phase)
            await anyio.wait_all_tasks_blocked()
            assert log == ["quiet hook waits"]  # the sibling failed meanwhile
            release.set()
        assert isinstance(error, ValueError)
        assert log == ["quiet hook waits", "quiet hook finished"]


class TestCancellation:
    async def test_cancelling_the_caller_cancels_every_hook(
        self, graph: tf.Graph
    ) -> None:
        log: list[str] = []

        def script(label: str) -> Any:
            async def run(hook: ScriptHook, ctx: Any) -> None:
                await suspend_forever(log, label)

            return run

        hooks = [ScriptHook(name, script(name)) for name in ("a", "b", "c")]
        entries = classify(hooks)
        arglists = [(run_context(),)] * 3
        scope = anyio.CancelScope()
        async with anyio.create_task_group() as tg:

            async def caller() -> None:
                with scope:
                    await call_phase(
                        entries, "before_run", graph, arglists, spawn_in(tg)
                    )

            tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            assert log == []
            scope.cancel()
        assert scope.cancelled_caught
        assert sorted(log) == ["a cancelled", "b cancelled", "c cancelled"]
        assert current_hook.get() is None

    async def test_a_cancelled_caller_cancels_a_quiet_driven_hook(
        self, graph: tf.Graph
    ) -> None:
        log: list[str] = []
        suspend = False

        async def sometimes(hook: ScriptHook, ctx: Any) -> None:
            if suspend:
                await suspend_forever(log, "quiet")

        entries = classify([ScriptHook("q", sometimes)])
        arglists = [(run_context(),)]
        for _ in range(4):
            await call_phase(entries, "before_run", graph, arglists, no_spawn)
        suspend = True
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    call_phase, entries, "before_run", graph, arglists, no_spawn
                )
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        assert log == ["quiet cancelled"]


class TestGraph:
    async def test_the_graph_is_default_in_every_step_and_not_leaked(
        self, graph: tf.Graph
    ) -> None:
        seen: dict[str, bool] = {}
        suspended, observed = anyio.Event(), anyio.Event()

        def note(where: str) -> None:
            seen[where] = v1.get_default_graph() is graph

        async def driven(hook: ScriptHook, ctx: Any) -> None:
            note("driven, first step")
            suspended.set()
            await observed.wait()
            note("driven, after an await")

        async def sibling(hook: ScriptHook, ctx: Any) -> None:
            note("sibling, first step")
            await observed.wait()
            note("sibling, after an await")

        hooks = [
            PlainHook(lambda h, c: note("plain, first")),
            ScriptHook("driven", driven),
            ScriptHook("sibling", sibling),
        ]
        loop_saw: list[bool] = []

        async def observer() -> None:
            await suspended.wait()
            await anyio.wait_all_tasks_blocked()
            loop_saw.append(v1.get_default_graph() is graph)
            observed.set()

        assert v1.get_default_graph() is not graph
        async with anyio.create_task_group() as tg:
            tg.start_soon(observer)
            await before_run(hooks, graph)
        assert seen == {
            "plain, first": True,
            "driven, first step": True,
            "sibling, first step": True,
            "driven, after an await": True,
            "sibling, after an await": True,
        }
        assert loop_saw == [False]  # other tasks of the loop never see it
        assert v1.get_default_graph() is not graph

    @pytest.mark.parametrize("position", ["first", "beside"])
    async def test_a_plain_method_runs_in_the_graph(
        self, graph: tf.Graph, position: str
    ) -> None:
        hooks: list[Any] = [PlainHook(lambda h, c: v1.get_default_graph())]
        if position == "beside":  # started as a task beside a suspended hook
            hooks.insert(0, ScriptHook("pause", pause_once))
        results = await before_run(hooks, graph)
        assert results[-1] is graph

    @pytest.mark.parametrize("position", ["first", "beside"])
    async def test_an_awaitable_a_plain_method_returns_runs_in_the_graph(
        self, graph: tf.Graph, position: str
    ) -> None:
        seen: list[bool] = []

        def note(where: str) -> None:
            seen.append(v1.get_default_graph() is graph)

        hooks: list[Any] = [PlainHook(lambda h, c: _note_after_yield(note))]
        if position == "beside":
            hooks.insert(0, ScriptHook("pause", pause_once))
        await before_run(hooks, graph)
        assert seen == [True]

    @pytest.mark.parametrize("position", ["first_step", "after_await", "beside"])
    async def test_a_finalized_graph_error_names_the_hook(
        self, graph: tf.Graph, position: str
    ) -> None:
        tf_error = RuntimeError("Graph is finalized and cannot be modified.")

        def add_op(hook: Any, ctx: Any) -> Any:
            raise tf_error

        async def add_op_later(hook: Any, ctx: Any) -> Any:
            await anyio.lowlevel.checkpoint()
            raise tf_error

        hooks: list[Any] = [PlainHook(add_op)]
        if position == "after_await":
            hooks = [ScriptHook("late", add_op_later), ScriptHook("pause", pause_once)]
        elif position == "beside":
            hooks.insert(0, ScriptHook("pause", pause_once))
        with pytest.raises(
            RuntimeError,
            match=r"(Plain|Script)Hook in before_run\(\) tried to add an op after "
            r"the session opened; ops belong in a hook's begin\(\)",
        ) as info:
            await before_run(hooks, graph)
        # TF's own error (whose traceback shows where the op was added) is kept.
        assert info.value.__cause__ is tf_error


def _note_after_yield(note: Callable[[str], None]) -> Awaitable[None]:
    class After:
        def __await__(self) -> Generator[Any, Any, None]:
            yield from anyio.lowlevel.checkpoint().__await__()
            note("awaitable, after a yield")

    return After()


class TestCurrentHook:
    async def test_names_the_running_hook_everywhere_and_is_reset(
        self, graph: tf.Graph
    ) -> None:
        seen: list[tuple[str, Any, Any]] = []
        suspended, observed = anyio.Event(), anyio.Event()

        def helper(hook: Any, where: str) -> None:  # a function the hook calls
            seen.append((where, hook, current_hook.get()))

        async def driven(hook: ScriptHook, ctx: Any) -> None:
            helper(hook, "driven, first step")
            suspended.set()
            await observed.wait()
            helper(hook, "driven, after an await")

        async def sibling(hook: ScriptHook, ctx: Any) -> None:
            helper(hook, "sibling, first step")
            await observed.wait()
            helper(hook, "sibling, after an await")

        hooks = [
            PlainHook(lambda h, c: helper(h, "plain, first")),
            ScriptHook("driven", driven),
            ScriptHook("sibling", sibling),
            PlainHook(lambda h, c: helper(h, "plain, beside")),
        ]
        loop_saw: list[Any] = []

        async def observer() -> None:
            await suspended.wait()
            await anyio.wait_all_tasks_blocked()
            loop_saw.append(current_hook.get())
            observed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(observer)
            # A hook calling into the session: its own name comes back after.
            token = current_hook.set("the caller's hook")
            try:
                await before_run(hooks, graph)
                assert current_hook.get() == "the caller's hook"
            finally:
                current_hook.reset(token)
        assert sorted(where for where, _, _ in seen) == [
            "driven, after an await",
            "driven, first step",
            "plain, beside",
            "plain, first",
            "sibling, after an await",
            "sibling, first step",
        ]
        for where, hook, running in seen:
            assert running is hook, where
        assert loop_saw == [None]
        assert current_hook.get() is None

    async def test_is_reset_after_a_failing_phase(self, graph: tf.Graph) -> None:
        with pytest.raises(ZeroDivisionError, match="division by zero"):
            await before_run([PlainHook(lambda h, c: 1 / 0)], graph)
        assert current_hook.get() is None

    async def test_call_async(self, graph: tf.Graph) -> None:
        seen: list[Any] = []

        async def script(hook: ScriptHook, ctx: Any) -> str:
            seen.append(current_hook.get())
            await anyio.lowlevel.checkpoint()
            seen.append(current_hook.get())
            return "done"

        hook = ScriptHook("h", script)
        [entry] = classify([hook])
        assert await call_async(entry, "before_run", graph, run_context()) == "done"
        assert seen == [hook, hook]
        assert current_hook.get() is None

    def test_call_sync_with_a_tf_hook(self, graph: tf.Graph) -> None:
        hook = TFHook()
        [entry] = classify([hook])
        request = call_sync(entry, "before_run", run_context())
        assert request.fetches == "tf"
        [(phase, running, _, _)] = hook.seen
        assert (phase, running) == ("before_run", hook)
        assert current_hook.get() is None


class TestRequestStop:
    async def test_names_the_hook_that_asked(self, graph: tf.Graph) -> None:
        asked = anyio.Event()

        def stop(ctx: RunContext) -> None:  # from a helper the hook calls
            ctx.request_stop()

        async def first(hook: ScriptHook, ctx: RunContext) -> None:
            await anyio.lowlevel.checkpoint()
            stop(ctx)
            asked.set()

        async def second(hook: ScriptHook, ctx: RunContext) -> None:
            await asked.wait()
            stop(ctx)  # a later request keeps the first requester

        ctx = run_context()
        hooks = [ScriptHook("quiet"), ScriptHook("first", first)]
        hooks.append(ScriptHook("second", second))
        await before_run(hooks, graph, ctx)
        assert ctx.stop_requested
        assert ctx.stopped_by is hooks[1]

    @pytest.mark.parametrize("position", ["first_step", "sibling"])
    async def test_from_a_plain_method(self, graph: tf.Graph, position: str) -> None:
        stopper = PlainHook(lambda h, c: c.request_stop())
        hooks: list[Any] = [stopper]
        if position == "sibling":
            hooks.insert(0, ScriptHook("pause", pause_once))
        ctx = run_context()
        await before_run(hooks, graph, ctx)
        assert ctx.stopped_by is stopper

    async def test_from_a_tf_hook_on_the_worker(self, graph: tf.Graph) -> None:
        class TFStopper(TFSessionRunHook):  # type: ignore[misc]
            def before_run(self, run_context: Any) -> None:
                run_context.request_stop()

        hook = TFStopper()
        [entry] = classify([hook])
        ctx = run_context()
        worker = WorkerThread(graph, current_bridge(), name="asyncsess-test-dispatch")
        try:
            await worker.call(call_sync, entry, "before_run", ctx)
        finally:
            assert await worker.aclose(30)
        assert ctx.stopped_by is hook

    def test_outside_any_hook(self) -> None:
        ctx = run_context()
        ctx.request_stop()
        assert ctx.stop_requested
        assert ctx.stopped_by == "a hook"


# -- the Dispatcher over a session's phases -----------------------------------------


class FakeStep:
    """Stands in for _runargs.StepOutcome: values by request slot."""

    def values_for(self, request_slot: int) -> Any:
        return ("values", request_slot)


class Recording(SessionRunHook):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def begin(self) -> None:
        self.log.append(("async begin", current_hook.get() is self))

    async def before_run(self, run_context: Any) -> Any:
        return v1.train.SessionRunArgs("async")

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        self.log.append(("async after_run", run_values))


class TestDispatcher:
    async def test_call_in_order_runs_tf_hooks_on_the_worker(
        self, graph: tf.Graph
    ) -> None:
        log: list[Any] = []
        first, tf_hook, last = Recording(log), TFHook(), Recording(log)
        dispatch = Dispatcher([first, tf_hook, last], graph)
        worker = WorkerThread(graph, current_bridge(), name="asyncsess-test-dispatch")
        try:
            await dispatch.call_in_order("begin", worker)
            await dispatch.call_in_order("end", worker, None)  # nobody overrides it
        finally:
            assert await worker.aclose(30)
        assert log == [("async begin", True), ("async begin", True)]
        [(phase, running, tf_graph, thread)] = tf_hook.seen
        assert (phase, running, tf_graph, thread) == (
            "begin",
            tf_hook,
            graph,
            "asyncsess-test-dispatch",
        )
        assert current_hook.get() is None

    async def test_call_in_order_runs_every_hook_in_the_graph(
        self, graph: tf.Graph
    ) -> None:
        seen: list[tuple[str, bool]] = []

        class AsyncBegin(SessionRunHook):
            async def begin(self) -> None:
                seen.append(("async def", v1.get_default_graph() is graph))

        class PlainBegin(SessionRunHook):
            def begin(self) -> None:  # type: ignore[override]
                seen.append(("def", v1.get_default_graph() is graph))

        dispatch = Dispatcher([AsyncBegin(), PlainBegin()], graph)
        worker = WorkerThread(graph, current_bridge(), name="asyncsess-test-dispatch")
        try:
            await dispatch.call_in_order("begin", worker)
        finally:
            assert await worker.aclose(30)
        assert seen == [("async def", True), ("def", True)]

    async def test_before_run_fills_requests_by_slot(self, graph: tf.Graph) -> None:
        log: list[Any] = []
        hooks = [TFHook(), OnlyBegin(), Recording(log), ScriptHook("script")]
        dispatch = Dispatcher(hooks, graph)
        ctx = run_context()
        requests: list[Any] = [None] * len(dispatch.requesters)
        async with anyio.create_task_group() as tg:
            dispatch.spawn = spawn_in(tg)
            await dispatch.before_run(ctx, requests)
            dispatch.sync_before_run(ctx, requests)
        assert [getattr(r, "fetches", r) for r in requests] == [
            "tf",
            "async",
            "script",
        ]

    async def test_after_run_gives_each_hook_its_own_values(
        self, graph: tf.Graph
    ) -> None:
        log: list[Any] = []
        hooks = [OnlyBegin(), Recording(log), Overlapping(), Recording(log)]
        dispatch = Dispatcher(hooks, graph)
        ctx = run_context()
        step: Any = FakeStep()
        args = dispatch.after_run_args(dispatch.async_after, ctx, step)
        assert args == [(ctx, ("values", 0)), (ctx, ("values", 1))]
        async with anyio.create_task_group() as tg:
            dispatch.spawn = spawn_in(tg)
            await dispatch.after_run(dispatch.async_after, args)
            await dispatch.after_run([], [])
        assert log == [
            ("async after_run", ("values", 0)),
            ("async after_run", ("values", 1)),
        ]
        overlap_args = dispatch.after_run_args(dispatch.overlap_after, ctx, step)
        assert overlap_args == [(ctx, ("values", -1))]  # no request: no results


def test_entries_are_frozen() -> None:
    [entry] = classify([BeforeAfter()])
    assert isinstance(entry, HookEntry)
    with pytest.raises(AttributeError, match="cannot assign to field 'name'"):
        entry.name = "other"  # type: ignore[misc]
