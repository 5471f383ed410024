"""FeedFnHook: feed each step from a plain or an async function."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from .._hook import SessionRunHook
from .._tf import SessionRunArgs

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._tf import SessionRunContext


class FeedFnHook(SessionRunHook):
    """Calls ``feed_fn`` before every step and feeds what it returns.

    TensorFlow's hook, with one addition: ``feed_fn`` may be an async function
    (or return an awaitable), which is awaited, so a feed can come from an async
    source (a queue, a socket, an ``anyio`` memory stream) without blocking the
    event loop. A plain ``feed_fn`` is called on the event loop and must not
    block; wrap blocking work in ``anyio.to_thread.run_sync`` inside an async one.
    Its feeds obey the usual clash rules (a tensor fed by two hooks, or by a hook
    and the caller, raises ``RuntimeError``).

    Args:
      feed_fn: function that takes no arguments and returns (or, async, resolves
        to) a `dict` of `Tensor` to feed.

    Raises:
      TypeError: if ``feed_fn`` is not callable.

    Cancellation: an async ``feed_fn`` is cancelled with the step's caller, and
    then no step runs.
    """

    def __init__(self, feed_fn: Callable[[], Any]) -> None:
        if not callable(feed_fn):
            raise TypeError(
                "feed_fn must be a function taking no arguments that returns a "
                f"feed dict. Received: feed_fn={feed_fn!r}"
            )
        self.feed_fn = feed_fn

    async def before_run(self, run_context: SessionRunContext) -> SessionRunArgs | None:
        feed_dict = self.feed_fn()
        if inspect.isawaitable(feed_dict):
            feed_dict = await feed_dict
        return SessionRunArgs(fetches=None, feed_dict=feed_dict)
