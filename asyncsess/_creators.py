"""Session creators: the async SessionCreator ABC, chief and worker creators.

The blocking TensorFlow work (open the session, initialize, restore, check
readiness) runs on the session's worker thread, inside its graph; waiting for a
chief happens with ``anyio.sleep`` between attempts, so it never blocks the loop
and can be cancelled.
"""

from __future__ import annotations

import abc
import inspect
import logging
import time
from typing import Any

import anyio

from ._hook import describe
from ._tf import (
    Scaffold,
    TFSessionCreator,
    errors,
    session_manager,
    try_ready_session,
    v1,
)
from ._worker import run_in_session_thread

logger = logging.getLogger("asyncsess")


class SessionCreator(abc.ABC):
    """A factory for `tf.compat.v1.Session`, awaited by `MonitoredSession`.

    Cancellation: `create_session` may be cancelled; a session it was creating
    on the worker thread is closed when that work finishes.
    """

    @abc.abstractmethod
    async def create_session(self) -> Any:
        """Create and return a ready `tf.compat.v1.Session`."""


class _ScaffoldCreator(SessionCreator):
    """What the chief and worker creators share: a scaffold, a SessionManager."""

    def __init__(self, scaffold: Any, master: str, config: Any) -> None:
        self._scaffold = scaffold or Scaffold()
        self._master = master
        self._config = config
        self._session_manager: Any = None

    @property
    def scaffold(self) -> Any:
        """The `Scaffold` this creator finalizes."""
        return self._scaffold

    def _finalized_manager(self) -> Any:
        """Finalize the scaffold; TF's SessionManager for it (on the worker thread).

        The manager is created once, with the graph being finalized.
        """
        scaffold = self._scaffold
        scaffold.finalize()
        if self._session_manager is None:
            self._session_manager = session_manager(
                local_init_op=scaffold.local_init_op,
                local_init_feed_dict=scaffold.local_init_feed_dict,
                ready_op=scaffold.ready_op,
                ready_for_local_init_op=scaffold.ready_for_local_init_op,
                graph=v1.get_default_graph(),
            )
        return self._session_manager


class ChiefSessionCreator(_ScaffoldCreator):
    """Creates a `tf.compat.v1.Session` for a chief: initializes or restores it.

    Same arguments and behaviour as `tf.compat.v1.train.ChiefSessionCreator`, with
    the blocking work on the session's worker thread. After `create_session`,
    ``restored_checkpoint`` is the checkpoint path restored from, or None.

    Args:
      scaffold: A `Scaffold` (a default one is created if None).
      master: The TensorFlow master to use.
      config: A `ConfigProto` for the session.
      checkpoint_dir: Directory to restore variables from.
      checkpoint_filename_with_path: Full path of a checkpoint to restore from.

    Raises:
      ValueError: both ``checkpoint_dir`` and ``checkpoint_filename_with_path``.

    Cancellation: see `SessionCreator`.
    """

    def __init__(
        self,
        scaffold: Any = None,
        master: str = "",
        config: Any = None,
        checkpoint_dir: str | None = None,
        checkpoint_filename_with_path: str | None = None,
    ) -> None:
        if checkpoint_dir and checkpoint_filename_with_path:
            raise ValueError(
                "Can not provide both checkpoint_dir and checkpoint_filename_with_path."
            )
        super().__init__(scaffold, master, config)
        self._checkpoint_dir = checkpoint_dir
        self._checkpoint_filename_with_path = checkpoint_filename_with_path
        self.restored_checkpoint: str | None = None

    def _create_blocking(self) -> Any:
        manager = self._finalized_manager()
        scaffold = self._scaffold
        manager.restored = False
        path = self._checkpoint_filename_with_path
        if path is None and self._checkpoint_dir:
            path = v1.train.latest_checkpoint(self._checkpoint_dir)
        sess = manager.prepare_session(
            self._master,
            saver=scaffold.saver,
            checkpoint_dir=self._checkpoint_dir,
            checkpoint_filename_with_path=self._checkpoint_filename_with_path,
            config=self._config,
            init_op=scaffold.init_op,
            init_feed_dict=scaffold.init_feed_dict,
            init_fn=scaffold.init_fn,
        )
        self.restored_checkpoint = path if manager.restored else None
        return sess

    async def create_session(self) -> Any:
        """Create the session: finalize, open, then restore or initialize.

        Cancellation: see `SessionCreator`.
        """
        return await run_in_session_thread(self._create_blocking)


class WorkerSessionCreator(_ScaffoldCreator):
    """Creates a `tf.compat.v1.Session` for a non-chief worker: waits for the chief.

    Same arguments as `tf.compat.v1.train.WorkerSessionCreator`. Each attempt opens
    a session, runs ``local_init_op`` when allowed and checks readiness on the
    worker thread; between attempts it waits with ``anyio.sleep``, starting at
    ``min_poll_secs`` and growing to ``max_poll_secs`` (TensorFlow sleeps a fixed,
    blocking 30 s). Past ``max_wait_secs`` it raises `tf.errors.DeadlineExceededError`.

    Cancellation: the wait is cancellable at once; an attempt in progress on the
    worker thread finishes and its session is closed.
    """

    #: The first wait between readiness checks, in seconds.
    min_poll_secs: float = 0.1
    #: The longest wait between readiness checks, in seconds (TensorFlow: 30).
    max_poll_secs: float = 30.0

    def __init__(
        self,
        scaffold: Any = None,
        master: str = "",
        config: Any = None,
        max_wait_secs: float = 30 * 60,
    ) -> None:
        if max_wait_secs is not None and max_wait_secs < 0:
            raise ValueError(
                f"max_wait_secs must be >= 0; Received: max_wait_secs={max_wait_secs!r}"
            )
        super().__init__(scaffold, master, config)
        self._max_wait_secs = float("inf") if max_wait_secs is None else max_wait_secs

    def _attempt(self) -> tuple[Any, str | None]:
        manager = self._finalized_manager()
        return try_ready_session(manager, self._master, self._config)

    async def create_session(self) -> Any:
        """Wait until the chief made the model ready, then return a session.

        Cancellation: see the class docstring.
        """
        deadline = time.monotonic() + self._max_wait_secs
        delay = self.min_poll_secs
        while True:
            sess, message = await run_in_session_thread(self._attempt)
            if sess is not None:
                return sess
            if time.monotonic() + delay > deadline:
                raise errors.DeadlineExceededError(
                    None,
                    None,
                    "Session was not ready after waiting "
                    f"{self._max_wait_secs:g} secs.",
                )
            logger.info("Waiting %.2fs for the model to be ready: %s", delay, message)
            await anyio.sleep(delay)
            delay = min(self.max_poll_secs, delay * 2)


class _ForeignCreator(SessionCreator):
    """Adapts TensorFlow's (blocking) or a duck-typed session creator."""

    def __init__(self, creator: Any) -> None:
        self.creator = creator
        self._is_async = inspect.iscoroutinefunction(creator.create_session)

    async def create_session(self) -> Any:
        if self._is_async:
            return await self.creator.create_session()
        return await run_in_session_thread(self.creator.create_session)

    def __repr__(self) -> str:
        return describe(self.creator)


def adapt_creator(creator: Any) -> SessionCreator:
    """Return an async SessionCreator for *creator*, or raise TypeError."""
    if creator is None:
        return ChiefSessionCreator()
    if isinstance(creator, SessionCreator):
        return creator
    if isinstance(creator, type):
        raise TypeError(
            "session_creator must be an instance, not a class; "
            f"Received: session_creator={creator.__name__} (call it: "
            f"session_creator={creator.__name__}(...))"
        )
    if isinstance(creator, TFSessionCreator) or callable(
        getattr(creator, "create_session", None)
    ):
        return _ForeignCreator(creator)
    raise TypeError(
        "session_creator must be an asyncsess.SessionCreator or a "
        "tf.compat.v1.train.SessionCreator; "
        f"Received: session_creator={describe(creator)}"
    )
