"""RateMeter: steps per second over a sliding window of recent samples.

Used by `ProgressBarHook` and by the web service's ``/status`` and metrics.
"""

from __future__ import annotations

import collections


class RateMeter:
    """Steps per second over the last *window_secs* seconds.

    Keeps the samples of the window plus the one just before it, so the rate
    spans at least the window once it has that much history.
    """

    __slots__ = ("_samples", "_window")

    def __init__(self, window_secs: float = 5.0) -> None:
        self._window = window_secs
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, step: int) -> None:
        """Record that the global step was *step* at time *now* (monotonic secs)."""
        samples = self._samples
        samples.append((now, step))
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()

    def per_sec(self) -> float | None:
        """The rate, or None before two samples a measurable time apart."""
        if len(self._samples) < 2:
            return None
        (t0, s0), (t1, s1) = self._samples[0], self._samples[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    def clear(self) -> None:
        """Forget every sample (a new run starts)."""
        self._samples.clear()
