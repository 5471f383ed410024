"""Completion and LoopBridge: waking a task of either event loop from a thread."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio

from asyncsess._backend import Completion, LoopBridge, current_bridge


def post_from_thread(bridge: LoopBridge, callback: Any, arg: Any) -> None:
    """Call ``bridge.post(callback, arg)`` from a fresh thread; re-raise its error."""
    errors: list[BaseException] = []

    def post() -> None:
        try:
            bridge.post(callback, arg)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


class TestCompletion:
    def test_starts_pending(self) -> None:
        completion = Completion()
        assert not completion.done
        assert not completion.abandoned
        assert completion.value is None
        assert completion.error is None
        assert completion.waiter is None

    def test_result_returns_the_value(self) -> None:
        completion = Completion()
        completion.value = 42
        assert completion.result() == 42
        assert completion.result() == 42

    def test_result_raises_the_error_once_and_drops_it(self) -> None:
        completion = Completion()
        error = ValueError("boom")
        completion.error = error
        with pytest.raises(ValueError, match="boom") as info:
            completion.result()
        assert info.value is error
        assert completion.error is None  # no traceback cycle kept alive
        assert completion.result() is None

    def test_result_raises_base_exceptions_too(self) -> None:
        completion = Completion()
        completion.error = KeyboardInterrupt("stop")
        with pytest.raises(KeyboardInterrupt, match="stop"):
            completion.result()


class TestCurrentBridge:
    async def test_matches_the_running_backend(self, anyio_backend: str) -> None:
        bridge = current_bridge()
        assert bridge.backend == anyio_backend
        assert bridge.thread_id == threading.get_ident()
        bridge.check_current()  # the loop thread that made it: no error

    def test_outside_an_event_loop_raises(self) -> None:
        with pytest.raises(sniffio.AsyncLibraryNotFoundError, match="unknown async"):
            current_bridge()


class TestWake:
    async def test_post_from_another_thread_wakes_the_waiter(self) -> None:
        bridge = current_bridge()
        completion = Completion()
        woken = anyio.Event()

        async def waiter() -> None:
            await bridge.wait(completion)
            woken.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert completion.waiter is not None
            assert not woken.is_set()
            post_from_thread(bridge, bridge.deliver, completion)
        assert woken.is_set()
        assert completion.done

    async def test_post_runs_the_callback_on_the_loop_thread(self) -> None:
        bridge = current_bridge()
        seen: list[tuple[Any, int]] = []
        ran = anyio.Event()

        def callback(arg: Any) -> None:
            seen.append((arg, threading.get_ident()))
            ran.set()

        post_from_thread(bridge, callback, "payload")
        await ran.wait()
        assert seen == [("payload", threading.get_ident())]

    async def test_a_completion_delivered_before_the_wait(self) -> None:
        bridge = current_bridge()
        completion = Completion()
        bridge.deliver(completion)  # nobody waits yet: only marks it done
        assert completion.done
        await bridge.wait(completion)
        assert completion.waiter is None

    async def test_an_already_done_completion_returns(self) -> None:
        bridge = current_bridge()
        completion = Completion()
        completion.done = True
        completion.value = "v"
        await bridge.wait(completion)
        assert completion.result() == "v"

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_on_trio_a_done_wait_still_checkpoints(self) -> None:
        # trio's rule: every async call of the library is a checkpoint, so a
        # cancelled caller sees the cancellation even when nothing was waited for.
        bridge = current_bridge()
        completion = Completion()
        completion.done = True
        with anyio.CancelScope() as scope:
            scope.cancel()
            await bridge.wait(completion)
        assert scope.cancelled_caught


class TestCancelledWaiter:
    async def test_waiter_is_cleared_and_a_later_deliver_is_harmless(self) -> None:
        bridge = current_bridge()
        completion = Completion()
        after_wait: list[str] = []

        async def waiter(scope: anyio.CancelScope) -> None:
            with scope:
                await bridge.wait(completion)
                after_wait.append("woken")  # never: the wait was cancelled

        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            tg.start_soon(waiter, scope)
            await anyio.wait_all_tasks_blocked()
            assert completion.waiter is not None
            scope.cancel()
        assert scope.cancelled_caught
        assert completion.waiter is None
        assert not completion.done
        # The job finishes later: its delivery must neither raise nor wake anyone.
        bridge.deliver(completion)
        assert completion.done
        post_from_thread(bridge, bridge.deliver, completion)
        await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()
        assert after_wait == []

    async def test_a_new_wait_after_a_cancelled_one(self) -> None:
        bridge = current_bridge()
        completion = Completion()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await bridge.wait(completion)
        assert completion.waiter is None
        woken = anyio.Event()

        async def waiter() -> None:
            await bridge.wait(completion)
            woken.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            post_from_thread(bridge, bridge.deliver, completion)
        assert woken.is_set()


class TestCheckCurrent:
    async def test_from_another_thread_raises(self) -> None:
        bridge = current_bridge()
        with pytest.raises(RuntimeError, match="opened in another thread; use it only"):
            await anyio.to_thread.run_sync(bridge.check_current)

    def test_from_another_event_loop_raises(self, anyio_backend: str) -> None:
        async def make() -> LoopBridge:
            return current_bridge()

        async def check(bridge: LoopBridge) -> None:
            bridge.check_current()

        bridge = anyio.run(make, backend=anyio_backend)
        for backend in ("asyncio", "trio"):
            with pytest.raises(RuntimeError, match="opened in another event loop"):
                anyio.run(check, bridge, backend=backend)


class TestAfterTheLoop:
    def test_post_after_the_loop_closed_is_dropped(self, anyio_backend: str) -> None:
        async def make() -> LoopBridge:
            return current_bridge()

        bridge = anyio.run(make, backend=anyio_backend)
        called: list[Any] = []
        bridge.post(called.append, "late")  # no error: nobody waits any more
        post_from_thread(bridge, called.append, "later")
        assert called == []
