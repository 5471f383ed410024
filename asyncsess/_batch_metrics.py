"""Batching's counts as Prometheus metrics (needs the ``serve`` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from ._batch_stats import BatchStats, Distribution


class BatchCollector:
    """Reads a `BatchStats` when Prometheus scrapes; nothing is counted twice."""

    def __init__(self, stats: BatchStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield _counter("asyncsess_batches", "Batched device steps run.", stats.batches)
        yield _counter(
            "asyncsess_batched_rows", "Rows run in batched device steps.", stats.rows
        )
        yield _counter(
            "asyncsess_batch_padding_rows",
            "Rows added to reach an allowed batch size.",
            stats.padding_rows,
        )
        yield _counter("asyncsess_batch_calls", "Calls to Batcher.run.", stats.calls)
        yield _counter(
            "asyncsess_batch_refused_calls",
            "Batcher.run calls refused because the queue was full.",
            stats.refused_calls,
        )
        queued = GaugeMetricFamily(
            "asyncsess_batch_queued_rows", "Rows waiting for a batch now."
        )
        queued.add_metric([], stats.queued_rows)
        yield queued
        yield _histogram(
            "asyncsess_batch_size", "Rows per batched device step.", stats.batch_size
        )
        yield _histogram(
            "asyncsess_batch_wait_seconds",
            "Time from a call's arrival to the start of its batch.",
            stats.wait_seconds,
        )


def register_batch_metrics(registry: CollectorRegistry, stats: BatchStats) -> None:
    """Publish *stats* in *registry* (``asyncsess_batch*`` metrics)."""
    registry.register(BatchCollector(stats))  # type: ignore[arg-type, unused-ignore]


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _histogram(
    name: str, documentation: str, distribution: Distribution
) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(float(bound)), count)
        for bound, count in distribution.cumulative()
    ]
    return HistogramMetricFamily(
        name, documentation, buckets=buckets, sum_value=distribution.sum
    )
