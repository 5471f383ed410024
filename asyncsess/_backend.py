"""The loop side of a thread hand-off, one implementation per anyio backend.

A worker thread finishes a job and *posts* a callback to the event loop; the task
waiting for the job is woken by it. This is the cheapest hand-off each backend
offers (``call_soon_threadsafe`` resolving a bare Future on asyncio,
``run_sync_soon`` + ``reschedule`` on trio): measured in
benchmarks/bench_step.py, it costs less than ``anyio.to_thread.run_sync``, which
goes through a limiter and a shared pool (../shared/reference/peers.md, section 4).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import sniffio

from ._exceptions import WrongEventLoopError

if TYPE_CHECKING:
    from collections.abc import Callable


class Completion:
    """The outcome of one job handed to a worker thread."""

    __slots__ = ("abandoned", "done", "error", "value", "waiter")

    def __init__(self) -> None:
        self.done = False
        self.abandoned = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiter: Any = None

    def result(self) -> Any:
        """The job's return value, or raise its exception."""
        if self.error is not None:
            error, self.error = self.error, None  # drop the traceback cycle
            raise error
        return self.value


class LoopBridge:
    """What a worker thread needs to wake a task of one event loop."""

    backend: str
    thread_id: int

    def post(self, callback: Callable[..., None], arg: Any) -> None:
        """Schedule ``callback(arg)`` on the loop thread; a closed loop drops it."""
        raise NotImplementedError

    async def wait(self, completion: Completion) -> None:
        """Wait until *completion* is done. Cancellable: the job goes on."""
        raise NotImplementedError

    def deliver(self, completion: Completion) -> None:
        """Mark *completion* done and wake its waiter (runs on the loop thread)."""
        raise NotImplementedError

    def check_current(self) -> None:
        """Raise RuntimeError unless called from this bridge's loop and thread."""
        if threading.get_ident() != self.thread_id:
            raise WrongEventLoopError(
                "This session was opened in another thread; use it only from the "
                "thread and event loop that opened it."
            )


class _AsyncioBridge(LoopBridge):
    def __init__(self) -> None:
        import asyncio

        self.backend = "asyncio"
        self.thread_id = threading.get_ident()
        self._asyncio = asyncio
        self._loop = asyncio.get_running_loop()

    def post(self, callback: Callable[..., None], arg: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, arg)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    async def wait(self, completion: Completion) -> None:
        if completion.done:
            return
        future = self._loop.create_future()
        completion.waiter = future
        try:
            await future
        finally:
            completion.waiter = None

    def deliver(self, completion: Completion) -> None:
        completion.done = True
        future = completion.waiter
        if future is not None and not future.done():
            future.set_result(None)

    def check_current(self) -> None:
        super().check_current()
        try:
            loop = self._asyncio.get_running_loop()
        except RuntimeError:  # another event loop library (trio) runs this call
            loop = None
        if loop is not self._loop:
            raise WrongEventLoopError(
                "This session was opened in another event loop; use it only from "
                "the event loop that opened it."
            )


class _TrioBridge(LoopBridge):
    def __init__(self) -> None:
        import trio

        self.backend = "trio"
        self.thread_id = threading.get_ident()
        self._lowlevel = trio.lowlevel
        self._token = trio.lowlevel.current_trio_token()
        self._aborted = trio.lowlevel.Abort.SUCCEEDED

    def post(self, callback: Callable[..., None], arg: Any) -> None:
        try:
            self._token.run_sync_soon(callback, arg)
        except RuntimeError:  # trio.RunFinishedError: the run is over
            pass

    async def wait(self, completion: Completion) -> None:
        lowlevel = self._lowlevel
        if completion.done:
            await lowlevel.checkpoint()
            return
        completion.waiter = lowlevel.current_task()

        def abort(_: Any) -> Any:
            completion.waiter = None
            return self._aborted

        await lowlevel.wait_task_rescheduled(abort)

    def deliver(self, completion: Completion) -> None:
        completion.done = True
        task = completion.waiter
        if task is not None:
            completion.waiter = None
            self._lowlevel.reschedule(task)

    def check_current(self) -> None:
        super().check_current()
        try:
            token = self._lowlevel.current_trio_token()
        except RuntimeError:  # another event loop library (asyncio) runs this call
            token = None
        if token is not self._token:
            raise WrongEventLoopError(
                "This session was opened in another event loop (another trio run); "
                "use it only from the trio run that opened it."
            )


def current_bridge() -> LoopBridge:
    """A bridge to the running event loop (asyncio or trio)."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        return _AsyncioBridge()
    if library == "trio":
        return _TrioBridge()
    raise RuntimeError(f"asyncsess runs on asyncio or trio; Received: {library!r}.")
