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

from ._demo import SyntheticData, build_model
from ._exceptions import collapse
from ._serve_metrics import DeviceClock, Metrics, finite_or_none
from ._session import MonitoredSession, SingularMonitoredSession
from ._tf import v1
from ._training import MonitoredTrainingSession
from .hooks import StopAtStepHook
from .hooks._rate import RateMeter

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import numpy as np
    from anyio.abc import TaskStatus

    from ._demo import DemoModel

logger = logging.getLogger("asyncsess.serve")

#: Loss-curve points kept for ``GET /history`` (older ones are dropped).
HISTORY_POINTS = 600
#: At most one loss-curve point per this many seconds.
HISTORY_EVERY_SECS = 0.1


@dataclass(frozen=True)
class ServiceConfig:
    """What the service trains and how: the arguments of `create_app`."""

    logdir: str
    input_dim: int = 4
    token: str | None = None
    last_step: int | None = None
    step_interval: float = 0.0
    save_checkpoint_secs: float = 600.0
    save_summaries_steps: int = 100
    batch_size: int = 32
    max_rows: int = 1024
    max_body_bytes: int = 1 << 20
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")


class ModelUnavailable(Exception):
    """No session can answer predictions right now (starting, closing, failed)."""


class Trainer:
    """Trains the demo model in a background task and answers predictions.

    `running` opens a `MonitoredTrainingSession` in a task of its own, which owns
    the session from `open` to `close` (they must run in one task) and runs the
    training loop. `request_stop` ends training after the current step; the
    session then closes, so the hooks' ``end`` writes the final checkpoint, and
    predictions are answered from that checkpoint until the service shuts down.

    Cancellation: see `running`.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.model: DemoModel = build_model(config.input_dim)
        self.data = SyntheticData(config.input_dim, batch_size=config.batch_size)
        self.metrics = Metrics()
        self.clock = DeviceClock()
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
        #: Where predictions come from: "training", "checkpoint" or None.
        self.serving: str | None = None
        self._training: MonitoredSession | None = None
        self._predictor: MonitoredSession | None = None
        self._stop_requested = False
        self._closing: anyio.Event | None = None
        self._last_point = -math.inf
        self._recoveries = 0

    # -- lifecycle --------------------------------------------------------------

    @asynccontextmanager
    async def running_in_background(self) -> AsyncIterator[Trainer]:
        """Open the training session, train in the background, stop on exit.

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
        await self._check_checkpoint()
        started = False
        try:
            async with self._training_session() as sess:
                await self._prepare(sess)
                task_status.started()
                started = True
                await self._train(sess)
                self._predictor, self.serving = None, None
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

    async def _check_checkpoint(self) -> None:
        """Refuse a checkpoint of another input size, with a message that says so."""
        logdir, wanted = self.config.logdir, self.config.input_dim
        shape = await anyio.to_thread.run_sync(_checkpoint_input_dim, logdir)
        if shape is not None and shape != wanted:
            raise ValueError(
                f"The checkpoint in {logdir!r} is of a model with input_dim={shape}, "
                f"not {wanted}; use that input_dim or another log directory."
            )

    def _training_session(self) -> MonitoredSession:
        config, clock = self.config, self.clock
        hooks: list[Any] = []
        if config.last_step is not None:
            hooks.append(StopAtStepHook(last_step=config.last_step))
        # The clock's start hook is the last hook, its stop hook the first
        # (chief-only hooks come first): together they bracket the device step.
        with self.model.graph.as_default():
            session = MonitoredTrainingSession(
                checkpoint_dir=config.logdir,
                hooks=[*hooks, clock.start],
                chief_only_hooks=[clock.stop],
                save_checkpoint_secs=config.save_checkpoint_secs,
                save_summaries_steps=config.save_summaries_steps,
            )
        self._training = session
        if self._stop_requested:
            session.request_stop()
        return session

    async def _prepare(self, sess: MonitoredSession) -> None:
        model = self.model
        step = await sess.run_without_hooks(model.global_step)
        x, y = self.data.batch(int(step))
        loss = await sess.run_without_hooks(model.loss, {model.x: x, model.y: y})
        self.global_step, self.loss = int(step), float(loss)
        self._add_point(time.monotonic())
        self.metrics.global_step.set(self.global_step)
        self.metrics.running.set(1)
        self._predictor, self.serving, self.running = sess, "training", True
        logger.info("Training from global step %d in %s", step, self.config.logdir)

    async def _train(self, sess: MonitoredSession) -> None:
        model, interval = self.model, self.config.step_interval
        fetches = [model.train_op, model.loss]
        while not sess.should_stop():
            x, y = self.data.batch(self.global_step)
            started = time.perf_counter()
            try:
                _, loss = await sess.run(fetches, {model.x: x, model.y: y})
            except RuntimeError:
                if sess.should_stop():  # a stop raced the step for the lock
                    break
                raise
            await self._record(sess, time.perf_counter() - started, float(loss))
            if interval > 0:
                await anyio.sleep(interval)

    async def _record(
        self, sess: MonitoredSession, seconds: float, loss: float
    ) -> None:
        if sess.recovery_count != self._recoveries:  # restored: the step moved back
            self._recoveries = sess.recovery_count
            self.global_step = int(await sess.run_without_hooks(self.model.global_step))
        else:
            self.global_step += 1
        self.loss = loss
        now = time.monotonic()
        self.rate.add(now, self.global_step)
        m = self.metrics
        m.steps.inc()
        m.global_step.set(self.global_step)
        m.loss.set(loss)
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
        self._predictor, self.serving, self.running = None, None, False
        self.rate.clear()
        self.metrics.running.set(0)
        self.metrics.steps_per_sec.set(0)
        logger.info("Training ended at global step %d.", self.global_step)

    async def _serve_checkpoint(self, closing: anyio.Event) -> None:
        """Answer predictions from the last checkpoint until the service closes."""
        logdir = self.config.logdir
        path = await anyio.to_thread.run_sync(v1.train.latest_checkpoint, logdir)
        if path is None:
            return
        with self.model.graph.as_default():
            session = SingularMonitoredSession(checkpoint_filename_with_path=path)
        try:
            async with session as sess:
                self._predictor, self.serving = sess, "checkpoint"
                logger.info("Answering predictions from %s", path)
                await closing.wait()
                self._predictor, self.serving = None, None
        except Exception:
            logger.exception("Could not serve predictions from %s", path)
        finally:
            self._predictor, self.serving = None, None

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
            "input_dim": self.config.input_dim,
            "predictions_from": self.serving,
            "stop_reason": self.stop_reason,
            "error": self.error,
        }

    def history_document(self) -> dict[str, Any]:
        """The ``GET /history`` document: status plus the recent loss curve."""
        document = self.status()
        document["points"] = [list(point) for point in self.history]
        return document

    async def predict(self, rows: np.ndarray[Any, Any]) -> list[float | None]:
        """The model's prediction for each row of *rows* (float32, validated).

        Raises:
          ModelUnavailable: no session can answer now.

        Cancellation: the prediction is shielded (it is short and bounded by the
        request limits): cancelling a step could close the training session.
        """
        sess = self._predictor
        if sess is None:
            raise ModelUnavailable(self._unavailable_reason())
        model = self.model
        with anyio.CancelScope(shield=True):
            try:
                y = await sess.run_without_hooks(model.prediction, {model.x: rows})
            except RuntimeError as exc:  # closed while we waited for the lock
                raise ModelUnavailable(self._unavailable_reason()) from exc
        self.metrics.predictions.inc(len(rows))
        return [finite_or_none(float(v)) for v in y]

    def _unavailable_reason(self) -> str:
        if self.error is not None:
            return f"Training failed ({self.error}) and no checkpoint is being served."
        return (
            "The model is not being served right now (the service is starting or "
            "shutting down, or no checkpoint was written); retry later."
        )


def _checkpoint_input_dim(logdir: str) -> int | None:
    """The demo model's input size in *logdir*'s last checkpoint, if there is one."""
    path = v1.train.latest_checkpoint(logdir)
    if path is None:
        return None
    shapes = dict(v1.train.list_variables(path))
    weights = shapes.get("weights")
    return int(weights[0]) if weights else None
