"""The web service's background work: the training loop and the model it serves."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ._admission import TrainingPace
from ._batch_stats import BatchStats
from ._batcher import Batcher
from ._exceptions import BatchQueueFullError, SessionStateError, collapse
from ._serve_metrics import DeviceClock, Metrics, finite_or_none
from ._session import MonitoredSession, SingularMonitoredSession
from ._tf import errors, v1
from ._training import MonitoredTrainingSession
from .hooks import StopAtStepHook
from .hooks._rate import RateMeter

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    import numpy as np
    from anyio.abc import TaskStatus

    from ._serve_factory import ServedGraph

logger = logging.getLogger("asyncsess.serve")

#: Loss-curve points kept for ``GET /history`` (older ones are dropped).
HISTORY_POINTS = 600
#: At most one loss-curve point per this many seconds.
HISTORY_EVERY_SECS = 0.1
#: TensorFlow's code for a value a run refuses (error_codes.proto).
_INVALID_ARGUMENT = 3


@dataclass(frozen=True)
class ServiceConfig:
    """How the service trains and answers: the arguments of `create_app`."""

    logdir: str
    input_dim: int = 4
    token: str | None = None
    last_step: int | None = None
    step_interval: float = 0.0
    max_rows: int = 1024
    max_body_bytes: int = 1 << 20
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")
    batching: bool = True
    max_batch_size: int = 32
    batch_timeout_secs: float = 0.001


class ModelUnavailable(Exception):
    """No session can answer predictions right now (starting, closing, failed)."""


class PredictionFailed(Exception):
    """TensorFlow refused a request's values (a shape the graph rejects, ...).

    ``error_code`` is TensorFlow's canonical code (3, INVALID_ARGUMENT, for what
    ``Session.run`` refuses before running), ``str()`` its message.
    """

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class Overloaded(Exception):
    """Too many rows wait for the device; the client should retry later."""


class Trainer:
    """Trains a `ServedGraph` in a background task and answers its predictions.

    `running_in_background` opens the session in a task of its own, which owns
    it from `open` to `close` (they must run in one task): a
    `MonitoredTrainingSession` running the training loop when the graph has a
    train op, else a `SingularMonitoredSession` restoring its last checkpoint.
    Predictions run on that same session, batched through a `Batcher`, so they
    take turns with training steps. `request_stop` ends training after the
    current step; the session then closes, so the hooks' ``end`` writes the
    final checkpoint, and predictions are answered from that checkpoint until
    the service shuts down.

    Cancellation: see `running_in_background`.
    """

    def __init__(self, config: ServiceConfig, served: ServedGraph) -> None:
        self.config = config
        self.served = served
        self.metrics = Metrics()
        self.batch_stats = BatchStats()
        self.metrics.add_batching(self.batch_stats)
        self.clock = DeviceClock()
        #: Lets requests in as training keeps its pace (`asyncsess._admission`).
        self.pace = TrainingPace()
        #: Steps per second over the last few seconds of training.
        self.rate = RateMeter(window_secs=3.0)
        self.history: deque[tuple[int, float | None, float]] = deque(
            maxlen=HISTORY_POINTS
        )
        self.global_step = 0
        self.loss = math.nan
        self.running = False
        self.error: str | None = None
        self.stop_reason: str | None = None
        #: Where predictions come from: "training", "checkpoint", "graph" or None.
        self.serving: str | None = None
        self._training: MonitoredSession | None = None
        self._predictor: MonitoredSession | None = None
        self._batcher: Batcher | None = None
        self._stop_requested = False
        self._closing: anyio.Event | None = None
        self._last_point = -math.inf

    # -- lifecycle --------------------------------------------------------------

    @asynccontextmanager
    async def running_in_background(self) -> AsyncIterator[Trainer]:
        """Open the session, train in the background, stop on exit.

        Entering returns once the session is open (checkpoint restored); an error
        opening it is raised here. Leaving requests a stop, lets the current step
        finish and waits for the session to close (final checkpoint).

        Cancellation: cancelling the exit cancels the training task: the session
        closes without the hooks' ``end`` (no final checkpoint).
        """
        self._closing = closing = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._serve_model)
                tg.start_soon(self._watch_loop, closing)
                try:
                    yield self
                finally:
                    self.request_stop()
                    closing.set()
        except BaseExceptionGroup as group:
            # Errors keep their own type: our task group is an implementation detail.
            error = collapse(group)
            if error is group:
                raise
            raise error from None

    def request_stop(self) -> None:
        """End training after the current step (idempotent; any task may call it)."""
        self._stop_requested = True
        if self._training is not None:
            self._training.request_stop()

    async def _serve_model(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        served = self.served
        if served.preflight is not None:
            await anyio.to_thread.run_sync(served.preflight, served.checkpoint_dir)
        if not served.trains:
            await self._serve_only(task_status)
            return
        started = False
        try:
            async with self._training_session() as sess:
                await self._prepare(sess)
                async with self._answering(sess, "training"):
                    task_status.started()
                    started = True
                    await self._train(sess)
                self.global_step = await self._read_step(sess)
        except Exception as exc:
            if not started:
                raise
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception("Training failed; the service keeps answering.")
        finally:
            self._end_training()
        assert self._closing is not None
        if not self._closing.is_set():
            await self._serve_checkpoint(self._closing)

    def _training_session(self) -> MonitoredSession:
        config, served, clock = self.config, self.served, self.clock
        hooks: list[Any] = list(served.hooks)
        if config.last_step is not None:
            hooks.append(StopAtStepHook(last_step=config.last_step))
        # The clock's start hook is the last hook, its stop hook the first
        # (chief-only hooks come first): together they bracket the device step.
        with served.graph.as_default():
            session = MonitoredTrainingSession(
                checkpoint_dir=served.checkpoint_dir,
                scaffold=served.scaffold,
                config=served.config,
                hooks=[*hooks, clock.start],
                chief_only_hooks=[clock.stop, *served.chief_only_hooks],
                save_checkpoint_secs=served.save_checkpoint_secs,
                save_checkpoint_steps=served.save_checkpoint_steps,
                save_summaries_steps=served.save_summaries_steps,
            )
        self._training = session
        if self._stop_requested:
            session.request_stop()
        return session

    async def _read_step(self, sess: MonitoredSession) -> int:
        step = self.served.global_step
        return 0 if step is None else int(await sess.run_without_hooks(step))

    async def _prepare(self, sess: MonitoredSession) -> None:
        self.global_step = await self._read_step(sess)
        self._add_point(time.monotonic())
        self.metrics.global_step.set(self.global_step)
        self.metrics.running.set(1)
        self.running = True
        logger.info(
            "Training from global step %d in %s",
            self.global_step,
            self.served.checkpoint_dir,
        )

    async def _train(self, sess: MonitoredSession) -> None:
        served, interval = self.served, self.config.step_interval
        fetches = {"train": served.train_op, "step": served.global_step}
        if served.loss is not None:
            fetches["loss"] = served.loss
        step_feed = served.step_feed
        while not sess.should_stop():
            feed = None if step_feed is None else step_feed(self.global_step)
            started = time.perf_counter()
            try:
                results = await sess.run(fetches, feed)
            except SessionStateError:
                if sess.should_stop():  # a stop raced the step for the lock
                    break
                raise
            self._record(time.perf_counter() - started, results)
            if interval > 0:
                await anyio.sleep(interval)

    def _record(self, seconds: float, results: dict[str, Any]) -> None:
        # The step's read of the global step is the value before its increment,
        # as TensorFlow's hooks take it; after a recovery it is the restored one.
        self.global_step = int(results["step"]) + 1
        self.loss = float(results.get("loss", math.nan))
        now = time.monotonic()
        self.rate.add(now, self.global_step)
        self.pace.step(seconds)
        m = self.metrics
        m.steps.inc()
        m.global_step.set(self.global_step)
        m.loss.set(self.loss)
        m.steps_per_sec.set(self.steps_per_sec())
        m.step_time.observe(seconds)
        m.device_time.observe(self.clock.last)
        m.hook_time.observe(max(0.0, seconds - self.clock.last))
        if now - self._last_point >= HISTORY_EVERY_SECS:
            self._add_point(now)

    def steps_per_sec(self) -> float:
        """The recent step rate; 0.0 until two steps were recorded."""
        return self.rate.per_sec() or 0.0

    def _add_point(self, now: float) -> None:
        self._last_point = now
        point = (self.global_step, finite_or_none(self.loss), self.steps_per_sec())
        self.history.append(point)

    def _end_training(self) -> None:
        session = self._training
        if session is not None and session.stop_reason is not None:
            self.stop_reason = str(session.stop_reason)
        self.running = False
        self.pace.stopped()
        self.rate.clear()
        self.metrics.running.set(0)
        self.metrics.steps_per_sec.set(0)
        logger.info("Training ended at global step %d.", self.global_step)

    async def _serve_checkpoint(self, closing: anyio.Event) -> None:
        """Answer predictions from the last checkpoint until the service closes."""
        logdir = self.served.checkpoint_dir
        path = await anyio.to_thread.run_sync(v1.train.latest_checkpoint, logdir)
        if path is None:
            return
        with self.served.graph.as_default():
            session = SingularMonitoredSession(checkpoint_filename_with_path=path)
        try:
            async with session as sess, self._answering(sess, "checkpoint"):
                logger.info("Answering predictions from %s", path)
                await closing.wait()
        except Exception:
            logger.exception("Could not serve predictions from %s", path)

    async def _serve_only(self, task_status: TaskStatus[None]) -> None:
        """No train op: serve the graph, from its last checkpoint if there is one."""
        served = self.served
        logdir = served.checkpoint_dir
        path = await anyio.to_thread.run_sync(v1.train.latest_checkpoint, logdir)
        with served.graph.as_default():
            session = SingularMonitoredSession(
                hooks=list(served.hooks),
                scaffold=served.scaffold,
                config=served.config,
                checkpoint_dir=logdir,
            )
        async with session as sess:
            self.global_step = await self._read_step(sess)
            self.metrics.global_step.set(self.global_step)
            async with self._answering(sess, "graph" if path is None else "checkpoint"):
                logger.info("Serving %s", path or "the graph (no checkpoint)")
                task_status.started()
                assert self._closing is not None
                await self._closing.wait()

    @asynccontextmanager
    async def _answering(
        self, sess: MonitoredSession, source: str
    ) -> AsyncIterator[None]:
        """Answer predictions from *sess* (batched, if the graph allows) inside."""
        config = self.config
        batching = config.batching and self.served.batchable
        try:
            if batching:
                batcher = Batcher(
                    sess,
                    max_batch_size=config.max_batch_size,
                    batch_timeout_secs=config.batch_timeout_secs,
                    stats=self.batch_stats,
                )
                async with batcher:
                    self._predictor, self._batcher, self.serving = sess, batcher, source
                    yield
            else:
                self._predictor, self.serving = sess, source
                yield
        finally:
            self._predictor, self._batcher, self.serving = None, None, None

    async def _watch_loop(self, closing: anyio.Event) -> None:
        """Record the event loop's lag until the service closes."""
        interval = 0.25
        while not closing.is_set():
            before = time.perf_counter()
            with anyio.move_on_after(interval):
                await closing.wait()
            lag = time.perf_counter() - before - interval
            if not closing.is_set():
                self.metrics.loop_lag.observe(max(0.0, lag))

    # -- what the endpoints read ---------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``GET /status`` document."""
        return {
            "global_step": self.global_step,
            "loss": finite_or_none(self.loss),
            "steps_per_sec": self.steps_per_sec() if self.running else 0.0,
            "running": self.running,
            **self.served.facts,
            "predictions_from": self.serving,
            "stop_reason": self.stop_reason,
            "error": self.error,
        }

    def history_document(self) -> dict[str, Any]:
        """The ``GET /history`` document: status plus the recent loss curve."""
        document = self.status()
        document["points"] = [list(point) for point in self.history]
        return document

    async def predict(
        self, inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Every output of the graph for *inputs* (by input name, validated).

        Batched with concurrent calls when the graph allows and every input has
        the same number of rows; alone otherwise.

        Raises:
          ModelUnavailable: no session can answer now.
          Overloaded: too many rows already wait.
          PredictionFailed: TensorFlow refused the values.

        Cancellation: a batched call is taken out of its batch (or drops its
        share of it); a call run alone is shielded (it is short and bounded by
        the request limits): cancelling a step could close the training session.
        """
        sess, batcher = self._predictor, self._batcher
        if sess is None:
            raise ModelUnavailable(self._unavailable_reason())
        feed = {self.served.inputs[name]: value for name, value in inputs.items()}
        outputs = self.served.outputs
        result: dict[str, np.ndarray[Any, Any]]
        if batcher is not None and _same_rows(feed):
            try:
                result = await batcher.run(outputs, feed)
            except BatchQueueFullError as exc:
                raise Overloaded(str(exc)) from None
            except RuntimeError as exc:  # closed: its session is going away
                raise ModelUnavailable(self._unavailable_reason()) from exc
            except (errors.OpError, ValueError, TypeError):
                # One request's bad values fail its whole batch: each caller
                # retries alone, so only the culprit's request fails.
                result = await self._run_alone(sess, feed)
        else:
            result = await self._run_alone(sess, feed)
        self.metrics.predictions.inc(_rows(feed))
        return result

    async def _run_alone(
        self, sess: MonitoredSession, feed: dict[Any, Any]
    ) -> dict[str, np.ndarray[Any, Any]]:
        with anyio.CancelScope(shield=True):
            try:
                result: dict[str, Any] = await sess.run_without_hooks(
                    self.served.outputs, feed
                )
            except SessionStateError as exc:  # closed while we waited for the lock
                raise ModelUnavailable(self._unavailable_reason()) from exc
            except errors.OpError as exc:
                message = exc.message.split("\n\n", 1)[0].strip()
                raise PredictionFailed(exc.error_code, message) from None
            except (ValueError, TypeError) as exc:  # a value Session.run refuses
                raise PredictionFailed(_INVALID_ARGUMENT, str(exc)) from None
        return result

    def _unavailable_reason(self) -> str:
        if self.error is not None:
            return f"Training failed ({self.error}) and no checkpoint is being served."
        return (
            "The model is not being served right now (the service is starting or "
            "shutting down, or no checkpoint was written); retry later."
        )


def _rows(feed: Mapping[Any, Any]) -> int:
    for value in feed.values():
        shape = getattr(value, "shape", ())
        return int(shape[0]) if shape else 1
    return 1


def _same_rows(feed: Mapping[Any, Any]) -> bool:
    """Whether every feed has a first dimension, and the same one (batchable)."""
    rows = {getattr(value, "shape", ())[:1] for value in feed.values()}
    return len(rows) == 1 and rows != {()}
