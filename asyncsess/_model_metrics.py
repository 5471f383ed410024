"""The model server's Prometheus metrics: requests, versions, batching."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ._batch_metrics import register_batch_metrics

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.core import Metric

    from ._batch_stats import BatchStats
    from ._model_versions import ModelVersions

# From a batched CPU prediction (~0.1 ms) to a slow model (10 s).
LATENCY_BUCKETS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


class ModelMetrics:
    """Prometheus metrics of one model server, in a registry of its own.

    ``asyncsess_model_requests_total{api, code}`` and
    ``asyncsess_model_request_seconds{api}`` for every ``/v1/`` request;
    ``asyncsess_model_version`` (the version serving),
    ``asyncsess_model_loads_total`` and ``asyncsess_model_load_failures_total``;
    and the batch metrics of *stats* (`register_batch_metrics`).

    Cancellation: plain counters, nothing to cancel.
    """

    def __init__(self, versions: ModelVersions, stats: BatchStats | None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "asyncsess_model_requests",
            "REST API requests answered, by API and HTTP status.",
            ["api", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "asyncsess_model_request_seconds",
            "Time to answer a REST API request, by API.",
            ["api"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self.registry.register(_VersionCollector(versions))
        if stats is not None:
            register_batch_metrics(self.registry, stats)

    def observe(self, api: str, status: int, seconds: float) -> None:
        """Count one answered request of *api*."""
        # The labelled children, looked up once per (api, status): labels()
        # checks and joins its arguments under a lock on every call.
        children = self._children.get((api, status))
        if children is None:
            children = self._children[api, status] = (
                self.requests.labels(api, str(status)),
                self.latency.labels(api),
            )
        counter, histogram = children
        counter.inc()
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return bytes(generate_latest(self.registry))


class _VersionCollector:
    """Reads the model's versions when Prometheus scrapes."""

    def __init__(self, versions: ModelVersions) -> None:
        self._versions = versions

    def collect(self) -> Iterator[Metric]:
        versions = self._versions
        current = versions.current
        labels = ["model"]
        gauge = GaugeMetricFamily(
            "asyncsess_model_version", "The version serving requests.", labels=labels
        )
        gauge.add_metric([versions.name], -1 if current is None else current.version)
        yield gauge
        for name, text, value in (
            ("asyncsess_model_loads", "Versions loaded.", versions.loads),
            (
                "asyncsess_model_load_failures",
                "Versions that failed to load.",
                versions.load_failures,
            ),
        ):
            counter = CounterMetricFamily(name, text, labels=labels)
            counter.add_metric([versions.name], value)
            yield counter
