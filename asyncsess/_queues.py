"""Queue runners of one TF session: started after creation, stopped on close.

The graph's QUEUE_RUNNERS collection (TensorFlow's QueueRunners) and its
`AsyncQueueRunner`s are started for each TF session, after its creation and after
every recovery, as tasks of the session; each enqueue loop runs on a thread of
its own. They are stopped when the session closes or is recreated, within the
grace period: TensorFlow's ``_close_on_stop`` trick (run every queue's cancel op
once the coordinator stops) unblocks enqueues waiting on a full queue and
dequeues waiting on an empty one, and a runner still running after the grace
period is reported by name, never waited on forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ._async_queue_runner import ASYNC_QUEUE_RUNNERS, AsyncQueueRunner
from ._backend import current_bridge
from ._tf import errors, plain_queue_runner, session_closed, v1
from ._worker import WorkerThread

if TYPE_CHECKING:
    from ._backend import Completion, LoopBridge

logger = logging.getLogger("asyncsess")

#: Starts ``fn(*args)`` as a background task of the session.
Spawn = Callable[..., None]


@dataclass(slots=True)
class _Launch:
    """The runner threads and tasks started for one TF session."""

    sess: Any
    coord: Any
    bridge: LoopBridge
    threads: list[WorkerThread] = field(default_factory=list)
    scopes: list[anyio.CancelScope] = field(default_factory=list)
    tasks_left: int = 0
    tasks_done: anyio.Event = field(default_factory=anyio.Event)
    tf_threads: list[threading.Thread] = field(default_factory=list)


class QueueRunners:
    """The queue runners started for one TF session and its coordinator."""

    def __init__(
        self,
        graph: Any,
        worker: WorkerThread,
        spawn: Spawn,
        grace: float,
    ) -> None:
        self._graph = graph
        self._worker = worker
        self._spawn = spawn
        self._grace = grace
        self._coord: Any = None
        self._launch: _Launch | None = None
        self._started: dict[AsyncQueueRunner, None] = {}  # ordered set

    async def start(self, sess: Any, coord: Any) -> None:
        """Start every queue runner of the graph for *sess*, reporting to *coord*.

        Cancellation: does not yield; the threads and tasks it starts are
        stopped by `stop`.
        """
        self._coord = coord
        tf_runners = self._graph.get_collection(v1.GraphKeys.QUEUE_RUNNERS)
        async_runners = self._graph.get_collection(ASYNC_QUEUE_RUNNERS)
        if not tf_runners and not async_runners:
            return
        launch = self._launch = _Launch(sess, coord, current_bridge())
        runners = [*tf_runners, *async_runners]
        cancel_ops = [r.cancel_op for r in runners if getattr(r, "cancel_op", None)]
        self._thread(launch, "asyncsess-queue-runners-close-on-stop").submit(
            _close_on_stop, sess, coord, cancel_ops
        )
        for runner in tf_runners:
            self._start_tf_runner(launch, runner)
        for runner in async_runners:
            self._started[runner] = None
            thread = self._thread(launch, f"asyncsess-queue-runner-{runner.name}")
            self._task(launch, runner._run, sess, coord, thread, launch.bridge)

    def _thread(self, launch: _Launch, name: str) -> WorkerThread:
        thread = WorkerThread(self._graph, launch.bridge, name=name)
        launch.threads.append(thread)
        return thread

    def _task(
        self, launch: _Launch, fn: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        scope = anyio.CancelScope()
        launch.scopes.append(scope)
        launch.tasks_left += 1
        self._spawn(_run_task, launch, scope, fn, *args)

    def _start_tf_runner(self, launch: _Launch, runner: Any) -> None:
        if not plain_queue_runner(runner):
            # A subclass with its own loop (feed functions, say): TF's threads.
            launch.tf_threads.extend(
                runner.create_threads(
                    launch.sess, coord=launch.coord, daemon=True, start=True
                )
            )
            return
        counter = _Countdown(len(runner.enqueue_ops))
        for op in runner.enqueue_ops:
            name = f"asyncsess-queue-runner-{runner.name}-{op.name}"
            loop = self._thread(launch, name).submit(
                _enqueue_loop, launch.sess, launch.coord, runner, op, counter
            )
            self._task(launch, launch.bridge.wait, loop)

    async def stop(self) -> BaseException | None:
        """Stop the runners within the grace period; return the coordinator's error.

        Cancellation: call it shielded; it is bounded by the grace period.
        """
        coord, launch = self._coord, self._launch
        self._coord, self._launch = None, None
        if coord is None:
            return None
        coord.request_stop()  # wakes the close-on-stop thread: queues get cancelled
        if launch is not None:
            await self._stop_launch(launch)
        threads = launch.tf_threads if launch is not None else []
        joined = await self._worker.call_within(
            self._grace, _join, coord, threads, self._grace
        )
        result: BaseException | None = joined.value if joined.done else None
        return result

    async def _stop_launch(self, launch: _Launch) -> None:
        for scope in launch.scopes:
            scope.cancel()
        lasts: list[tuple[WorkerThread, Completion]] = [
            (thread, thread.stop()) for thread in launch.threads
        ]
        with anyio.move_on_after(self._grace):
            for _, last in lasts:
                await launch.bridge.wait(last)
            if launch.tasks_left:
                await launch.tasks_done.wait()
        late = [thread.name for thread, last in lasts if not last.done]
        if late:
            logger.warning(
                "Queue runner threads still running %.0fs after the stop request: "
                "%s. Closing the TF session interrupts them.",
                self._grace,
                ", ".join(late),
            )
        for thread, last in lasts:
            if last.done:
                thread.join(1.0)  # it is past its last job: exits at once

    async def close(self) -> None:
        """Close the source iterators shared across TF sessions (the session ends).

        Cancellation: call it shielded; each close is bounded.
        """
        runners, self._started = list(self._started), {}
        for runner in runners:
            await runner._aclose_source()


async def _run_task(
    launch: _Launch,
    scope: anyio.CancelScope,
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
) -> None:
    """A queue runner task: *fn* until done or cancelled by `QueueRunners.stop`."""
    try:
        with scope:
            await fn(*args)
    except Exception:  # the runners report to the coordinator; this is a bug
        logger.exception("Queue runner task %r failed", fn)
    finally:
        launch.tasks_left -= 1
        if not launch.tasks_left:
            launch.tasks_done.set()


class _Countdown:
    """The enqueue threads of one TF QueueRunner still running (thread-safe)."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._lock = threading.Lock()

    def finish(self) -> bool:
        """Count one thread out; True for the last one."""
        with self._lock:
            self._count -= 1
            return self._count == 0


def _enqueue_loop(
    sess: Any, coord: Any, runner: Any, op: Any, left: _Countdown
) -> None:
    """TensorFlow's QueueRunner._run, on our thread, quiet about shutdown errors."""
    counted = False
    try:
        enqueue = sess.make_callable(op)
        while not coord.should_stop():
            try:
                enqueue()
            except runner.queue_closed_exception_types:
                # The queue is closed: this thread is done; the last one closes
                # the queue it feeds, keeping pending elements for consumers.
                counted = True
                if left.finish():
                    _run_quietly(sess, runner.close_op)
                return
    except Exception as exc:
        if coord.should_stop() or _is_shutdown(exc, sess):
            # The stop request cancelled the enqueue (tensorflow#20844): no noise.
            logger.debug("Queue runner %s stopped: %r", runner.name, exc)
        else:
            coord.request_stop(exc)
    finally:
        if not counted:
            left.finish()


def _is_shutdown(exc: BaseException, sess: Any) -> bool:
    """An error TensorFlow raises only because the queue or session was closed."""
    if isinstance(exc, errors.CancelledError):
        return True
    return isinstance(exc, RuntimeError) and session_closed(sess)


def _close_on_stop(sess: Any, coord: Any, cancel_ops: list[Any]) -> None:
    """Once the coordinator stops, close every queue, cancelling pending enqueues."""
    coord.wait_for_stop()
    for op in cancel_ops:
        _run_quietly(sess, op)


def _run_quietly(sess: Any, op: Any) -> None:
    try:
        sess.run(op)
    except Exception as exc:  # TensorFlow ignores these too
        logger.debug("Ignored exception closing a queue: %r", exc)


def _join(coord: Any, threads: list[Any], grace: float) -> BaseException | None:
    """Join the threads within *grace*; return (not raise) the coordinator's error."""
    try:
        coord.join(threads, stop_grace_period_secs=grace, ignore_live_threads=True)
    except Exception as exc:
        return exc
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        logger.warning(
            "Queue runner threads still running after %.0fs: %s",
            grace,
            ", ".join(alive),
        )
    return None
