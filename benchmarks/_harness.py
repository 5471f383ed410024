"""Shared timing helpers: interleaved rounds, medians, ratios, rows, calibration.

Every comparison runs its contenders in one process, one after another inside each
round (the order rotates from round to round), and reports the median over rounds
of the per-round ratio. A ratio taken within one round sees the same machine load
on both sides, so it survives the noise of a shared machine far better than two
absolute timings taken minutes apart.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping


def row(
    figure: str,
    value: float,
    unit: str,
    target: str = "",
    ok: bool | None = None,
    detail: str = "",
) -> dict[str, Any]:
    """One line of the results table (the interface every benchmark returns)."""
    return {
        "figure": figure,
        "value": float(value),
        "unit": unit,
        "target": target,
        "ok": ok,
        "detail": detail,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The *q*-th percentile (0..100) of *values*, nearest-rank, NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def interleave(
    contenders: Mapping[str, Callable[[int], Awaitable[None]]],
    steps: Mapping[str, int] | int,
    rounds: int,
    warmup: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per step of each contender, one value per round.

    *clock* is ``time.perf_counter`` (wall time) unless told otherwise, say
    ``time.process_time`` (CPU time of the whole process, all threads).

    Each round runs every contender for its number of steps, in an order rotated
    by one each round so that no contender always follows the same neighbour.
    The garbage collector is paused while a contender is timed.
    """
    names = list(contenders)
    per = steps if not isinstance(steps, int) else dict.fromkeys(names, steps)
    for name in names:
        await contenders[name](warmup)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            n = per[name]
            gc.collect()
            gc.disable()
            try:
                start = clock()
                await contenders[name](n)
                times[name].append((clock() - start) / n)
            finally:
                gc.enable()
    return times


def ratios(times: Mapping[str, list[float]], num: str, den: str) -> list[float]:
    """Per-round ratios ``times[num] / times[den]``."""
    return [a / b for a, b in zip(times[num], times[den], strict=True)]


def spread(values: list[float]) -> str:
    """``min..max`` of *values*, for the detail column."""
    return f"{min(values):.3f}..{max(values):.3f}" if values else "n/a"


def calibrate(run_once: Callable[[int], None], size0: int, target_s: float) -> int:
    """A size for which ``run_once(size)`` takes about *target_s* (cubic cost).

    For a square matmul, time grows as size**3: a few rescaling passes converge.
    """
    size = size0
    for _ in range(4):
        run_once(size)  # warm up (graph building, allocation)
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            run_once(size)
            samples.append(time.perf_counter() - start)
        took = min(samples)  # the cost without the noise of a shared machine
        new = max(8, round(size * (target_s / took) ** (1 / 3)))
        if abs(new - size) <= max(2, size // 50):
            return new
        size = new
    return size


def load() -> tuple[float, float, float]:
    """The machine's 1, 5 and 15 minute load averages (0s where unknown)."""
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return (0.0, 0.0, 0.0)
