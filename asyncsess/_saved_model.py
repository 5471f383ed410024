"""A SavedModel served from a graph-mode asyncsess session: open, predict, warm up.

TensorFlow 1 SavedModels and TensorFlow 2 / Keras 3 exports (``tf.saved_model.save``,
``model.export``) load alike: their ``serve`` MetaGraph is imported into a graph
once (``_model_graph.py``), and a `MonitoredSession` restores its variables and
runs its init ops (again after a preemption, through its session creator).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

from ._batcher import Batcher
from ._creators import SessionCreator
from ._exceptions import BatchQueueFullError, collapse
from ._model_graph import SERVE_TAGS, ImportedModel, import_saved_model
from ._session import MonitoredSession
from ._signature import ServingError, find_signature
from ._tf import errors, v1
from ._worker import run_in_session_thread

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from ._batch_stats import BatchStats
    from ._json_tensor import TensorSpec
    from ._signature import Signature

logger = logging.getLogger("asyncsess.serve")


class SavedModelCreator(SessionCreator):
    """Creates the session of an `ImportedModel`: restores variables, runs init ops.

    What ``tf.compat.v1.saved_model.load`` does after importing the graph, on
    the session's worker thread; a `MonitoredSession` calls it again to
    recreate its session after a preemption.

    Cancellation: see `asyncsess.SessionCreator`.
    """

    def __init__(self, model: ImportedModel, config: Any = None) -> None:
        self.model = model
        self.config = config or v1.ConfigProto(allow_soft_placement=True)

    def _create(self) -> Any:
        model = self.model
        sess = v1.Session(graph=model.graph, config=self.config)
        try:
            model.loader.restore_variables(sess, model.saver)
            model.loader.run_init_ops(sess, list(model.tags))
        except BaseException:
            sess.close()
            raise
        return sess

    async def create_session(self) -> Any:
        """Open a session on the model's graph with its variables restored.

        Cancellation: see `asyncsess.SessionCreator`.
        """
        return await run_in_session_thread(self._create)

    def __repr__(self) -> str:
        return f"SavedModelCreator({self.model.path!r})"


class SavedModelVersion:
    """One version of a SavedModel, served: its signatures and ``predict``.

    Predictions whose feeds share a first dimension go through the version's
    `Batcher` (when batching); others run as a step of their own.

    Cancellation: `predict` is cancelled as `Batcher.run` or
    `MonitoredSession.run_without_hooks`; the session stays usable.
    """

    def __init__(
        self,
        model: ImportedModel,
        version: int,
        session: MonitoredSession,
        batcher: Batcher | None,
    ) -> None:
        self.model = model
        self._version = version
        self.session = session
        self.batcher = batcher

    @property
    def version(self) -> int:
        """The version number."""
        return self._version

    @property
    def signatures(self) -> Mapping[str, Signature]:
        """Every signature of the MetaGraph, by name."""
        return self.model.signatures

    async def predict(
        self, signature_name: str, inputs: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Run *signature_name* on *inputs* (by alias); its outputs by alias.

        Raises:
          ServingError: an unknown signature, wrong input aliases, a signature
            with sparse tensors, a full batch queue (UNAVAILABLE).
          tf.errors.OpError: the step's error (a wrong shape, say).

        Cancellation: see the class docstring.
        """
        signature = find_signature(self.signatures, signature_name)
        signature.check_predict(inputs)
        plan = self.model.plans.get(signature.name)
        if plan is None:
            raise ServingError(
                "UNIMPLEMENTED",
                f"Signature {signature.name!r} has sparse or composite tensors; "
                "the REST API feeds and fetches dense tensors only.",
            )
        feeds = {plan.feeds[alias]: value for alias, value in inputs.items()}
        for alias, value in signature.defaults.items():
            feeds.setdefault(plan.feeds[alias], value)
        if self.batcher is not None and plan.batchable and _rows(feeds):
            try:
                result = await self.batcher.run(plan.fetches, feeds)
            except BatchQueueFullError as exc:
                raise ServingError("UNAVAILABLE", str(exc)) from None
            except (ValueError, TypeError, errors.OpError):
                # The batch failed, maybe for another caller's rows: this
                # request's own step gives its own answer (or error).
                logger.debug("A batched step failed; running the request alone")
            else:
                return dict(result)
        return dict(await self.session.run_without_hooks(plan.fetches, feeds))


def _rows(feeds: Mapping[Any, Any]) -> int:
    """The row count all *feeds* share (their first dimension), or 0 if none."""
    counts = {np.shape(value)[0] if np.ndim(value) else -1 for value in feeds.values()}
    if len(counts) != 1:
        return 0
    rows = counts.pop()
    return max(rows, 0)


@asynccontextmanager
async def open_saved_model(
    path: str,
    *,
    version: int = 1,
    batching: bool = True,
    max_batch_size: int = 32,
    batch_timeout_secs: float = 0.001,
    max_enqueued: int | None = None,
    stats: BatchStats | None = None,
    tags: tuple[str, ...] = SERVE_TAGS,
    warm_up: bool = True,
) -> AsyncIterator[SavedModelVersion]:
    """Load the SavedModel at *path* and serve it for the time of the block.

    The graph is imported on a worker thread (off the event loop), then a
    `MonitoredSession` opens on it and, with *batching*, a `Batcher` with
    *max_batch_size*, *batch_timeout_secs*, *max_enqueued* and *stats*. With
    *warm_up*, every signature runs on a row of zeros first (its errors
    ignored), so TensorFlow builds its executors before the first request.

    Raises:
      OSError, RuntimeError, tf.errors.OpError: the SavedModel does not load.

    Cancellation: the graph import runs to its end on its thread; cancelled
    while open, the batcher and session close as on leaving the block.
    """
    model = await anyio.to_thread.run_sync(import_saved_model, path, tags)
    with model.graph.as_default():
        session = MonitoredSession(session_creator=SavedModelCreator(model))
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(session)
            batcher = None
            if batching:
                batcher = await stack.enter_async_context(
                    Batcher(
                        session,
                        max_batch_size=max_batch_size,
                        batch_timeout_secs=batch_timeout_secs,
                        max_enqueued=max_enqueued,
                        stats=stats,
                    )
                )
            if warm_up:
                await _warm_up(session, model)
            yield SavedModelVersion(model, version, session, batcher)
    except BaseExceptionGroup as group:  # the batcher's task group wraps errors
        error = collapse(group)
        if error is group:
            raise
        raise error from None


#: Steps per signature when warming up: TensorFlow builds the executor of a
#: feed/fetch set on its first run, and asyncsess's RunCache settles how a step
#: runs over its first 15 (``RunCache.warmup + probes``). At most this long.
_WARM_UP_STEPS = 16
_WARM_UP_SECS = 2.0


async def _warm_up(session: MonitoredSession, model: ImportedModel) -> None:
    """Run each signature on one row of zeros (as TF Serving's warm-up files do)."""
    for name, plan in model.plans.items():
        signature = model.signatures[name]
        feeds = {
            plan.feeds[alias]: _zeros(info.spec)
            for alias, info in signature.inputs.items()
        }
        deadline = time.monotonic() + _WARM_UP_SECS
        for _ in range(_WARM_UP_STEPS):
            if time.monotonic() > deadline:
                break
            try:
                await session.run_without_hooks(plan.fetches, feeds)
            except (ValueError, TypeError, errors.OpError) as exc:
                logger.debug("Warm-up of signature %r: %s", name, exc)
                break


def _zeros(spec: TensorSpec) -> np.ndarray:
    """One row of zeros (empty strings) of a tensor of *spec*."""
    dims = (1,) if spec.shape is None else spec.shape
    shape = tuple(1 if d is None else d for d in dims)
    if spec.dtype == object:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=spec.dtype)
