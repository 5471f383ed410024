"""`Batcher`: concurrent callers served by one device step (dynamic batching)."""

from __future__ import annotations

import copy
import enum
import itertools
import math
import sys
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from ._batch_split import join_parts, split_outputs, structure_key
from ._batch_stats import BatchStats
from ._exceptions import BatchQueueFullError, collapse

if TYPE_CHECKING:
    from collections.abc import Hashable, Mapping, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._session import MonitoredSession


_EWMA = 0.2  # weight of the newest step in the measured step time and batch size


class _State(enum.Enum):
    NEW = "new"  # built, not entered
    OPEN = "open"  # inside `async with`: calls batch
    CLOSED = "closed"  # left: calls raise RuntimeError


@dataclass(eq=False)
class _Part:
    """Up to ``max_batch_size`` rows of one call, waiting for or in a batch."""

    feeds: dict[Any, np.ndarray]
    rows: int
    enqueued: float
    done: anyio.Event
    outputs: Any = None
    error: BaseException | None = None
    running: bool = False


class _Queue:
    """The calls of one signature (fetch structure and feed keys), oldest first."""

    def __init__(self, key: Hashable, fetches: Any, feed_keys: tuple[Any, ...]) -> None:
        self.key = key
        self.fetches = fetches
        self.feed_keys = feed_keys
        self.parts: deque[_Part] = deque()
        self.rows = 0

    def take(self, most: int) -> list[_Part]:
        """The oldest parts that fit in *most* rows (at least one part)."""
        taken: list[_Part] = []
        rows = 0
        parts = self.parts
        while parts and (not taken or rows + parts[0].rows <= most):
            part = parts.popleft()
            rows += part.rows
            taken.append(part)
        self.rows -= rows
        return taken


class Batcher:
    """The async counterpart of TensorFlow Serving's ``BatchingSession``.

    Concurrent `run` calls whose fetch structure and feed keys match share one
    ``session.run_without_hooks`` step: their feeds are concatenated along the
    first dimension and every fetched tensor is split back, so each caller gets
    what ``run_without_hooks`` returns for its own rows. Batches take turns
    with the session's other runs and training steps, in arrival order.

    A batch runs once it holds *max_batch_size* rows, or once its oldest call
    has waited *batch_timeout_secs*. When the session is idle the wait is cut
    to what the last steps show is worth it: nothing for a lone request, up to
    half the measured step time under load, so a lone request is not held for
    the timeout. A call with more rows than *max_batch_size* is split over
    several batches and joined again. With *allowed_batch_sizes* (ascending,
    the last equal to *max_batch_size*) a batch is padded with copies of its
    first row up to the next allowed size and the padding cut from the results.
    With *max_enqueued*, a call that would make more rows wait raises
    `BatchQueueFullError` at once. *stats* (a `BatchStats`) collects the counts
    and distributions; pass the same one to the next model version's Batcher.

    Cancellation: leaving ``async with`` lets the batch on the device finish,
    and raises `RuntimeError` in the calls still waiting. See `run` for a
    cancelled caller.
    """

    def __init__(
        self,
        session: MonitoredSession,
        *,
        max_batch_size: int = 32,
        batch_timeout_secs: float = 0.001,
        allowed_batch_sizes: Sequence[int] | None = None,
        max_enqueued: int | None = None,
        stats: BatchStats | None = None,
    ) -> None:
        self._session = session
        self._max_rows = _positive_int("max_batch_size", max_batch_size)
        self._timeout = _timeout(batch_timeout_secs)
        self._sizes = _allowed_sizes(allowed_batch_sizes, self._max_rows)
        self._max_enqueued = (
            None
            if max_enqueued is None
            else _positive_int("max_enqueued", max_enqueued)
        )
        self.stats = BatchStats() if stats is None else stats
        self._queues: dict[Hashable, _Queue] = {}
        self._queued_rows = 0
        self._arrival = anyio.Event()
        self._state = _State.NEW
        self._task_group: TaskGroup | None = None
        self._step_secs = 0.0  # measured, smoothed
        self._batch_rows = 1.0  # measured, smoothed
        self._running = False  # a batch holds the device
        self._alone_running = 0  # lone calls started in the task group

    def __repr__(self) -> str:
        return (
            f"Batcher(max_batch_size={self._max_rows}, "
            f"batch_timeout_secs={self._timeout}, state={self._state.value})"
        )

    async def __aenter__(self) -> Batcher:
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} can be entered once; build a new Batcher")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._state = _State.OPEN
        task_group.start_soon(self._serve, name=f"{self!r} scheduler")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._state = _State.CLOSED
        self._fail_waiting(RuntimeError(f"{self!r} was closed before this call ran"))
        task_group = self._task_group
        assert task_group is not None
        if not self._running and not self._alone_running:
            task_group.cancel_scope.cancel()  # nothing on the device: all can go
        self._arrival.set()  # else it finishes its batch, sees the state and ends
        self._task_group = None
        # The body's own error propagates as it is (not wrapped in a group by
        # the task group); only the scheduler's would come out of it.
        try:
            await task_group.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            raise collapse(group) from None
        return None

    async def run(
        self, fetches: Any, feed_dict: Mapping[Any, Any] | None = None
    ) -> Any:
        """Run *fetches* for the rows of *feed_dict*, batched with concurrent calls.

        Returns what ``session.run_without_hooks(fetches, feed_dict)`` would.
        Every feed value's first dimension is this call's row count. A call
        without feeds or with zero rows runs alone.

        Raises:
          BatchQueueFullError: *max_enqueued* rows already wait.
          ValueError: feeds of different row counts, a scalar feed, or a fetched
            tensor whose first dimension is not the batch's row count.
          RuntimeError: the Batcher is not open, or closed before the call ran.

        Cancellation: a call still waiting is taken out of its batch before it
        runs; a call whose batch is on the device drops only its share (the
        batch finishes for the other callers). Always yields.
        """
        if self._state is not _State.OPEN:
            raise RuntimeError(
                f"{self!r} is not open; use it inside 'async with Batcher(...)'"
            )
        feeds, rows = _as_rows(feed_dict)
        if not rows:
            return await self._session.run_without_hooks(fetches, feed_dict)
        if self._alone(rows):
            return await self._run_alone(fetches, feeds, rows)
        queue = self._queue_for(fetches, feeds)
        parts = self._enqueue(queue, feeds, rows)
        try:
            for part in parts:
                await part.done.wait()
        except BaseException:
            self._withdraw(queue, parts)
            raise
        for part in parts:
            if part.error is not None:
                raise _copy_error(part.error)
        if len(parts) == 1:
            return parts[0].outputs
        return join_parts(fetches, [part.outputs for part in parts])

    def _alone(self, rows: int) -> bool:
        """Whether a call can run at once, as a batch of its own: lone traffic.

        Nothing waits or runs, the device is idle and recent batches held one
        call each: no one to batch with, so the scheduler's wait is skipped.
        """
        return (
            self._queued_rows == 0
            and rows <= self._max_rows
            and not self._running
            and not self._alone_running
            and self._batch_rows < 1.5
            and not self._session._busy
        )

    async def _run_alone(
        self, fetches: Any, feeds: dict[Any, np.ndarray], rows: int
    ) -> Any:
        part = _Part(feeds, rows, anyio.current_time(), anyio.Event(), running=True)
        self.stats.calls += 1
        self._alone_running += 1
        assert self._task_group is not None
        # In the Batcher's task, as a batch: a cancelled caller drops its result
        # and leaves at once, the step is not cancelled under the others.
        self._task_group.start_soon(self._run_lone, fetches, part)
        await part.done.wait()
        if part.error is not None:
            raise part.error
        return part.outputs

    async def _run_lone(self, fetches: Any, part: _Part) -> None:
        try:
            async with self._session._unhooked_turn() as run:
                await self._run_parts(run, fetches, tuple(part.feeds), [part])
        except Exception as exc:  # the session refused the turn (closed, broken)
            self._resolve([part], exc)
        except BaseException:  # cancelled: close() after the body failed
            self._resolve([part], RuntimeError(f"{self!r} was closed mid-batch"))
            raise
        finally:
            self._alone_running -= 1
            self._arrival.set()  # calls that came meanwhile need not wait longer

    def _queue_for(self, fetches: Any, feeds: Mapping[Any, np.ndarray]) -> _Queue:
        feed_keys = tuple(feeds)
        # Rows of other shapes or types cannot be concatenated: they batch apart
        # (strings of any length do concatenate).
        layout = tuple(
            (value.shape[1:], _kind(value.dtype)) for value in feeds.values()
        )
        key = (structure_key(fetches), feed_keys, layout)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(key, fetches, feed_keys)
        return queue

    def _forget_if_empty(self, queue: _Queue) -> None:
        """Drop an empty queue: clients choose the keys, which must not pile up."""
        if not queue.parts and self._queues.get(queue.key) is queue:
            del self._queues[queue.key]

    def _enqueue(
        self, queue: _Queue, feeds: dict[Any, np.ndarray], rows: int
    ) -> list[_Part]:
        limit = self._max_enqueued
        if limit is not None and self._queued_rows + rows > limit:
            self.stats.refused_calls += 1
            raise BatchQueueFullError(rows, self._queued_rows, limit)
        now = anyio.current_time()
        most = self._max_rows
        parts = [
            _Part(
                feeds if rows <= most else _slice(feeds, start, most),
                min(most, rows - start),
                now,
                anyio.Event(),
            )
            for start in range(0, rows, most)
        ]
        queue.parts.extend(parts)
        queue.rows += rows
        self._queued_rows += rows
        self.stats.queued_rows += rows
        self.stats.calls += 1
        self._arrival.set()
        return parts

    def _withdraw(self, queue: _Queue, parts: list[_Part]) -> None:
        """Take a cancelled call's waiting parts out of its queue."""
        for part in parts:
            if not part.running and not part.done.is_set():
                try:
                    queue.parts.remove(part)
                except ValueError:  # pragma: no cover - already failed by close
                    continue
                queue.rows -= part.rows
                self._dequeued(part.rows)
        self._forget_if_empty(queue)

    def _dequeued(self, rows: int) -> None:
        self._queued_rows -= rows
        self.stats.queued_rows -= rows

    def _fail_waiting(self, error: BaseException) -> None:
        for queue in self._queues.values():
            while queue.parts:
                part = queue.parts.popleft()
                self._dequeued(part.rows)
                part.error = error
                part.done.set()
            queue.rows = 0
        self._queues.clear()

    # -- the scheduler task ---------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            queue = await self._next_batch()
            if queue is None:
                return
            await self._run_batch(queue)

    async def _next_batch(self) -> _Queue | None:
        """Wait until a queue's batch is due; None once the Batcher closed."""
        while self._state is _State.OPEN:
            oldest = self._oldest_waiting()
            if oldest is None:
                self._arrival = anyio.Event()
                await self._arrival.wait()
                continue
            if oldest.rows >= self._max_rows:
                return oldest
            wait = oldest.parts[0].enqueued + self._wait() - anyio.current_time()
            if wait <= 0:
                return oldest
            full = self._full_queue()  # only while the oldest is not due: no starving
            if full is not None:
                return full
            self._arrival = anyio.Event()
            with anyio.move_on_after(wait):
                await self._arrival.wait()
        return None

    def _full_queue(self) -> _Queue | None:
        for queue in self._queues.values():
            if queue.rows >= self._max_rows:
                return queue
        return None

    def _oldest_waiting(self) -> _Queue | None:
        oldest: _Queue | None = None
        for queue in self._queues.values():
            if queue.parts and (
                oldest is None or queue.parts[0].enqueued < oldest.parts[0].enqueued
            ):
                oldest = queue
        return oldest

    def _wait(self) -> float:
        """How long a batch's oldest call may wait for more rows."""
        if self._session._busy:  # rows wait for the device anyway: gather them
            return self._timeout
        if self._batch_rows < 1.5:  # recent batches ran alone: nobody to wait for
            return 0.0
        return min(self._timeout, 0.5 * self._step_secs)

    async def _run_batch(self, queue: _Queue) -> None:
        parts: list[_Part] = []
        try:
            async with self._session._unhooked_turn() as run:
                parts = self._take(queue, self._max_rows)
                if parts:
                    self._running = True
                    await self._run_parts(run, queue.fetches, queue.feed_keys, parts)
        except Exception as exc:  # the session refused the turn (closed, broken)
            self._resolve([*parts, *self._take(queue, queue.rows)], exc)
        except BaseException:  # cancelled: close() after the body failed
            self._resolve(parts, RuntimeError(f"{self!r} was closed mid-batch"))
            raise
        finally:
            self._running = False

    def _take(self, queue: _Queue, rows: int) -> list[_Part]:
        parts = queue.take(rows)
        for part in parts:
            part.running = True
            self._dequeued(part.rows)
        self._forget_if_empty(queue)
        return parts

    async def _run_parts(
        self, run: Any, fetches: Any, feed_keys: tuple[Any, ...], parts: list[_Part]
    ) -> None:
        started = anyio.current_time()
        rows = sum(part.rows for part in parts)
        padding = _padding(self._sizes, rows)
        self._count(parts, rows, padding, started)
        try:
            feed = self._feed(feed_keys, parts, padding)
            outputs = await run(fetches, feed, None, None)
            self._measure(anyio.current_time() - started, rows)
            shares = split_outputs(
                fetches, outputs, [part.rows for part in parts], rows + padding
            )
        except Exception as exc:  # the step's error, raised in each of its callers
            self._resolve(parts, exc)
            return
        for part, share in zip(parts, shares, strict=True):
            part.outputs = share
            part.done.set()

    @staticmethod
    def _resolve(parts: list[_Part], error: BaseException) -> None:
        """Fail the parts of *parts* that have no outcome yet with *error*."""
        for part in parts:
            if not part.done.is_set():
                part.error = error
                part.done.set()

    def _feed(
        self, feed_keys: tuple[Any, ...], parts: list[_Part], padding: int
    ) -> dict[Any, np.ndarray]:
        if len(parts) == 1 and not padding:
            return parts[0].feeds
        feed = {}
        for key in feed_keys:
            values = [part.feeds[key] for part in parts]
            if padding:
                values.append(np.repeat(values[0][:1], padding, axis=0))
            feed[key] = np.concatenate(values)
        return feed

    def _count(
        self, parts: list[_Part], rows: int, padding: int, started: float
    ) -> None:
        stats = self.stats
        stats.batches += 1
        stats.rows += rows
        stats.padding_rows += padding
        stats.batch_size.observe(rows)
        for part in parts:
            stats.wait_seconds.observe(started - part.enqueued)

    def _measure(self, seconds: float, rows: int) -> None:
        self._step_secs += _EWMA * (seconds - self._step_secs)
        self._batch_rows += _EWMA * (rows - self._batch_rows)

    def statistics(self) -> BatchStats:
        """The counts and distributions of this Batcher (shared if *stats* was)."""
        return self.stats


def _as_rows(feed_dict: Mapping[Any, Any] | None) -> tuple[dict[Any, np.ndarray], int]:
    """The feeds as arrays, and their common row count (0: cannot batch)."""
    if not feed_dict:
        return {}, 0
    feeds: dict[Any, np.ndarray] = {}
    rows = -1
    for key, value in feed_dict.items():
        array = np.asarray(value)
        if array.ndim == 0:
            raise ValueError(
                f"Batcher.run() feeds {_name(key)} a scalar; every feed needs the "
                "caller's rows along its first dimension. Received: "
                f"{_name(key)}={value!r}"
            )
        if rows >= 0 and array.shape[0] != rows:
            raise ValueError(
                f"Batcher.run() got feeds of different row counts: {_name(key)} has "
                f"{array.shape[0]} rows, the feeds before it {rows}; all feeds of a "
                "call share the first dimension"
            )
        rows = array.shape[0]
        feeds[key] = array
    return feeds, rows


def _slice(feeds: Mapping[Any, np.ndarray], start: int, size: int) -> dict[Any, Any]:
    return {key: value[start : start + size] for key, value in feeds.items()}


def _padding(sizes: tuple[int, ...] | None, rows: int) -> int:
    if sizes is None:
        return 0
    for size in sizes:
        if size >= rows:
            return size - rows
    return 0  # pragma: no cover - the last size is max_batch_size


def _copy_error(error: BaseException) -> BaseException:
    """A copy of a batch's error for one caller, so tracebacks do not pile up."""
    try:
        clone = copy.copy(error)
    except Exception:  # pragma: no cover - an exception that refuses copying
        return error
    clone.__cause__, clone.__context__ = error.__cause__, error.__context__
    return clone.with_traceback(error.__traceback__)


def _kind(dtype: np.dtype[Any]) -> Any:
    """What rows must share to be concatenated: the dtype, or for text its kind."""
    return dtype.kind if dtype.kind in "USO" else dtype


def _name(key: Any) -> str:
    name = getattr(key, "name", None)
    return repr(name if isinstance(name, str) else key)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Batcher {name} must be an int >= 1. Received: {value!r}")
    return value


def _timeout(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            "Batcher batch_timeout_secs must be a finite number of seconds >= 0. "
            f"Received: batch_timeout_secs={value!r}"
        )
    return float(value)


def _allowed_sizes(sizes: Sequence[int] | None, most: int) -> tuple[int, ...] | None:
    if sizes is None:
        return None
    values = tuple(sizes)
    ascending = all(a < b for a, b in itertools.pairwise(values))
    if (
        not values
        or not ascending
        or not all(isinstance(v, int) and v >= 1 for v in values)
        or values[-1] != most
    ):
        raise ValueError(
            "Batcher allowed_batch_sizes must be ascending ints >= 1, the last equal "
            f"to max_batch_size ({most}). Received: allowed_batch_sizes={sizes!r}"
        )
    return values
