"""Queue runners of one TF session: started after creation, stopped on close.

The graph's QUEUE_RUNNERS collection holds TensorFlow QueueRunners. They are
started for each TF session (after creation and after every recovery) and
stopped when the session closes or is recreated, within the grace period.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._tf import v1

if TYPE_CHECKING:
    from ._worker import WorkerThread

logger = logging.getLogger("asyncsess")

#: Starts ``fn(*args)`` as a background task of the session.
Spawn = Callable[..., None]


class QueueRunners:
    """The queue runners started for one TF session and its coordinator."""

    def __init__(
        self,
        graph: Any,
        worker: WorkerThread,
        spawn: Spawn,
        wait: Callable[[Any], Awaitable[None]],
        grace: float,
    ) -> None:
        self._graph = graph
        self._worker = worker
        self._spawn = spawn
        self._wait = wait
        self._grace = grace
        self._threads: list[Any] = []
        self._coord: Any = None

    async def start(self, sess: Any, coord: Any) -> None:
        """Start every queue runner of the graph for *sess*, reporting to *coord*."""
        self._coord = coord
        self._threads = await self._worker.call(
            _start_threads, self._graph, sess, coord
        )

    async def stop(self) -> BaseException | None:
        """Stop the runners within the grace period; return the coordinator's error.

        Cancellation: call it shielded; it is bounded by the grace period.
        """
        coord, threads = self._coord, self._threads
        self._coord, self._threads = None, []
        if coord is None:
            return None
        coord.request_stop()
        completion = self._worker.submit(_join, coord, threads, self._grace)
        await self._wait(completion)
        if not completion.done:
            self._worker.abandon(completion)
            return None
        result: BaseException | None = completion.value
        return result


def _start_threads(graph: Any, sess: Any, coord: Any) -> list[Any]:
    threads: list[Any] = []
    for runner in graph.get_collection(v1.GraphKeys.QUEUE_RUNNERS):
        threads.extend(
            runner.create_threads(sess, coord=coord, daemon=True, start=True)
        )
    return threads


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
