"""Event-loop lag while 50 ms device steps run: asyncsess against a sync session.

A probe task sleeps 1 ms in a loop and records how late it wakes up (its lag).
Meanwhile another task trains: with asyncsess the step runs on the session's
worker thread; with TF's MonitoredSession called from the loop, the loop is
blocked for the whole step. Then the same with one CPU-bound pure-Python thread
alive in the process (a parser, a writer): every wake-up of the loop thread then
waits for the GIL, up to ``sys.getswitchinterval()`` (5 ms by default), so the
figure is repeated with ``sys.setswitchinterval(0.0005)``.

The step is a matmul on one TensorFlow thread (``intra_op_parallelism_threads=1``):
on this 2-core machine one core plays the accelerator and one is left to Python,
as with a GPU, where the device step costs the host no CPU.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

import anyio
import anyio.lowlevel
import tensorflow as tf

import asyncsess

from ._harness import median, percentile, row
from .bench_step import build_graph, size_for

NAME = "loop_lag"
v1 = tf.compat.v1

_PROBE_S = 0.001
_STEP_S = 0.050


def _config() -> Any:
    return v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=2
    )


class GilHog:
    """A thread running pure Python (holding the GIL) until stopped."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        n = 0
        while not self._stop.is_set():
            for i in range(1000):
                n += i * i % 7

    def __enter__(self) -> GilHog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _SwitchInterval:
    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._old = sys.getswitchinterval()

    def __enter__(self) -> None:
        if self._seconds is not None:
            sys.setswitchinterval(self._seconds)

    def __exit__(self, *exc: object) -> None:
        sys.setswitchinterval(self._old)


async def _probe(until: float, lags: list[float]) -> None:
    clock = time.perf_counter
    while clock() < until:
        start = clock()
        await anyio.sleep(_PROBE_S)
        lags.append(clock() - start - _PROBE_S)


async def _scenario(
    step: Any, seconds: float, hog: bool, switch: float | None
) -> tuple[list[float], int]:
    """Run *step* (an async fn doing one step, or None) beside the probe."""
    lags: list[float] = []
    steps = 0
    until = time.perf_counter() + seconds

    async def train() -> None:
        nonlocal steps
        while time.perf_counter() < until:
            await step()
            steps += 1
            await anyio.lowlevel.checkpoint()  # let the probe in between steps

    with _SwitchInterval(switch), GilHog() if hog else contextlib.nullcontext():
        async with anyio.create_task_group() as tg:
            if step is not None:
                tg.start_soon(train)
            await _probe(until, lags)
    return lags, steps


#: name -> (contender, GIL-bound thread alive, switch interval), per backend.
SCENARIOS: dict[str, list[tuple[str, str, bool, float | None]]] = {
    "asyncio": [
        ("idle loop (no steps)", "idle", False, None),
        ("asyncsess", "asyncsess", False, None),
        ("sync MonitoredSession called from the loop", "sync", False, None),
        ("asyncsess + 1 GIL-bound thread (switch 5 ms)", "asyncsess", True, None),
        ("asyncsess + 1 GIL-bound thread (switch 0.5 ms)", "asyncsess", True, 0.0005),
    ],
    "trio": [
        ("asyncsess[trio]", "asyncsess", False, None),
        ("asyncsess[trio] + 1 GIL-bound thread (switch 5 ms)", "asyncsess", True, None),
    ],
}


async def _measure(backend: str, size: int, rounds: int, seconds: float) -> Any:
    results: dict[str, tuple[list[float], list[int]]] = {}
    graph, op = build_graph(size)
    with graph.as_default():
        sess = asyncsess.MonitoredSession(
            asyncsess.ChiefSessionCreator(config=_config())
        )
    sync_graph, sync_op = build_graph(size)
    with sync_graph.as_default():
        mon = v1.train.MonitoredSession(v1.train.ChiefSessionCreator(config=_config()))
    try:
        async with sess:

            async def run_async() -> None:
                await sess.run(op)

            async def run_sync() -> None:
                mon.run(sync_op)

            steps = {"idle": None, "asyncsess": run_async, "sync": run_sync}
            await run_async()
            for _ in range(rounds):
                for label, name, hog, switch in SCENARIOS[backend]:
                    lags, n = await _scenario(steps[name], seconds, hog, switch)
                    got = results.setdefault(label, ([], []))
                    got[0].extend(lags)
                    got[1].append(n)
    finally:
        mon.close()
    return results


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Loop lag p99 under each scenario, both backends."""
    size = size_for(_STEP_S, 1)
    rounds, seconds = (1, 1.5) if quick else (3, 2.5)
    rows = []
    for backend in ("asyncio", "trio"):
        results = anyio.run(_measure, backend, size, rounds, seconds, backend=backend)
        for label, (lags, steps) in results.items():
            rows.append(_row(label, lags, steps, rounds * seconds))
    return rows


def _row(label: str, lags: list[float], steps: list[int], seconds: float) -> Any:
    p99 = percentile(lags, 99) * 1e3
    if label.startswith("sync"):
        target, ok = "report (~50 ms expected)", None
    elif "GIL" in label:
        target, ok = "report; < 10 ms", p99 < 10
    elif label.startswith("idle"):
        target, ok = "report (baseline)", None
    else:
        target, ok = "< 2 ms", p99 < 2
    rate = sum(steps) / seconds
    return row(
        f"loop lag p99, 50 ms steps: {label}",
        p99,
        "ms",
        target,
        ok,
        f"median {median(lags) * 1e3:.2f} ms, max {max(lags) * 1e3:.1f} ms, "
        f"{len(lags)} probes; {rate:.1f} steps/s",
    )
