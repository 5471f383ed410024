"""The session's worker thread: device steps and every blocking TensorFlow call.

One long-lived thread per session, with the session's graph as its default graph
for its whole life, so TF code on it always sees the right graph (TF's default
graph is thread-local). Jobs run one at a time in submission order. Every thread
asyncsess starts (queue runners, background checkpoint writes, plain step
functions) is one of these, so they all hand results back the same way and are
waited for, bounded or abandoned through the same few calls.
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


class WorkerThread:
    """A daemon thread running submitted callables inside *graph*, in order.

    `submit` queues a job and returns its `Completion`; `call` awaits one;
    `call_within` and `settle` wait a bounded time and abandon what is still
    running; `stop` ends the thread after the jobs already queued and `aclose`
    waits for that, bounded.

    Cancellation: a job cannot be interrupted (TensorFlow calls do not return
    early). Every awaiting method returns when cancelled; the job goes on and
    whatever TF session it returns is closed (`abandon`).
    """

    def __init__(self, graph: Any, bridge: LoopBridge, name: str = "") -> None:
        self._graph = graph
        self._bridge = bridge
        self._jobs: SimpleQueue[Any] = SimpleQueue()
        #: Abandoned jobs still running (a cancelled step blocked inside TF).
        self._stuck: set[Completion] = set()
        #: Runs jobs while this thread is stuck, and plain step functions.
        self._spare: WorkerThread | None = None
        #: Done once the thread has left its loop (set by `stop`).
        self._exited: Completion | None = None
        self.name = name or f"asyncsess-worker-{next(_ids)}"
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        jobs, post = self._jobs, self._bridge.post
        deliver = self._deliver
        with self._graph.as_default():
            while True:
                completion, fn, args = jobs.get()
                if fn is None:  # stop(): the last job
                    post(deliver, completion)
                    return
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

    @property
    def graph(self) -> Any:
        """The graph every job runs in."""
        return self._graph

    @property
    def bridge(self) -> LoopBridge:
        """The event loop this thread hands its results to."""
        return self._bridge

    def submit(self, fn: Callable[..., Any], *args: Any) -> Completion:
        """Queue ``fn(*args)`` on the thread; its outcome arrives in the Completion."""
        completion = Completion()
        self._jobs.put((completion, fn, args))
        return completion

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the thread and return its result.

        While an abandoned job holds the thread (a cancelled step blocked in
        TF), the job runs on a spare thread beside it instead: TF sessions are
        thread-safe, so a hook can still save or flush (tests/test_worker.py).

        Cancellation: returns at once; the job finishes on the thread.
        """
        if self._stuck:
            return await self.free().call(fn, *args)
        completion = self.submit(fn, *args)
        try:
            await self._bridge.wait(completion)
        except BaseException:
            self.abandon(completion)
            raise
        return completion.result()

    async def call_within(
        self, grace: float, fn: Callable[..., Any], *args: Any
    ) -> Completion:
        """Run ``fn(*args)``, waiting at most *grace* seconds; abandon it after.

        Returns the job's `Completion`: ``done`` says whether it finished in
        time; then ``value``/``error`` hold its outcome, not raised.

        Cancellation: as `settle`.
        """
        completion = self.submit(fn, *args)
        await self.settle(completion, grace)
        return completion

    async def settle(self, completion: Completion, grace: float) -> bool:
        """Wait at most *grace* seconds for a submitted job; abandon it after.

        Returns whether it finished. An abandoned job keeps the thread until it
        returns; what it produces is dropped (a TF session it returns is closed).

        Cancellation: a cancelled caller abandons the job and re-raises.
        """
        try:
            with anyio.move_on_after(grace):
                await self._bridge.wait(completion)
        finally:
            if not completion.done:
                self.abandon(completion)
        return completion.done

    async def barrier(self, grace: float) -> bool:
        """Wait at most *grace* seconds for the jobs queued so far to return."""
        return (await self.call_within(grace, _nothing)).done

    @property
    def stuck(self) -> bool:
        """Whether an abandoned job still holds the thread."""
        return bool(self._stuck)

    def spare(self) -> WorkerThread:
        """A second thread of the same graph (created once, closed with this one)."""
        if self._spare is None:
            self._spare = WorkerThread(
                self._graph, self._bridge, name=f"{self.name}-spare"
            )
        return self._spare

    def free(self) -> WorkerThread:
        """This thread, or while an abandoned job holds it, the first free spare."""
        return self if not self._stuck else self.spare().free()

    def abandon(self, completion: Completion) -> None:
        """Nobody will read *completion*: close a TF session it produces."""
        if not completion.done and not completion.abandoned:
            self._stuck.add(completion)
        completion.abandoned = True
        if completion.done and isinstance(completion.value, Session):
            self.submit(_close_quietly, completion.value)

    def stop(self) -> Completion:
        """End the thread once the jobs already queued are done.

        Returns a `Completion` that is done when the thread has left its loop.
        Stopping again returns the same one.
        """
        if self._exited is None:
            self._exited = Completion()
            self._jobs.put((self._exited, None, ()))
        if self._spare is not None:
            self._spare.stop()
        return self._exited

    async def aclose(self, grace: float) -> bool:
        """Stop the thread (and its spare) and wait at most *grace* seconds.

        Returns whether the threads exited. One still busy inside TensorFlow is a
        daemon thread: it exits when that call returns; nothing blocks the loop.

        Cancellation: returns at once; the threads still stop after their jobs.
        """
        exited = self.stop()
        spare = self._spare
        with anyio.move_on_after(grace):
            await self._bridge.wait(exited)
            if spare is not None:
                await spare.aclose(grace)
        # Past its last job the thread only has to return: a short join.
        closed = (
            exited.done
            and self.join(timeout=0.5)
            and (spare is None or not spare.is_alive())
        )
        if closed:
            # Nothing runs in the graph any more. Let it go: on asyncio a
            # cancelled timer keeps its task's context (current_worker, hence
            # this thread object) until its deadline, which would pin a closed
            # model version's graph for up to stop_grace_period_secs.
            self._graph = None
        return closed

    def is_alive(self) -> bool:
        """Whether the thread is still running."""
        return self._thread.is_alive()

    def join(self, timeout: float | None) -> bool:
        """Wait (blocking) for the thread to exit; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _nothing() -> None:
    """A no-op job: its completion marks that earlier jobs have returned."""


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
    abandoned = False

    def in_graph() -> Any:
        with graph.as_default():
            value = fn(*args)
        if abandoned and isinstance(value, Session):
            _close_quietly(value)
        return value

    try:
        return await anyio.to_thread.run_sync(in_graph, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        abandoned = True
        raise
