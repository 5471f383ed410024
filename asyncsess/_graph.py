"""Run work inside the session's graph, whatever thread or task it runs on.

TensorFlow's default graph is thread-local, and ``with graph.as_default():`` held
across an ``await`` would leak into every other task of the event loop. So async
hook code is driven one ``send()`` at a time with the graph entered around each
send only: the loop thread's graph stack is the same before and after, and two
sessions over two graphs can interleave in one loop
(tests/test_session.py::TestGraph::test_two_graphs_interleaved).
"""

from __future__ import annotations

import contextlib
import types
from typing import TYPE_CHECKING, Any, TypeVar

from ._tf import tf

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine, Generator

T = TypeVar("T")


_UNSET: Any = object()
get_default_graph = tf.compat.v1.get_default_graph
executing_eagerly = tf.executing_eagerly


@types.coroutine
def _drive(
    coro: Coroutine[Any, Any, T], graph: Any, first: Any = _UNSET
) -> Generator[Any, Any, T]:
    """Drive *coro* with *graph* entered around each of its steps.

    *first*: what *coro* yielded from a first step someone else already ran.
    """
    send, throw = coro.send, coro.throw
    value: Any = None
    error: BaseException | None = None
    if first is not _UNSET:
        try:
            value = yield first
        except BaseException as exc:
            value, error = None, exc
    while True:
        try:
            if get_default_graph() is graph and not executing_eagerly():
                # Already inside ``graph.as_default()`` (a single-graph program):
                # entering it again costs ~6 us per step of the coroutine.
                yielded = send(value) if error is None else throw(error)
            else:
                with graph.as_default():
                    yielded = send(value) if error is None else throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            value = yield yielded
            error = None
        except BaseException as exc:
            value, error = None, exc


def in_graph(awaitable: Awaitable[T], graph: Any) -> Awaitable[T]:
    """Return an awaitable that runs *awaitable* with *graph* as the default graph.

    Coroutines are driven step by step inside the graph; other awaitables (a
    Future, say) are returned unchanged since they run no TensorFlow code here.
    """
    if isinstance(awaitable, types.CoroutineType):
        return _drive(awaitable, graph)
    return awaitable


def graph_context(graph: Any) -> Any:
    """``graph.as_default()``, or a no-op when *graph* already is the default."""
    if get_default_graph() is graph and not executing_eagerly():
        return contextlib.nullcontext()
    return graph.as_default()
