"""The demo: linear regression on synthetic data, trained under a MonitoredSession.

`build_model` is reusable (the web service serves the same model); `train` is the
loop behind ``python -m asyncsess demo``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import numpy as np

from ._cli import EXIT_OK
from ._hook import SessionRunHook
from ._signals import stop_on_signals
from ._tf import global_step_read, tf, v1
from ._training import MonitoredTrainingSession
from .hooks._progress import ProgressBarHook

if TYPE_CHECKING:
    from ._tf import SessionRunContext, SessionRunValues


@dataclass(frozen=True)
class DemoModel:
    """The demo's graph and the tensors a training loop or a server needs.

    ``x`` is a float32 placeholder of shape ``[None, input_dim]``, ``y`` one of
    shape ``[None]``; ``prediction`` has shape ``[None]``.
    """

    graph: Any
    x: Any
    y: Any
    prediction: Any
    loss: Any
    train_op: Any
    global_step: Any
    input_dim: int


def build_model(input_dim: int = 4, *, learning_rate: float = 0.1) -> DemoModel:
    """Build a linear regression ``prediction = x @ w + b`` in a new graph.

    The graph has a global step, a ``loss`` scalar summary (for TensorBoard) and
    a gradient-descent ``train_op`` incrementing the global step. Variables
    start at zero, so training is deterministic given the data.

    Args:
      input_dim: Number of input features.
      learning_rate: Gradient-descent learning rate.
    """
    if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
        raise ValueError(f"input_dim must be an int >= 1. Received: {input_dim=!r}")
    graph = tf.Graph()
    with graph.as_default():
        global_step = v1.train.get_or_create_global_step()
        # As Estimator does: the model depends on the hooks' global-step read, so
        # a step's read always sees the value before that step's increment.
        with tf.control_dependencies([global_step_read(graph)]):
            x = v1.placeholder(tf.float32, [None, input_dim], name="x")
            y = v1.placeholder(tf.float32, [None], name="y")
            zeros = v1.zeros_initializer()
            w = v1.get_variable("weights", [input_dim, 1], initializer=zeros)
            b = v1.get_variable("bias", [], initializer=zeros)
            prediction = tf.identity(tf.squeeze(x @ w, axis=1) + b, name="prediction")
            loss = tf.reduce_mean(tf.square(prediction - y), name="loss")
            v1.summary.scalar("loss", loss)
            optimizer = v1.train.GradientDescentOptimizer(learning_rate)
            train_op = optimizer.minimize(loss, global_step=global_step)
    return DemoModel(graph, x, y, prediction, loss, train_op, global_step, input_dim)


class SyntheticData:
    """Noisy samples of a fixed random linear function; batch k is always the same."""

    def __init__(self, input_dim: int, *, seed: int = 0, batch_size: int = 32) -> None:
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(size=input_dim).astype(np.float32)
        self.bias = np.float32(rng.normal())
        self._seed, self._batch_size, self._dim = seed, batch_size, input_dim

    def batch(self, index: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Batch *index*: ``(x, y)``, reproducible so that a resumed run continues."""
        rng = np.random.default_rng([self._seed, index])
        x = rng.normal(size=(self._batch_size, self._dim)).astype(np.float32)
        noise = rng.normal(scale=0.1, size=self._batch_size).astype(np.float32)
        return x, x @ self.weights + self.bias + noise


class LatencyHook(SessionRunHook):
    """An async hook that awaits ``seconds`` in every ``after_run``.

    It stands for slow async work (a metrics push, an RPC): with
    ``overlap_after_run`` it runs while the next step computes, so the step rate
    barely drops.

    Cancellation: the wait is cancelled with the session's caller.
    """

    overlap_after_run = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def after_run(
        self, run_context: SessionRunContext, run_values: SessionRunValues
    ) -> None:
        await anyio.sleep(self.seconds)


#: How the demo opens its session (TensorFlow's keywords), in one place.
training_session = MonitoredTrainingSession


@dataclass(frozen=True)
class DemoOptions:
    """What ``python -m asyncsess demo`` was asked to do."""

    steps: int = 2000
    logdir: str = "runs/demo"
    hooks_latency_ms: float = 0.0
    backend: str = "asyncio"
    input_dim: int = 4
    save_checkpoint_steps: int = 100
    progress_log_secs: float = 5.0


@dataclass(frozen=True)
class DemoResult:
    """How a demo run ended."""

    start_step: int
    final_step: int
    signal: str | None


def demo_hooks(model: DemoModel, options: DemoOptions) -> list[Any]:
    """The demo's own hooks: TF's StopAtStepHook, a progress bar, maybe latency."""
    hooks: list[Any] = [
        v1.train.StopAtStepHook(last_step=options.steps),
        ProgressBarHook(
            last_step=options.steps,
            tensors={"loss": model.loss},
            log_every_secs=options.progress_log_secs,
        ),
    ]
    if options.hooks_latency_ms > 0:
        hooks.append(LatencyHook(options.hooks_latency_ms / 1000))
    return hooks


async def train(options: DemoOptions, out: TextIO = sys.stdout) -> DemoResult:
    """Train the demo model to global step ``options.steps``, resuming if it can.

    Writes what it does to *out*: where it resumed, a line starting "Started"
    once training runs (signals are handled from then on), and where it ended.
    SIGINT/SIGTERM stop it after the current step with a final checkpoint.

    Cancellation: cancels the current step as `MonitoredSession.run` does; the
    hooks' ``end`` is not called, so no final checkpoint is written.
    """
    model = build_model(options.input_dim)
    data = SyntheticData(options.input_dim)
    restored = await anyio.to_thread.run_sync(
        v1.train.latest_checkpoint, options.logdir
    )
    with model.graph.as_default():
        session = training_session(
            checkpoint_dir=options.logdir,
            hooks=demo_hooks(model, options),
            save_checkpoint_steps=options.save_checkpoint_steps,
            save_summaries_steps=10,
            log_step_count_steps=100,
        )
    async with stop_on_signals(session) as stop, session as sess:
        start = int(await sess.run_without_hooks(model.global_step))
        _say(out, _started(options, start, restored))
        index = start
        while index < options.steps and not sess.should_stop():
            x, y = data.batch(index)
            await sess.run(model.train_op, feed_dict={model.x: x, model.y: y})
            index += 1
        final = int(await sess.run_without_hooks(model.global_step))
    name = None if stop.received is None else stop.received.name
    return DemoResult(start, final, name)


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run `train` on ``options.backend`` and report how it ended; the exit status."""
    result = anyio.run(train, options, out, backend=options.backend)
    checkpoint = v1.train.latest_checkpoint(options.logdir)
    how = "Finished" if result.signal is None else f"Stopped by {result.signal}"
    _say(out, f"{how} at global step {result.final_step}. Checkpoint: {checkpoint}")
    _say(out, f"TensorBoard: tensorboard --logdir {options.logdir}")
    return EXIT_OK


def _started(options: DemoOptions, start: int, restored: str | None) -> str:
    where = (
        f"resumed at global step {start} from {restored}"
        if restored
        else f"no checkpoint in {options.logdir}, starting at global step {start}"
    )
    if start >= options.steps:
        return (
            f"Started on {options.backend}: {where}; already at --steps "
            f"{options.steps}, nothing to train."
        )
    return (
        f"Started on {options.backend}: {where}; training to global step "
        f"{options.steps} (Ctrl-C stops after the current step)."
    )


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()
