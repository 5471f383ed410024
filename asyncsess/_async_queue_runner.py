"""AsyncQueueRunner: feeds a TensorFlow queue from an async iterable, with backpressure.

The runner owns its placeholders and enqueue/close/cancel ops and sits in a graph
collection; `asyncsess._queues.QueueRunners` starts it for every TF session.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from ._tf import (
    CallableOptions,
    errors,
    make_callable_from_options,
    session_closed,
    tf,
    v1,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable

    from ._backend import Completion, LoopBridge
    from ._worker import WorkerThread

logger = logging.getLogger("asyncsess")

#: The graph collection holding every AsyncQueueRunner of a graph.
ASYNC_QUEUE_RUNNERS = "asyncsess_async_queue_runners"


class AsyncQueueRunner:
    """Feeds a TensorFlow queue from an async iterable, as a task of each session.

    Constructing it builds placeholders, an enqueue op (``enqueue_many`` if asked),
    a close op and a cancel op in the queue's graph and registers the runner
    there. Every asyncsess session over that graph starts it after creating its TF
    session and again after each recovery. Each item pulled from ``source`` is
    enqueued by a blocking session run on the runner's own thread, awaited without
    blocking the event loop. The next item is pulled (and checked) while that
    enqueue runs, and handed over only once it ended: a full queue suspends the
    source with at most one item pulled ahead (backpressure).

    An exhausted source closes the queue: consumers drain it, then get
    ``OutOfRangeError``, which ends ``async with`` cleanly. An exception raised by
    the source (or an item that does not match the queue) stops the session's
    coordinator and surfaces from the next `MonitoredSession.run` with its own
    type.

    Items: a tuple or list in component order, a dict keyed by the queue's
    ``names``, or, for a one-component queue, the bare value (a 1-tuple is
    unwrapped). With ``enqueue_many`` every component is a batch along its first
    dimension.

    Args:
      queue: A `tf.queue.QueueBase` (FIFOQueue, PaddingFIFOQueue,
        RandomShuffleQueue, PriorityQueue) of the graph.
      source: An async iterable of items, or a callable returning one. A callable
        is called for every TF session (a fresh stream after each recovery); an
        iterable that is its own iterator (an async generator object) goes on
        where it stopped after a recovery and is closed when the session closes.
      enqueue_many: Whether each item is a batch of elements.
      name: A name for logs, errors and the runner's thread (default: the
        queue's name).

    Cancellation: the runner is a task of the session. Closing, cancelling or
    recreating the session cancels the pull from the source, unblocks an enqueue
    waiting on a full queue by closing the queue with pending enqueues cancelled
    (as TensorFlow's QueueRunner does on a stop request) and ends the thread
    within ``stop_grace_period_secs``; a source iterator the runner created is
    closed (``aclose``).
    """

    def __init__(
        self,
        queue: Any,
        source: AsyncIterable[Any] | Callable[[], AsyncIterable[Any]],
        *,
        enqueue_many: bool = False,
        name: str | None = None,
    ) -> None:
        if not (callable(source) or hasattr(source, "__aiter__")):
            raise TypeError(
                "AsyncQueueRunner needs an async iterable, or a callable returning "
                f"one, as its source; Received: source={source!r}"
            )
        self._queue = queue
        self._source = source
        self._many = bool(enqueue_many)
        self.name: str = name or queue.name
        self._dtypes = list(queue.dtypes)
        self._names: list[str] | None = queue.names
        self._shapes = [_element_shape(s, self._many) for s in queue.shapes]
        self._np_dtypes = [np.dtype(d.as_numpy_dtype) for d in self._dtypes]
        self._dims = [_dims(s) for s in self._shapes]
        graph = queue.queue_ref.graph
        with graph.as_default(), v1.name_scope(f"{_base(queue.name)}_async_runner"):
            self._placeholders = [
                v1.placeholder(d, shape=s, name=f"component_{i}")
                for i, (d, s) in enumerate(zip(self._dtypes, self._shapes, strict=True))
            ]
            vals: Any = self._placeholders
            if self._names is not None:
                vals = dict(zip(self._names, self._placeholders, strict=True))
            enqueue = queue.enqueue_many if self._many else queue.enqueue
            self.enqueue_op = enqueue(vals)
            self.close_op = queue.close()
            self.cancel_op = queue.close(cancel_pending_enqueues=True)
        graph.add_to_collection(ASYNC_QUEUE_RUNNERS, self)
        self._iterator: AsyncIterator[Any] | None = None  # a shared one, see _open
        self._pulled = 0  # items pulled from the shared iterator

    def __repr__(self) -> str:
        return f"AsyncQueueRunner(name={self.name!r}, queue={self._queue.name!r})"

    @property
    def queue(self) -> Any:
        """The TensorFlow queue this runner feeds."""
        return self._queue

    # -- run by QueueRunners for each TF session ---------------------------------

    async def _run(
        self, sess: Any, coord: Any, thread: WorkerThread, bridge: LoopBridge
    ) -> None:
        """Pull and enqueue until the source ends, an error, or a stop request.

        Called by the session; never raises (errors go to *coord*). Item k+1 is
        pulled and checked while item k is being enqueued on the thread, and not
        handed over before that enqueue ended: one item of look-ahead at most.
        """
        iterator, owned = self._open()
        index = 0 if owned else self._pulled
        in_flight: Completion | None = None
        try:
            enqueue = await thread.call(self._callable, sess)
            while not coord.should_stop():
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    if in_flight is not None:
                        await self._settle(sess, bridge, in_flight, index - 1)
                        in_flight = None
                    await self._close_queue(sess, thread)
                    return
                if not owned:
                    self._pulled += 1
                values = self._components(item, index)
                if in_flight is not None:
                    await self._settle(sess, bridge, in_flight, index - 1)
                in_flight = thread.submit(enqueue, *values)
                index += 1
        except _Ended:
            pass
        except Exception as exc:
            self._report(coord, exc)
        finally:
            if in_flight is not None and not in_flight.done:
                thread.abandon(in_flight)  # the stop's cancel op ends it
            if owned:
                await _aclose(iterator)

    def _callable(self, sess: Any) -> Callable[..., Any]:
        """The enqueue op as a C++ callable taking the component arrays.

        ``Session.run`` spends most of a small enqueue in Python (feed checks
        we already did); TensorFlow's MakeCallable runs it directly, as its
        QueueRunner's cached callable does (benchmarks/bench_input.py).
        """
        options = CallableOptions()
        options.feed.extend(p.name for p in self._placeholders)
        options.target.append(self.enqueue_op.name)
        try:
            return make_callable_from_options(sess, options)  # type: ignore[no-any-return]
        except AttributeError:  # pragma: no cover - a session without it
            placeholders, op = self._placeholders, self.enqueue_op
            return lambda *values: sess.run(
                op, dict(zip(placeholders, values, strict=True))
            )

    async def _settle(
        self, sess: Any, bridge: LoopBridge, enqueue: Completion, index: int
    ) -> None:
        """Wait for the enqueue of item *index*; map its error to the runner's."""
        try:
            await bridge.wait(enqueue)
            enqueue.result()
        except (errors.OutOfRangeError, errors.CancelledError) as exc:
            # The queue was closed (by a stop request, or by someone else as TF's
            # queue-closed exception): the runner ends cleanly.
            logger.debug("AsyncQueueRunner %r ended: %s", self.name, exc)
            raise _Ended from None
        except RuntimeError:
            if session_closed(sess):
                raise _Ended from None
            raise
        except errors.OpError as exc:
            raise type(exc)(
                exc.node_def, exc.op, f"{self._culprit(index)}: {exc.message}"
            ) from exc

    async def _close_queue(self, sess: Any, thread: WorkerThread) -> None:
        """The source is exhausted: close the queue, keeping its pending elements."""
        logger.debug("AsyncQueueRunner %r: source exhausted; closing its queue.", self)
        try:
            await thread.call(sess.run, self.close_op)
        except Exception as exc:
            logger.debug("AsyncQueueRunner %r: close failed: %s", self.name, exc)

    def _report(self, coord: Any, exc: Exception) -> None:
        if coord.should_stop():
            logger.debug("AsyncQueueRunner %r stopped: %r", self.name, exc)
            return
        logger.info(
            "AsyncQueueRunner %r stops the session: %s: %s",
            self.name,
            type(exc).__name__,
            exc,
        )
        coord.request_stop((type(exc), exc, exc.__traceback__))

    def _open(self) -> tuple[AsyncIterator[Any], bool]:
        """The iterator to pull from, and whether this run owns (and closes) it."""
        if self._iterator is not None:
            return self._iterator, False
        source = self._source
        iterable = source() if callable(source) else source
        iterator = iterable.__aiter__()
        if iterator is source:  # its own iterator: shared across TF sessions
            self._iterator = iterator
            return iterator, False
        return iterator, True

    async def _aclose_source(self) -> None:
        """Close a shared source iterator (when the session closes)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None:
            await _aclose(iterator)

    # -- item validation -------------------------------------------------------------

    def _culprit(self, index: int) -> str:
        return f"AsyncQueueRunner {self.name!r}, item {index}"

    def _components(self, item: Any, index: int) -> list[Any]:
        """Split *item* into the queue's components, checked and converted."""
        values = self._split(item, index)
        arrays = [self._convert(v, i, index) for i, v in enumerate(values)]
        if self._many and len({a.shape[0] for a in arrays}) > 1:
            raise ValueError(
                f"{self._culprit(index)}: the components' batch sizes differ "
                f"({', '.join(str(a.shape[0]) for a in arrays)}); with "
                "enqueue_many=True every component holds the same number of elements."
            )
        return arrays

    def _split(self, item: Any, index: int) -> list[Any]:
        count = len(self._dtypes)
        if isinstance(item, dict):
            if self._names is None:
                raise TypeError(
                    f"{self._culprit(index)} is a dict, but queue "
                    f"{self._queue.name!r} has no component names; yield a tuple "
                    f"of {count} components."
                )
            if set(item) != set(self._names):
                raise ValueError(
                    f"{self._culprit(index)} has keys {sorted(item)}; queue "
                    f"{self._queue.name!r} expects {sorted(self._names)}."
                )
            return [item[k] for k in self._names]
        if count == 1:
            single = isinstance(item, tuple) and len(item) == 1
            return [item[0] if single else item]
        if not isinstance(item, (tuple, list)) or len(item) != count:
            got = len(item) if isinstance(item, (tuple, list)) else type(item).__name__
            raise ValueError(
                f"{self._culprit(index)} must be a tuple or list of {count} "
                f"components for queue {self._queue.name!r}; Received: {got}."
            )
        return list(item)

    def _convert(self, value: Any, component: int, index: int) -> Any:
        target = self._np_dtypes[component]
        array = np.asarray(value, dtype=object if target.kind == "O" else None)
        if array.dtype != target:
            if not np.can_cast(array.dtype, target, casting="same_kind"):
                raise TypeError(
                    f"{self._culprit(index)}: component {self._label(component)} "
                    f"has dtype {array.dtype}, which does not convert to the "
                    f"queue's {self._dtypes[component].name}."
                )
            array = array.astype(target)
        if not _fits(array.shape, self._dims[component], self._many):
            raise ValueError(
                f"{self._culprit(index)}: component {self._label(component)} has "
                f"shape {array.shape}, expected {self._shapes[component]}"
                + (" (a batch: enqueue_many=True)." if self._many else ".")
            )
        return array

    def _label(self, component: int) -> str:
        if self._names is not None:
            return f"{component} ({self._names[component]!r})"
        return str(component)


class _Ended(Exception):
    """The queue was closed or the TF session went away: end the runner quietly."""


def _element_shape(shape: Any, many: bool) -> Any:
    """The shape one fed value has: the queue's, with a batch dimension if *many*."""
    if many:
        return tf.TensorShape([None]).concatenate(shape)
    return shape


def _dims(shape: Any) -> tuple[int | None, ...] | None:
    """A TensorShape as a tuple of ints and Nones, or None for an unknown rank."""
    return None if shape.rank is None else tuple(shape.as_list())


def _fits(
    shape: tuple[int, ...], dims: tuple[int | None, ...] | None, many: bool
) -> bool:
    """Whether an array of *shape* may be fed where *dims* is expected."""
    if dims is None:
        return len(shape) > 0 or not many
    return len(shape) == len(dims) and all(
        d is None or d == n for d, n in zip(dims, shape, strict=True)
    )


def _base(name: str) -> str:
    return name.rsplit("/", 1)[-1].replace(":", "_")


async def _aclose(iterator: Any) -> None:
    """Close an async iterator, shielded and bounded: it runs during shutdown."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        try:
            await aclose()
        except Exception:
            logger.warning("Closing an AsyncQueueRunner source failed", exc_info=True)
