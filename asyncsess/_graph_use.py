"""Which asyncsess sessions use a graph, and whose turn it is to open over it."""

from __future__ import annotations

import threading
import weakref
from typing import Any

import anyio

from ._tf import unfinalize_graph


class GraphUse:
    """The asyncsess sessions over one graph, and whose turn it is to open.

    Keyed by graph in `GRAPH_USES` (weakly). It never refers to its graph: the
    dictionary's values would keep their keys alive.
    """

    __slots__ = ("finalized_before", "sessions", "thread", "turn")

    def __init__(self) -> None:
        #: Sessions opening or open over the graph.
        self.sessions = 0
        #: Whether the graph was finalized before the first of them opened: then
        #: it stays finalized (TensorFlow's rule), else the last to close
        #: un-finalizes it.
        self.finalized_before = False
        #: Set when the session whose turn it is is done with the graph.
        self.turn: anyio.Event | None = None
        #: The thread (event loop) of the turn's session.
        self.thread = 0

    async def take_turn(self, graph: Any) -> anyio.Event:
        """Wait for the graph, then count a session over it. Cancellation: waits."""
        while self.turn is not None:
            if self.thread == threading.get_ident():
                await self.turn.wait()
            else:  # another thread's event loop: its Event cannot be awaited here
                await anyio.sleep(0.01)
        turn = self.turn = anyio.Event()
        self.thread = threading.get_ident()
        if not self.sessions:
            self.finalized_before = graph.finalized
        # A graph that another of our sessions finalized stays finalized, as in
        # TensorFlow: this session's begin() cannot add ops to it.
        self.sessions += 1
        return turn

    def end_turn(self, turn: anyio.Event) -> None:
        """End *turn*; again, or after another turn began, does nothing."""
        if self.turn is turn:
            self.turn = None
            turn.set()

    def release(self, graph: Any) -> None:
        """A session over the graph closed: the last un-finalizes it (unless...)."""
        self.sessions -= 1
        if not self.sessions and not self.finalized_before:
            unfinalize_graph(graph)


GRAPH_USES: weakref.WeakKeyDictionary[Any, GraphUse] = weakref.WeakKeyDictionary()


def graph_use(graph: Any) -> GraphUse:
    use = GRAPH_USES.get(graph)
    if use is None:
        use = GRAPH_USES[graph] = GraphUse()
    return use
