"""MonitoredSession and SingularMonitoredSession: lifecycle, stopping, run() entry.

The session owns the lifecycle (open, close, the TF session and its coordinator)
and the public methods. Each step goes to its `Stepper` (``_stepper.py``), each
retried call through its `Recovery` (``_recovery.py``), and every blocking TF
call to its `WorkerThread` (``_worker.py``).
"""

from __future__ import annotations

import enum
import functools
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

import anyio

from ._backend import current_bridge
from ._creators import ChiefSessionCreator, WorkerSessionCreator, adapt_creator
from ._dispatch import Dispatcher, call_async, call_sync
from ._exceptions import (
    RunAfterStopError,
    SessionBrokenError,
    SessionStateError,
    end_of_input,
    explain_finalized,
    source_of,
)
from ._graph_use import GraphUse, graph_use
from ._hook import SessionRunHook, describe, hook_name
from ._queues import QueueRunners
from ._recovery import Recovery, RecoveryPolicy, held_error, is_preemption
from ._run_cache import RunCache
from ._step_fn import call_step_fn, check_step_fn, stop_requested_by
from ._stepper import Stepper
from ._stop import StopReason
from ._tf import (
    Coordinator,
    TFSessionRunHook,
    default_graph,
    errors,
    v1,
)
from ._worker import WorkerThread, current_worker

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Coroutine,
        Iterable,
        Mapping,
    )
    from types import TracebackType
    from typing import TypeAlias

    from anyio.abc import TaskGroup

    # TensorFlow's classes from their defining modules (`asyncsess._tf` holds the
    # same objects): type checkers cannot see through the lazy ``tf.compat.v1``.
    from tensorflow.python.framework.ops import Graph
    from tensorflow.python.training.monitored_session import Scaffold
    from tensorflow.python.training.monitored_session import (
        SessionCreator as TFCreator,
    )
    from tensorflow.python.training.session_run_hook import (
        SessionRunHook as TFHook,
    )
    from typing_extensions import Self

    from ._backend import LoopBridge
    from ._creators import SessionCreator
    from ._step_fn import StepContext
    from ._stop import RunContext

    # Public signatures spell out "either kind" (asyncsess's or TensorFlow's hook,
    # creator) rather than through an alias: pyright cannot see TensorFlow's
    # classes, and reads an alias of ours over them as unknown.

    #: ``Session.run``'s feed_dict: graph elements (or their names) to values.
    FeedDict: TypeAlias = Mapping[Any, Any]

logger = logging.getLogger("asyncsess")

T = TypeVar("T")

_STEP = "running a step"
_STEP_FN = "running a step_fn"


class State(enum.Enum):
    UNOPENED = 1  # constructed; nothing has been done yet
    OPENING = 2  # open() is running the hooks' begin and creating the TF session
    OPEN = 3  # a TF session is live (or being recreated after a preemption)
    CLOSING = 4  # close() is running hooks' end and shutting down
    CLOSED = 5  # everything released; close() again is a no-op


class MonitoredSession:
    """Session-like object that handles initialization, recovery and hooks, async.

    The anyio-native counterpart of `tf.compat.v1.train.MonitoredSession`::

        async with asyncsess.MonitoredSession(session_creator=..., hooks=...) as sess:
            while not sess.should_stop():
                await sess.run(train_op)

    Constructing it does no work. Opening it (``async with`` or `open`) awaits
    every hook's ``begin``, finalizes the graph, creates the TF session through the
    session creator (initialize or restore), starts the queue runners and awaits
    every hook's ``after_create_session``. `run` awaits the hooks' ``before_run``
    concurrently, runs the device step on the session's worker thread and awaits
    their ``after_run``. `AbortedError`/`UnavailableError` recreate the TF session
    and retry, under `recovery` (a `RecoveryPolicy`). Exiting the block ends the
    hooks and closes everything, swallowing ``OutOfRangeError``/``StopIteration``.

    The graph is the default graph when the object is constructed; every piece of
    work uses it, whatever thread or task runs it. Two tasks calling `run` at once
    are served one step at a time, first come first served.

    Args:
      session_creator: An `asyncsess.SessionCreator`, a TensorFlow
        `tf.compat.v1.train.SessionCreator`, or None for `ChiefSessionCreator()`.
      hooks: asyncsess and/or TensorFlow `SessionRunHook` instances.
      stop_grace_period_secs: Seconds given to threads and pending work to stop
        when the session closes.
      recovery: How preemption errors are retried (see `recovery`).
      step_cancel_grace: Seconds a cancelled step gets to finish (see
        `step_cancel_grace`).
      caller_thread_below: See `caller_thread_below`.

    Cancellation: see `run`, `open` and `close`. After a cancellation the session
    is either still usable or closes cleanly on exit; no thread, task or TF
    session is left behind.
    """

    #: Whether preemption errors recreate the TF session (False: they propagate).
    _should_recover: ClassVar[bool] = True

    def __init__(
        self,
        session_creator: SessionCreator | TFCreator | None = None,
        hooks: Iterable[SessionRunHook | TFHook] | None = None,
        *,
        stop_grace_period_secs: float = 120,
        recovery: RecoveryPolicy | None = None,
        step_cancel_grace: float = 0.25,
        caller_thread_below: float = 1e-3,
    ) -> None:
        self._grace = _seconds("stop_grace_period_secs", stop_grace_period_secs)
        self._graph = default_graph()
        self._creator = adapt_creator(session_creator)
        self._hooks = _hook_list(hooks)
        self._dispatch = Dispatcher(self._hooks, self._graph)
        self._recovery = Recovery(
            self._create_tf_session,
            self._release_tf_session,
            lambda: self._coord,
            enabled=self._should_recover,
        )
        self._state = State.UNOPENED
        self._bridge: LoopBridge | None = None
        self._worker: WorkerThread | None = None
        self._stepper: Stepper | None = None
        #: The stepper's device step (built in open()).
        self._run_cache: RunCache | None = None
        self._lock: anyio.Lock | None = None
        self._coord: Any = None
        self._runners: QueueRunners | None = None
        self._exit_stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        #: This session's count in its graph's `GraphUse` (taken in open()).
        self._graph_use: GraphUse | None = None
        #: The id and name of the task that opened the session: only that task
        #: can leave the session's task group.
        self._opener: tuple[int, str] | None = None
        self._stop: StopReason | None = None
        self._step_cancel_grace = 0.25
        self._caller_thread_below = 1e-3
        if recovery is not None:
            self.recovery = recovery
        self.step_cancel_grace = step_cancel_grace
        self.caller_thread_below = caller_thread_below

    # -- public properties ------------------------------------------------------

    @property
    def graph(self) -> Graph:
        """The graph this session runs (captured when the object was constructed)."""
        return self._graph

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the session stopped (a `StopReason`), or None while it has not."""
        return self._stop

    @property
    def recovery_count(self) -> int:
        """How many times the TF session was recreated after a preemption."""
        return self._recovery.count

    @property
    def recovery(self) -> RecoveryPolicy:
        """How preemption errors are retried; replace it before or while running."""
        return self._recovery.policy

    @recovery.setter
    def recovery(self, policy: RecoveryPolicy) -> None:
        if not isinstance(policy, RecoveryPolicy):
            raise TypeError(
                f"recovery must be an asyncsess.RecoveryPolicy; Received: "
                f"recovery={policy!r}"
            )
        self._recovery.policy = policy

    @property
    def step_cancel_grace(self) -> float:
        """Seconds a cancelled step is given to finish before it is abandoned.

        An abandoned step keeps running inside TensorFlow; the next step waits
        for it and closing the session interrupts it (tests/test_cancellation.py).
        Default 0.25.
        """
        return self._step_cancel_grace

    @step_cancel_grace.setter
    def step_cancel_grace(self, seconds: float) -> None:
        self._step_cancel_grace = _seconds("step_cancel_grace", seconds)
        if self._stepper is not None:
            self._stepper.cancel_grace = self._step_cancel_grace

    @property
    def caller_thread_below(self) -> float:
        """Seconds under which a step may run on the worker thread itself.

        TensorFlow runs a step's ops on its inter-op thread pool, a thread hop that
        costs more than a trivial step. A step signature (fetches and feed keys)
        of a local session that takes less than this on the pool, and whose graph
        is simple enough to give the same results on one thread (see
        ``_caller_thread.py``), is timed both ways for a few steps and keeps
        whichever was faster (``RunOptions.inter_op_thread_pool=-1``). Default
        1 ms; 0 turns it off.
        """
        return self._caller_thread_below

    @caller_thread_below.setter
    def caller_thread_below(self, seconds: float) -> None:
        self._caller_thread_below = _seconds("caller_thread_below", seconds)
        if self._run_cache is not None:
            self._run_cache.configure(self._caller_thread_below)

    @property
    def _tf_sess(self) -> Any:
        return None if self._stepper is None else self._stepper.session

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None and end_of_input(exc):
            self._note_end_of_input(exc)
            await self._close(None)
            return True
        await self._close(exc)
        return False

    async def open(self) -> Self:
        """Open the session: hooks' begin, finalize, create, init/restore, start.

        For code that cannot use ``async with`` (a web app's lifespan, say); pair it
        with `close`, in the same task. Sessions over one graph may open at the
        same time: from the hooks' ``begin`` until the graph is finalized they
        take turns, and the graph stays finalized until the last one closes.

        Raises:
          SessionStateError: if the session was already opened.

        Cancellation: always yields. Cancelling it (or a hook raising) closes what
        was opened: the TF session, queue runners and the worker thread; the
        graph is un-finalized again (unless another session over it is open). A
        session being created on the worker thread when cancelled is closed as
        soon as its creation ends.
        """
        if self._state is not State.UNOPENED:
            raise SessionStateError(
                f"{type(self).__name__}.open() was called on a session that is "
                f"{self._state.name.lower()}; a session opens once."
            )
        self._state = State.OPENING
        self._bridge = current_bridge()
        self._lock = anyio.Lock(fast_acquire=True)
        task = anyio.get_current_task()
        self._opener = (task.id, str(task.name))
        worker = self._worker = WorkerThread(self._graph, self._bridge)
        cache = self._run_cache = RunCache()
        cache.configure(self._caller_thread_below)
        self._stepper = Stepper(
            self._dispatch,
            worker,
            cache,
            self._note_hook_stop,
            self._step_cancel_grace,
        )
        self._runners = QueueRunners(self._graph, worker, self._spawn, self._grace)
        token = current_worker.set(worker)
        try:
            # Background work of the session (queue runners, pending hooks) runs in
            # this task group, entered here and left in close(): open() and close()
            # must run in the same task, as `async with` and a lifespan do
            # (`_close_elsewhere` explains the rule to those who do not).
            self._exit_stack = AsyncExitStack()
            self._task_group = await self._exit_stack.enter_async_context(
                anyio.create_task_group()
            )
            self._dispatch.spawn = self._spawn
            await self._begin_and_create(worker)
        except BaseException as exc:
            try:
                with anyio.CancelScope(shield=True):
                    await self._shutdown(exc)
            finally:
                # Closed first: leaving a cancelled task group that still has tasks
                # raises the cancellation here (tests/test_cancellation.py,
                # after_create_session with a queue runner).
                self._state = State.CLOSED
                # Left outside the shield: a task group must be exited under the
                # same cancel scope it was entered in.
                await self._close_task_group()
            raise
        finally:
            current_worker.reset(token)
        self._state = State.OPEN
        return self

    async def _begin_and_create(self, worker: WorkerThread) -> None:
        """Hooks' begin and the first TF session, in this graph's opening turn.

        Sessions over one graph open one at a time from begin until the graph is
        finalized: two at once would race to add the scaffold's ops to it while
        the other one finalizes it. The turn ends before the session is created
        when our own creator's scaffold finalizes the graph first, so that a
        `WorkerSessionCreator` waiting for a chief over the same graph lets the
        chief open meanwhile. Pinned by tests/test_hook_checks.py::TestOneGraph.
        """
        use = graph_use(self._graph)
        turn = await use.take_turn(self._graph)
        self._graph_use = use  # released in _shutdown
        try:
            try:
                await self._dispatch.call_in_order("begin", worker)
            except RuntimeError as exc:
                if self._graph_finalized_by_another(use, exc):
                    raise RuntimeError(
                        f"{exc} Here the graph was finalized by another session "
                        "over it that is still open: build the hook's ops before "
                        "the first session opens, or give each session its own "
                        "graph."
                    ) from exc
                raise
            creator = self._creator
            if isinstance(creator, (ChiefSessionCreator, WorkerSessionCreator)):
                await worker.call(creator.scaffold.finalize)  # creation does it again
                use.end_turn(turn)
            await self._recovery.create()
        finally:
            use.end_turn(turn)

    @staticmethod
    def _graph_finalized_by_another(use: GraphUse, exc: RuntimeError) -> bool:
        """Whether *exc* is TF's error for a graph another open session finalized."""
        return (
            use.sessions > 1
            and not use.finalized_before
            and str(exc).startswith("Graph is finalized")
        )

    async def close(self) -> None:
        """Close the session: hooks' end, stop queue runners, close the TF session.

        Idempotent: closing again does nothing (TensorFlow ends the hooks twice
        and raises). An exception a queue runner reported to the coordinator is
        raised here, as in TensorFlow.

        Raises:
          SessionStateError: called in another task than the one that opened the
            session. The hooks' ``on_error`` runs and the TF session, queue
            runners and worker thread are released all the same, but the
            session's task group is the opening task's: that task must still
            close the session (or leave its ``async with`` block).

        Cancellation: the hooks' ``end`` is cancelled with the caller; the
        shutdown that follows is shielded and bounded by
        ``stop_grace_period_secs``, so everything is released before the
        cancellation propagates.
        """
        await self._close(None)

    async def _close(self, exc: BaseException | None) -> None:
        if self._state is State.CLOSING:
            return
        if self._state is State.CLOSED:
            if self._task_group is not None and self._in_opener():
                await self._close_task_group()  # left open by `_close_elsewhere`
            return
        if self._state is State.UNOPENED:
            self._state = State.CLOSED
            return
        assert self._worker is not None
        assert self._bridge is not None
        assert self._stepper is not None
        # From another thread or loop, the shutdown would run half and then fail
        # leaving the task group (tests/test_bad_input.py::TestLifecycleMisuse).
        self._bridge.check_current()
        if not self._in_opener():
            await self._close_elsewhere()
        self._state = State.CLOSING
        token = current_worker.set(self._worker)
        try:
            try:
                if exc is None and self._tf_sess is not None:
                    await self._stepper.drain()
                    await self._dispatch.call_in_order(
                        "end", self._worker, self._tf_sess
                    )
                elif exc is not None:
                    await self._notify_error(exc)
            except BaseException as error:
                exc = error
                await self._notify_error(error)
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await self._shutdown(exc)
        finally:
            current_worker.reset(token)
            try:
                await self._close_task_group()
            finally:
                self._state = State.CLOSED
            if self._stop is None:
                self._stop = StopReason("closed", "The session was closed.")

    def _in_opener(self) -> bool:
        opener = self._opener
        return opener is None or anyio.get_current_task().id == opener[0]

    async def _close_elsewhere(self) -> None:
        """close() outside the opening task: release what it can, then raise.

        The session's task group can only be left by the task that entered it
        (anyio and trio fail with "cancel scope in a different task" / "Nursery
        misnesting", and cancelling it would cancel that task too). So this runs
        the hooks' on_error, stops the queue runners, closes the TF session and
        the worker thread, and leaves the task group to the opening task: its
        close() (or ``async with`` exit) then leaves it, and nothing else. Pinned
        by tests/test_hook_checks.py::TestCloseInAnotherTask.
        """
        assert self._opener is not None
        opener, name = self._opener
        here = anyio.get_current_task().name
        if self._state is State.OPENING:
            raise SessionStateError(
                f"{type(self).__name__}.close() was called in task {here!r} while "
                f"task {name!r} is opening the session: a session must be closed in "
                "the task that opened it. Cancel that task to stop the opening."
            )
        error = SessionStateError(
            f"{type(self).__name__}.close() was called in task {here!r}, not in "
            f"task {name!r} that opened the session: a session must be closed in "
            "the task that opened it (use 'async with', or open() and close() in "
            "one task; other tasks call request_stop()). Its TF session and "
            "threads were released; close it in the opening task too."
        )
        self._state = State.CLOSING
        try:
            await self._notify_error(error)
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown(error)
            self._state = State.CLOSED
            if opener not in {task.id for task in anyio.get_running_tasks()}:
                # The opening task is gone (anyio or trio already reported the
                # task group it left open): nobody can leave the group any more.
                self._exit_stack = self._task_group = None
        raise error

    async def _notify_error(self, exc: BaseException) -> None:
        """Call on_error(exc, session) on every hook defining it; log their errors."""
        if self._stop is None:
            kind = (
                "cancelled"
                if isinstance(exc, anyio.get_cancelled_exc_class())
                else "error"
            )
            self._stop = StopReason(
                kind, f"{type(exc).__name__}: {exc}", type(exc).__name__
            )
        entries = [e for e in self._dispatch.entries if "on_error" in e.phases]
        if not entries:
            return
        assert self._worker is not None
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._grace):
            for entry in entries:
                try:
                    if entry.is_async:  # async or plain def, inside the graph
                        await call_async(
                            entry, "on_error", self._graph, exc, self._tf_sess
                        )
                    else:
                        await self._worker.call(
                            call_sync, entry, "on_error", exc, self._tf_sess
                        )
                except Exception:
                    logger.exception("Hook %s raised in on_error()", entry.name)

    async def _shutdown(self, exc: BaseException | None) -> None:
        """Stop the coordinator and queue runners, close the TF session and thread."""
        coord_error = await self._release_tf_session()
        if self._runners is not None:
            await self._runners.close()  # async sources shared across TF sessions
        worker = self._worker
        if worker is not None and not await worker.aclose(self._grace):
            logger.warning(
                "Worker thread %s is still busy inside TensorFlow after %.0fs; "
                "it is a daemon thread and exits when that call returns.",
                worker.name,
                self._grace,
            )
        use, self._graph_use = self._graph_use, None
        if use is not None:
            use.release(self._graph)
        if coord_error is None or coord_error is exc:
            return
        if self._recovery.enabled and is_preemption(coord_error):
            # TensorFlow's _RecoverableSession.close logs it: nothing to recover.
            _log_close_error(coord_error)
            return
        raise coord_error

    async def _release_tf_session(self) -> BaseException | None:
        """Join the queue runners and close the TF session; return the coord's error."""
        stepper, worker = self._stepper, self._worker
        sess = self._tf_sess
        if sess is None or stepper is None or worker is None:
            return None
        if worker.stuck:
            await stepper.interrupt_stuck_step(self._coord, self._grace)
        self._coord = stepper.session = None
        assert self._runners is not None
        error = await self._runners.stop()
        closed = await worker.call_within(self._grace, sess.close)
        if not closed.done:
            logger.warning(
                "Closing the TF session did not finish in %.0fs.", self._grace
            )
        elif closed.error is not None:
            _log_close_error(closed.error)
        return error

    def _spawn(self, fn: Any, *args: Any) -> None:
        """Start ``fn(*args)`` as a background task; it must not raise."""
        if self._task_group is None:
            raise SessionStateError("The session is not open.")
        self._task_group.start_soon(fn, *args)

    async def _close_task_group(self) -> None:
        stack, group = self._exit_stack, self._task_group
        self._exit_stack = self._task_group = None
        if stack is None or group is None:
            return
        group.cancel_scope.cancel()
        await stack.aclose()

    # -- session creation (one attempt; `Recovery` retries) -------------------------

    async def _create_tf_session(self) -> None:
        """Create a TF session once, start its runners, notify the hooks."""
        worker, stepper, runners = self._worker, self._stepper, self._runners
        assert worker is not None
        assert stepper is not None
        assert runners is not None
        sess = await self._creator.create_session()
        stepper.session = sess
        self._coord = Coordinator(clean_stop_exception_types=[])
        await runners.start(sess, self._coord)
        await self._log_creation(sess)
        await self._dispatch.call_in_order(
            "after_create_session", worker, sess, self._coord
        )

    async def _log_creation(self, sess: Any) -> None:
        restored = getattr(self._creator, "restored_checkpoint", None)
        step = await self._global_step(sess)
        at = "" if step is None else f" at global step {step}"
        if restored:
            logger.info("Session created: restored from %s%s.", restored, at)
        elif isinstance(self._creator, ChiefSessionCreator):
            logger.info("Session created: no checkpoint to restore; initialized%s.", at)
        else:
            logger.info("Session created by %s%s.", describe(self._creator), at)

    async def _global_step(self, sess: Any) -> int | None:
        tensor = v1.train.get_global_step(self._graph)
        if tensor is None:
            return None
        assert self._worker is not None
        try:
            return int(await self._worker.call(sess.run, tensor))
        except errors.FailedPreconditionError:  # not initialized: nothing to report
            return None

    # -- stopping ------------------------------------------------------------------

    def should_stop(self) -> bool:
        """Whether the loop should stop: a stop was requested, or the session closed.

        A plain method. True once a hook, the step function or `request_stop` asked
        to stop, the coordinator stopped, or the session is not open. As in
        TensorFlow, a coordinator stopped with an error makes this True and the
        error is raised by `close` (or ``async with`` exit); one stopped with a
        preemption error makes this False and the next call recreates the TF
        session. `SingularMonitoredSession` raises the coordinator's error here.
        """
        if self._state is not State.OPEN or self._stop is not None:
            return True
        coord = self._coord
        if coord is None or not coord.should_stop():
            return False
        error = held_error(coord)
        if error is not None and not self._recovery.enabled:
            raise error  # TensorFlow's _CoordinatedSession._check_stop
        if error is not None and is_preemption(error):
            self._recovery.pending = error
            return False
        detail = "The coordinator was asked to stop"
        self._stop = StopReason(
            "coordinator",
            f"{detail}." if error is None else f"{detail} by {error!r}.",
            None if error is None else type(error).__name__,
        )
        return True

    def request_stop(self) -> None:
        """Stop the loop after the current step; any task or thread may call it."""
        if self._stop is None:
            self._stop = StopReason("user", "request_stop() was called.", "user")

    def _note_end_of_input(self, exc: BaseException) -> None:
        source = source_of(exc)
        if source is not None:
            logger.warning(
                "%s raised by hook %s ended the session as end of input; if the hook "
                "did not mean the input was exhausted, this stop is an error: %s",
                type(exc).__name__,
                source,
                exc,
            )
        if self._stop is None or self._stop.kind in ("error", "coordinator"):
            self._stop = StopReason(
                "end_of_input", f"End of input ({type(exc).__name__}).", source
            )

    def _note_hook_stop(self, run_context: RunContext) -> None:
        if self._stop is None:
            who = run_context.stopped_by
            name = who if isinstance(who, str) else hook_name(who)
            self._stop = StopReason("hook", f"Hook {name} requested a stop.", name)

    # -- running -------------------------------------------------------------------

    def _check_can_run(self) -> None:
        broken = self._recovery.broken
        if broken is not None:
            raise SessionBrokenError(broken)
        if self._state is not State.OPEN:
            raise SessionStateError(
                f"run() called on a {self._state.name.lower()} session; open it with "
                "'async with' or 'await sess.open()' first, and do not use it after "
                "close."
            )
        assert self._bridge is not None
        self._bridge.check_current()
        stop = self._stop
        if stop is not None and stop.kind in ("hook", "user", "step_fn"):
            raise RunAfterStopError(stop.detail)

    async def run(
        self,
        fetches: Any,
        feed_dict: FeedDict | None = None,
        options: Any = None,
        run_metadata: Any = None,
    ) -> Any:
        """Run ops in the monitored session, like `tf.compat.v1.Session.run`.

        Awaits the hooks' ``before_run`` concurrently, merges their requests in
        hook order, runs one device step on the worker thread, awaits their
        ``after_run`` concurrently and returns the caller's results (same
        structures as `tf.compat.v1.Session.run`). Preemption errors recreate the
        TF session and retry.

        Raises:
          SessionStateError: the session is not open (`RunAfterStopError`: a stop
            was requested; `SessionBrokenError`: recovery failed), or is used
            from another thread or event loop (`WrongEventLoopError`).

        Cancellation: always yields, and the session stays usable. Cancelled
        during ``before_run``: no step runs. Cancelled during the device step: the
        step is given `step_cancel_grace` seconds to finish and this step's
        ``after_run`` is not called; a step still blocked inside TensorFlow after
        that is abandoned (its effects are unknown, the next step waits for it,
        and closing the session interrupts it). Cancelled during ``after_run``:
        the step ran.
        """
        self._check_can_run()
        lock, stepper = self._lock, self._stepper
        assert lock is not None
        assert stepper is not None
        # Only a caller that has to wait can see the state change meanwhile.
        waits = lock.locked()
        # Hooks' run_in_session_thread() finds this session's worker through it.
        token = current_worker.set(self._worker)
        try:
            async with lock:
                if waits:
                    self._check_can_run()
                return await self._recovery.call(
                    _STEP, stepper.run, fetches, feed_dict, options, run_metadata
                )
        finally:
            current_worker.reset(token)

    async def run_without_hooks(
        self,
        fetches: Any,
        feed_dict: FeedDict | None = None,
        options: Any = None,
        run_metadata: Any = None,
    ) -> Any:
        """Run fetches without calling any hook, keeping recovery and serialisation.

        For auxiliary runs (evaluate a metric, read a variable, feed an iterator
        handle) that must not trigger hooks (tensorflow#12343), instead of reaching
        for the raw session and losing recovery. Unlike `run`, it works after a
        stop was requested.

        Cancellation: as `run`.
        """
        self._check_unhooked()
        lock, stepper = self._lock, self._stepper
        assert lock is not None
        assert stepper is not None
        async with lock:
            return await self._recovery.call(
                _STEP,
                stepper.run_without_hooks,
                fetches,
                feed_dict,
                options,
                run_metadata,
            )

    @asynccontextmanager
    async def _unhooked_turn(self) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        """The session's next turn on the device, for `Batcher`: runs without hooks.

        Enters once earlier runs and training steps are done (in arrival order);
        yields ``run(fetches, feed_dict)``, which is `run_without_hooks` without
        the wait, so a caller can gather its feed when its turn has come.
        """
        self._check_unhooked()
        lock, stepper = self._lock, self._stepper
        assert lock is not None
        assert stepper is not None
        waits = lock.locked()
        async with lock:
            if waits:
                self._check_unhooked()
            yield functools.partial(
                self._recovery.call, _STEP, stepper.run_without_hooks
            )

    def _check_unhooked(self) -> None:
        if self._state is not State.OPEN or self._recovery.broken is not None:
            self._check_can_run()
        assert self._bridge is not None
        self._bridge.check_current()

    @property
    def _busy(self) -> bool:
        """Whether a step or run holds the device now, or waits for it."""
        lock = self._lock
        return lock is not None and lock.locked()

    # -- step functions -----------------------------------------------------------

    @overload
    async def run_step_fn(
        self, step_fn: Callable[[StepContext], Coroutine[Any, Any, T]]
    ) -> T | None: ...

    @overload
    async def run_step_fn(self, step_fn: Callable[[StepContext], T]) -> T | None: ...

    async def run_step_fn(self, step_fn: Callable[[StepContext], Any]) -> Any:
        """Run ``step_fn(step_context)``, a plain or an async function, with recovery.

        ``step_context.session`` is the raw `tf.compat.v1.Session`;
        ``step_context.run_with_hooks(...)`` is `run`; ``step_context.request_stop()``
        ends the step function, makes this return None and `should_stop` True. A
        plain ``step_fn`` runs on a worker thread (it may block); an async one runs
        in this task. After a preemption (in the step function or in a
        ``run_with_hooks`` it made) the step function is called again with the
        new session, as TensorFlow does (TensorFlow hands it the closed one).

        Returns:
          What ``step_fn`` returned, or None if it requested a stop.

        Cancellation: an async ``step_fn`` is cancelled with the caller. A plain one
        is given ``step_cancel_grace`` seconds to finish on its thread, then left
        to finish on its own while the cancellation propagates.
        """
        is_async = check_step_fn(step_fn)
        if self._state is not State.OPEN:
            self._check_can_run()
        token = current_worker.set(self._worker)
        try:
            return await self._recovery.call(
                _STEP_FN, self._step_fn_once, step_fn, is_async
            )
        finally:
            current_worker.reset(token)

    async def _step_fn_once(self, step_fn: Any, is_async: bool) -> Any:
        assert self._worker is not None
        try:
            return await call_step_fn(
                step_fn,
                is_async,
                self._tf_sess,
                self._run_in_step_fn,
                self._worker,
                self._step_cancel_grace,
            )
        except Exception as exc:
            if stop_requested_by(exc):
                if self._stop is None:
                    self._stop = StopReason(
                        "step_fn", "step_context.request_stop() was called.", "step_fn"
                    )
                return None
            better = explain_finalized(exc, "The step_fn")
            if better is not exc:
                raise better from exc
            raise

    async def _run_in_step_fn(
        self,
        fetches: Any,
        feed_dict: FeedDict | None = None,
        options: Any = None,
        run_metadata: Any = None,
    ) -> Any:
        """`run` without its own recovery: `run_step_fn` retries the whole step_fn."""
        self._check_can_run()
        assert self._lock is not None
        assert self._stepper is not None
        token = current_worker.set(self._worker)
        try:
            async with self._lock:
                return await self._stepper.run(
                    fetches, feed_dict, options, run_metadata
                )
        finally:
            current_worker.reset(token)


class SingularMonitoredSession(MonitoredSession):
    """A `MonitoredSession` without recovery, with access to the raw session.

    Same as TensorFlow's: always a `ChiefSessionCreator` built from the arguments;
    ``AbortedError``/``UnavailableError`` propagate instead of recreating the session.

    Args:
      hooks: asyncsess and/or TensorFlow `SessionRunHook` instances.
      scaffold: A `Scaffold` (a default one if None).
      master: The TensorFlow master to use.
      config: A `ConfigProto` for the session.
      checkpoint_dir: Directory to restore variables from.
      stop_grace_period_secs: Seconds given to threads to stop on close.
      checkpoint_filename_with_path: Full path of a checkpoint to restore from.

    Cancellation: as `MonitoredSession`.
    """

    _should_recover: ClassVar[bool] = False

    def __init__(
        self,
        hooks: Iterable[SessionRunHook | TFHook] | None = None,
        scaffold: Scaffold | None = None,
        master: str = "",
        config: Any = None,
        checkpoint_dir: str | None = None,
        stop_grace_period_secs: float = 120,
        checkpoint_filename_with_path: str | None = None,
        *,
        step_cancel_grace: float = 0.25,
        caller_thread_below: float = 1e-3,
    ) -> None:
        creator = ChiefSessionCreator(
            scaffold=scaffold,
            master=master,
            config=config,
            checkpoint_dir=checkpoint_dir,
            checkpoint_filename_with_path=checkpoint_filename_with_path,
        )
        super().__init__(
            creator,
            hooks,
            stop_grace_period_secs=stop_grace_period_secs,
            step_cancel_grace=step_cancel_grace,
            caller_thread_below=caller_thread_below,
        )

    def raw_session(self) -> Any:
        """The underlying `tf.compat.v1.Session`, or None when not open."""
        return self._tf_sess


def _log_close_error(error: BaseException) -> None:
    """TensorFlow's log line for an error closing a session (it does not raise)."""
    logger.error(
        "An error occurred when attempting to close the session. This may be due "
        "to a preemption in a connected worker or parameter server. Error: %s",
        error,
    )


def _seconds(name: str, value: object) -> float:
    """*value* as float seconds; a ValueError naming *name* unless a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(
            f"{name} must be a number of seconds >= 0; Received: {name}={value!r}"
        )
    return float(value)


def _hook_list(hooks: Any) -> list[Any]:
    """*hooks* as a list; a lone hook or a non-iterable is a TypeError naming it."""
    if hooks is None:
        return []
    if isinstance(hooks, (SessionRunHook, TFSessionRunHook, str)) or not hasattr(
        hooks, "__iter__"
    ):
        raise TypeError(
            "hooks must be a list of SessionRunHook instances; "
            f"Received: hooks={describe(hooks)}"
        )
    return list(hooks)
