"""WorkerThread: jobs in order inside the graph, bounded waits, abandoned jobs."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import tensorflow as tf

from asyncsess._backend import current_bridge
from asyncsess._worker import WorkerThread, current_worker, run_in_session_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

v1 = tf.compat.v1

pytestmark = pytest.mark.usefixtures("no_thread_leaks")

#: Long enough for a queued no-op job on an idle thread; only ever waited in
#: full by a test that fails.
GENEROUS = 30.0
#: How long a bounded wait lasts for a job that is blocked on an event.
SHORT = 0.05


@pytest.fixture(scope="module")
def graph() -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        tf.constant(2.0, name="two")
    return graph


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event jobs block on; always set at the end so no thread stays blocked."""
    event = threading.Event()
    try:
        yield event
    finally:
        event.set()


@pytest.fixture
async def worker(
    graph: tf.Graph, release: threading.Event
) -> AsyncIterator[WorkerThread]:
    worker = WorkerThread(graph, current_bridge(), name="asyncsess-test-worker")
    try:
        yield worker
    finally:
        release.set()
        assert await worker.aclose(GENEROUS)
        assert not worker.is_alive()


def blocked(release: threading.Event, started: threading.Event | None = None) -> Any:
    """A job that holds its thread until *release* is set."""

    def job() -> str:
        if started is not None:
            started.set()
        if not release.wait(GENEROUS):
            raise TimeoutError("the test never released the job")
        return "released"

    return job


def is_closed(sess: Any) -> bool:
    try:
        sess.run("two:0")
    except RuntimeError as exc:
        return "closed Session" in str(exc)
    return False


class TestJobs:
    async def test_jobs_run_in_submission_order(self, worker: WorkerThread) -> None:
        order: list[int] = []
        completions = [worker.submit(order.append, i) for i in range(5)]
        assert await worker.call(order.append, 5) is None
        assert order == [0, 1, 2, 3, 4, 5]
        assert all(c.done for c in completions)

    async def test_jobs_run_on_the_thread_inside_the_graph(
        self, worker: WorkerThread, graph: tf.Graph
    ) -> None:
        assert worker.graph is graph
        assert v1.get_default_graph() is not graph
        assert await worker.call(v1.get_default_graph) is graph
        thread = await worker.call(threading.current_thread)
        assert thread.name == "asyncsess-test-worker" == worker.name
        assert thread is not threading.current_thread()
        assert thread.daemon

    async def test_unnamed_workers_get_distinct_names(self, graph: tf.Graph) -> None:
        first = WorkerThread(graph, current_bridge())
        second = WorkerThread(graph, current_bridge())
        try:
            assert first.name.startswith("asyncsess-worker-")
            assert first.name != second.name
            assert first.bridge.backend == second.bridge.backend
        finally:
            assert await first.aclose(GENEROUS)
            assert await second.aclose(GENEROUS)

    async def test_call_returns_the_value(self, worker: WorkerThread) -> None:
        assert await worker.call(pow, 2, 10) == 1024

    async def test_call_raises_the_error_with_its_type(
        self, worker: WorkerThread
    ) -> None:
        def fail() -> None:
            raise tf.errors.OutOfRangeError(None, None, "input exhausted")

        with pytest.raises(tf.errors.OutOfRangeError, match="input exhausted"):
            await worker.call(fail)
        assert await worker.call(len, "ok") == 2  # the thread goes on

    async def test_a_tf_session_runs_on_the_thread(
        self, worker: WorkerThread, graph: tf.Graph
    ) -> None:
        sess = await worker.call(v1.Session)
        try:
            assert sess.graph is graph
            assert await worker.call(sess.run, "two:0") == 2.0
        finally:
            await worker.call(sess.close)


class TestBounded:
    async def test_call_within_a_job_that_finishes(self, worker: WorkerThread) -> None:
        completion = await worker.call_within(GENEROUS, pow, 3, 2)
        assert completion.done
        assert not completion.abandoned
        assert completion.value == 9
        assert completion.error is None

    async def test_call_within_keeps_the_error_unraised(
        self, worker: WorkerThread
    ) -> None:
        completion = await worker.call_within(GENEROUS, int, "x")
        assert completion.done
        assert isinstance(completion.error, ValueError)
        with pytest.raises(ValueError, match="invalid literal"):
            completion.result()

    async def test_call_within_abandons_a_job_blocked_past_grace(
        self, worker: WorkerThread, release: threading.Event
    ) -> None:
        completion = await worker.call_within(SHORT, blocked(release))
        assert not completion.done
        assert completion.abandoned
        assert worker.stuck
        release.set()
        assert await worker.barrier(GENEROUS)  # queued behind the abandoned job
        assert not worker.stuck
        assert completion.value is None  # an abandoned job's outcome is dropped
        assert not completion.done

    async def test_settle(self, worker: WorkerThread, release: threading.Event) -> None:
        quick = worker.submit(pow, 2, 3)
        assert await worker.settle(quick, GENEROUS)
        assert quick.result() == 8
        slow = worker.submit(blocked(release))
        assert not await worker.settle(slow, SHORT)
        assert slow.abandoned
        assert worker.stuck

    async def test_a_cancelled_settle_abandons_the_job(
        self, worker: WorkerThread, release: threading.Event
    ) -> None:
        completion = worker.submit(blocked(release))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await worker.settle(completion, GENEROUS)
        assert scope.cancelled_caught
        assert completion.abandoned
        assert worker.stuck

    async def test_barrier_waits_for_the_jobs_queued_before_it(
        self, worker: WorkerThread
    ) -> None:
        order: list[int] = []
        for i in range(3):
            worker.submit(order.append, i)
        assert await worker.barrier(GENEROUS)
        assert order == [0, 1, 2]

    async def test_barrier_behind_a_blocked_job(
        self, worker: WorkerThread, release: threading.Event
    ) -> None:
        worker.submit(blocked(release))
        assert not await worker.barrier(SHORT)
        release.set()
        assert await worker.barrier(GENEROUS)


class TestStop:
    async def test_stop_is_done_once_the_thread_exits(self, graph: tf.Graph) -> None:
        worker = WorkerThread(graph, current_bridge())
        order: list[int] = []
        worker.submit(order.append, 1)
        exited = worker.stop()
        assert worker.stop() is exited  # stopping again: the same completion
        await worker.bridge.wait(exited)
        assert exited.done
        assert order == [1]  # jobs queued before stop() ran first
        assert worker.join(GENEROUS)
        assert not worker.is_alive()

    async def test_aclose_returns_true_once_the_thread_exited(
        self, graph: tf.Graph
    ) -> None:
        worker = WorkerThread(graph, current_bridge())
        assert await worker.aclose(GENEROUS)
        assert not worker.is_alive()
        assert await worker.aclose(GENEROUS)  # idempotent

    async def test_aclose_returns_false_while_a_job_blocks(
        self, graph: tf.Graph, release: threading.Event
    ) -> None:
        worker = WorkerThread(graph, current_bridge())
        try:
            worker.submit(blocked(release))
            assert not await worker.aclose(SHORT)
            assert worker.is_alive()
        finally:
            release.set()
        assert worker.join(GENEROUS)

    async def test_a_cancelled_aclose_still_stops_the_thread(
        self, graph: tf.Graph, release: threading.Event
    ) -> None:
        worker = WorkerThread(graph, current_bridge())
        worker.submit(blocked(release))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await worker.aclose(GENEROUS)
        assert scope.cancelled_caught
        release.set()
        assert worker.join(GENEROUS)


class TestStuck:
    async def test_call_runs_on_a_spare_while_the_thread_is_stuck(
        self, worker: WorkerThread, graph: tf.Graph, release: threading.Event
    ) -> None:
        assert worker.free() is worker
        started = threading.Event()
        completion = await worker.call_within(SHORT, blocked(release, started))
        assert not completion.done
        assert started.is_set()  # the abandoned job holds the thread
        assert worker.stuck
        spare = worker.free()
        assert spare is worker.spare() is not worker
        assert spare.name == "asyncsess-test-worker-spare"
        thread = await worker.call(threading.current_thread)
        assert thread.name == spare.name
        assert await worker.call(v1.get_default_graph) is graph
        release.set()
        assert await worker.barrier(GENEROUS)
        assert not worker.stuck
        assert worker.free() is worker
        thread = await worker.call(threading.current_thread)
        assert thread.name == worker.name

    async def test_aclose_stops_the_spare(
        self, graph: tf.Graph, release: threading.Event
    ) -> None:
        worker = WorkerThread(graph, current_bridge(), name="asyncsess-test-closing")
        await worker.call_within(SHORT, blocked(release))
        spare = worker.spare()
        assert await worker.call(len, "spare") == 5
        release.set()
        assert await worker.aclose(GENEROUS)
        assert not spare.is_alive()

    async def test_a_cancelled_call_returns_while_the_job_finishes(
        self, worker: WorkerThread, release: threading.Event
    ) -> None:
        finished = threading.Event()
        job = blocked(release)

        def finish() -> str:
            value: str = job()
            finished.set()
            return value

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def caller() -> None:
                    await worker.call(finish)

                tg.start_soon(caller)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        # Returned without the job: it still holds the thread.
        assert scope.cancelled_caught
        assert not finished.is_set()
        assert worker.stuck
        release.set()
        assert await worker.barrier(GENEROUS)
        assert finished.is_set()
        assert not worker.stuck


class TestAbandonedSessions:
    async def test_a_session_returned_after_grace_is_closed(
        self, worker: WorkerThread, release: threading.Event
    ) -> None:
        made: list[Any] = []

        def make_session() -> Any:
            release.wait(GENEROUS)
            sess = v1.Session()
            made.append(sess)
            return sess

        completion = await worker.call_within(SHORT, make_session)
        assert not completion.done
        release.set()
        assert await worker.barrier(GENEROUS)
        [sess] = made
        assert is_closed(sess)
        assert completion.value is None

    async def test_abandoning_a_finished_session_closes_it(
        self, worker: WorkerThread
    ) -> None:
        completion = await worker.call_within(GENEROUS, v1.Session)
        assert completion.done
        sess = completion.value
        assert not is_closed(sess)
        worker.abandon(completion)
        assert not worker.stuck  # it was done: nothing holds the thread
        assert await worker.barrier(GENEROUS)
        assert is_closed(sess)

    async def test_abandoned_between_return_and_delivery(
        self, worker: WorkerThread
    ) -> None:
        # The job returned and its result is posted, but the loop has not run the
        # delivery yet when the caller gives up: the delivery closes the session.
        returned = threading.Event()
        completion = worker.submit(v1.Session)
        worker.submit(returned.set)
        assert returned.wait(GENEROUS)  # blocks the loop: the delivery waits too
        assert not completion.done
        worker.abandon(completion)
        assert worker.stuck
        assert await worker.barrier(GENEROUS)  # the delivery ran before this one
        assert completion.done
        assert not worker.stuck
        assert await worker.barrier(GENEROUS)  # the close it queued
        assert is_closed(completion.value)

    async def test_a_cancelled_call_closes_the_session_it_made(
        self, worker: WorkerThread, release: threading.Event
    ) -> None:
        made: list[Any] = []

        def make_session() -> Any:
            release.wait(GENEROUS)
            sess = v1.Session()
            made.append(sess)
            return sess

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.call, make_session)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        release.set()
        assert await worker.barrier(GENEROUS)
        [sess] = made
        assert is_closed(sess)


class TestRunInSessionThread:
    async def test_inside_a_session_runs_on_its_worker(
        self, worker: WorkerThread, graph: tf.Graph
    ) -> None:
        token = current_worker.set(worker)
        try:
            thread = await run_in_session_thread(threading.current_thread)
            assert thread.name == worker.name
            assert await run_in_session_thread(v1.get_default_graph) is graph
            with pytest.raises(ZeroDivisionError, match="division"):
                await run_in_session_thread(divmod, 1, 0)
        finally:
            current_worker.reset(token)

    async def test_outside_a_session_runs_on_an_anyio_thread(
        self, graph: tf.Graph
    ) -> None:
        assert current_worker.get() is None
        thread = await run_in_session_thread(threading.current_thread)
        assert thread is not threading.current_thread()
        assert not thread.name.startswith("asyncsess-")
        # ... inside the calling thread's default graph, whichever that is.
        with graph.as_default():
            assert await run_in_session_thread(v1.get_default_graph) is graph
        assert await run_in_session_thread(v1.get_default_graph) is not graph
        assert await run_in_session_thread(pow, 2, 5) == 32

    async def test_outside_a_session_a_cancelled_call_returns_at_once(
        self, release: threading.Event
    ) -> None:
        # The docstring's promise: "returns at once when cancelled; fn still runs
        # to its end on the thread".
        started = threading.Event()
        returned = anyio.Event()
        scope = anyio.CancelScope()

        async def caller() -> None:
            with scope:
                await run_in_session_thread(blocked(release, started))
            returned.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            try:
                assert await anyio.to_thread.run_sync(started.wait, GENEROUS)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                returned_at_once = returned.is_set()
            finally:
                release.set()
        assert returned_at_once, "the cancelled call waited for its job to return"
