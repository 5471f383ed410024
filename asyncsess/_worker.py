"""The session's worker thread: device steps and every blocking TensorFlow call.

One long-lived thread per session, with the session's graph as its default graph
for its whole life, so TF code on it always sees the right graph (TF's default
graph is thread-local). Jobs run one at a time in submission order.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

import anyio

from ._backend import Completion
from ._tf import Session, default_graph

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._backend import LoopBridge

logger = logging.getLogger("asyncsess")

_ids = itertools.count(1)
_STOP = object()


class WorkerThread:
    """A daemon thread running submitted callables inside *graph*."""

    def __init__(self, graph: Any, bridge: LoopBridge, name: str = "") -> None:
        self._graph = graph
        self._bridge = bridge
        self._jobs: SimpleQueue[Any] = SimpleQueue()
        #: Abandoned jobs still running (a cancelled step blocked inside TF).
        self._stuck: set[Completion] = set()
        self.name = name or f"asyncsess-worker-{next(_ids)}"
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        jobs, post = self._jobs, self._bridge.post
        deliver = self._deliver
        with self._graph.as_default():
            while True:
                job = jobs.get()
                if job is _STOP:
                    return
                completion, fn, args = job
                try:
                    completion.value = fn(*args)
                except BaseException as exc:
                    completion.error = exc
                if completion.abandoned:
                    self._stuck.discard(completion)
                    _close_abandoned(completion)
                else:
                    post(deliver, completion)

    def _deliver(self, completion: Completion) -> None:
        # Runs on the loop thread. The caller may have given up on the job after
        # the thread looked at `abandoned`: then close what it produced here.
        if completion.abandoned:
            completion.done = True
            self._stuck.discard(completion)
            self.abandon(completion)
        else:
            self._bridge.deliver(completion)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Completion:
        """Queue ``fn(*args)`` on the thread; its outcome arrives in the Completion."""
        completion = Completion()
        self._jobs.put((completion, fn, args))
        return completion

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the thread and return its result.

        Cancellation: waits for the job (it cannot be interrupted) only if the
        caller is not cancelled; a cancelled caller returns at once while the job
        finishes on the thread. Use `WorkerThread.submit` and `wait` to decide.
        """
        if self._stuck:
            # The thread is held by an abandoned job (a cancelled step blocked in
            # TF): run this one beside it. TF sessions are thread-safe, so a hook
            # can still save or flush (tests/test_cancellation.py).
            return await anyio.to_thread.run_sync(
                self._in_graph, fn, args, abandon_on_cancel=True
            )
        completion = self.submit(fn, *args)
        try:
            await self._bridge.wait(completion)
        except BaseException:
            self.abandon(completion)
            raise
        return completion.result()

    def _in_graph(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        with self._graph.as_default():
            return fn(*args)

    @property
    def stuck(self) -> bool:
        """Whether an abandoned job still holds the thread."""
        return bool(self._stuck)

    def abandon(self, completion: Completion) -> None:
        """Nobody will read *completion*: close a TF session it produces."""
        if not completion.done and not completion.abandoned:
            self._stuck.add(completion)
        completion.abandoned = True
        if completion.done and isinstance(completion.value, Session):
            self.submit(_close_quietly, completion.value)

    def stop(self) -> None:
        """Ask the thread to exit once the jobs already queued are done."""
        self._jobs.put(_STOP)

    def is_alive(self) -> bool:
        """Whether the thread is still running."""
        return self._thread.is_alive()

    def join(self, timeout: float | None) -> bool:
        """Wait (blocking) for the thread to exit; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _close_quietly(sess: Any) -> None:
    try:
        sess.close()
    except Exception:
        logger.debug("Closing an abandoned session failed", exc_info=True)


def _close_abandoned(completion: Completion) -> None:
    if isinstance(completion.value, Session):
        logger.info("Closing a session whose creation was cancelled.")
        _close_quietly(completion.value)
    completion.value = completion.error = None


#: The worker thread of the session whose code is running in this task.
current_worker: contextvars.ContextVar[WorkerThread | None] = contextvars.ContextVar(
    "asyncsess_current_worker", default=None
)


async def run_in_session_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking TensorFlow code on the current session's worker thread.

    For hooks and session creators: inside a `MonitoredSession` method (a hook's
    ``after_run``, ``end``, a creator's ``create_session`` ...) ``fn(*args)`` runs on
    that session's worker thread, with its graph as the default graph and in order
    with its device steps. Outside a session it runs on an anyio worker thread,
    inside the calling thread's default graph.

    Cancellation: returns at once when cancelled; ``fn`` still runs to its end on
    the thread (TensorFlow calls cannot be interrupted) and a `tf.compat.v1.Session`
    it returns is closed.
    """
    worker = current_worker.get()
    if worker is not None:
        return await worker.call(fn, *args)
    graph = default_graph()

    def in_graph() -> Any:
        with graph.as_default():
            return fn(*args)

    return await anyio.to_thread.run_sync(in_graph)
