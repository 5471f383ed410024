"""Batching's counters and distributions, kept as plain numbers (no Prometheus)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

# From a call that ran at once to one held for a slow step (seconds).
WAIT_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Distribution:
    """Counts of observations per bucket, with their sum (a Prometheus histogram)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` pairs, ending with ``inf``."""
        total, pairs = 0, []
        for bound, count in zip(
            (*self.buckets, float("inf")), self.counts, strict=True
        ):
            total += count
            pairs.append((bound, total))
        return pairs


@dataclass
class BatchStats:
    """What the batchers that share this object did: one per served model.

    A new model version's `Batcher` takes the old one's stats, so the counts
    run on across a swap.
    """

    batches: int = 0
    rows: int = 0
    padding_rows: int = 0
    calls: int = 0
    queued_rows: int = 0
    refused_calls: int = 0

    def __post_init__(self) -> None:
        self.batch_size = Distribution(SIZE_BUCKETS)
        self.wait_seconds = Distribution(WAIT_BUCKETS)
