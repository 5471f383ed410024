"""The web service's measurements: Prometheus metrics and device-step timing."""

from __future__ import annotations

import functools
import math
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ._batch_metrics import register_batch_metrics
from ._tf import TFSessionRunHook

if TYPE_CHECKING:
    from ._batch_stats import BatchStats

# From a fast CPU step (~0.1 ms) to a slow accelerator step or a checkpoint (10 s).
STEP_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
LAG_BUCKETS = (1e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own.

    A registry per app (not prometheus_client's global one) lets several apps
    live in one process, as tests and embedding applications need.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter = functools.partial(Counter, registry=self.registry)
        gauge = functools.partial(Gauge, registry=self.registry)
        histogram = functools.partial(Histogram, registry=self.registry)
        step_histogram = functools.partial(histogram, buckets=STEP_BUCKETS)
        self.steps = counter("asyncsess_steps", "Training steps run by this process.")
        self.global_step = gauge("asyncsess_global_step", "The model's global step.")
        self.loss = gauge("asyncsess_loss", "Loss of the last training step.")
        self.steps_per_sec = gauge(
            "asyncsess_steps_per_second", "Recent training step rate."
        )
        self.running = gauge(
            "asyncsess_training_running", "1 while the training loop runs."
        )
        self.step_time = step_histogram(
            "asyncsess_step_seconds",
            "Wall time of one MonitoredSession.run(), hooks included.",
        )
        self.device_time = step_histogram(
            "asyncsess_device_step_seconds",
            "Time of one step inside tf.Session.run on the worker thread.",
        )
        self.hook_time = step_histogram(
            "asyncsess_hook_seconds",
            "Time of one step outside the device step: hooks' before_run and "
            "after_run, merging and hand-offs.",
        )
        self.loop_lag = histogram(
            "asyncsess_event_loop_lag_seconds",
            "How late the event loop woke a sleeping task (a blocked loop shows here).",
            buckets=LAG_BUCKETS,
        )
        self.predictions = counter(
            "asyncsess_predict_rows", "Rows of the predictions answered."
        )
        self.rest_requests = counter(
            "asyncsess_model_requests",
            "REST API requests answered, by API and HTTP status.",
            ["api", "code"],
        )
        self.rest_latency = step_histogram(
            "asyncsess_model_request_seconds",
            "Time to answer a REST API request, by API.",
            ["api"],
        )
        self.rejected = counter(
            "asyncsess_rejected_requests",
            "Requests refused with a 4xx status, by status.",
            ["status"],
        )

    def observe(self, api: str, status: int, seconds: float) -> None:
        """Count one answered ``/v1/`` request of *api* (the REST routes call it)."""
        self.rest_requests.labels(api, str(status)).inc()
        self.rest_latency.labels(api).observe(seconds)

    def add_batching(self, stats: BatchStats) -> None:
        """Export *stats* (the service's batches) with the other metrics."""
        register_batch_metrics(self.registry, stats)

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)


class DeviceClock:
    """Times the device step through two TensorFlow (synchronous) hooks.

    TF hooks' ``before_run``/``after_run`` run on the session's worker thread right
    around ``tf.Session.run``: `start` placed last among the hooks and `stop`
    first bracket the device step, whatever the other hooks do.
    """

    def __init__(self) -> None:
        self._started = 0.0
        #: Seconds the last device step took (0.0 before the first).
        self.last = 0.0
        self.start = _ClockHook(self, "start")
        self.stop = _ClockHook(self, "stop")

    def mark(self, which: str) -> None:
        now = time.perf_counter()
        if which == "start":
            self._started = now
        else:
            self.last = now - self._started


class _ClockHook(TFSessionRunHook):  # type: ignore[misc]
    def __init__(self, clock: DeviceClock, which: str) -> None:
        self._clock, self._which = clock, which

    def before_run(self, run_context: Any) -> None:
        if self._which == "start":
            self._clock.mark("start")

    def after_run(self, run_context: Any, run_values: Any) -> None:
        if self._which == "stop":
            self._clock.mark("stop")


def finite_or_none(value: float) -> float | None:
    """*value*, or None if it is NaN or infinite (JSON has no such numbers)."""
    return value if math.isfinite(value) else None
