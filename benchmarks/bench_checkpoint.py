"""Checkpoints of big models: the event loop's lag while they are saved, and the
training stall each one costs, asyncsess against TensorFlow's sync hook.

The model: a global step, a matmul step on one TensorFlow thread (one core plays
the device, the other is left to Python, as with a GPU) and a few big float32
variables (16 MB each) that only the checkpoint touches, saved by a
``tf.compat.v1.train.Saver(max_to_keep=1)`` into a temporary directory.

1. Loop lag (issue 4): a probe task sleeps 1 ms in a loop and records how late it
   wakes up while another task trains with a checkpoint every few steps of a
   >= 50 MB model: asyncsess's `CheckpointSaverHook` (default, and with
   ``background_write=True``) against TF's ``MonitoredSession`` and
   ``CheckpointSaverHook`` called straight from the loop, as a naive user would.
   Target: p99 under 5 ms with asyncsess, whatever the save time.
2. Stall per checkpoint (issue 7) of a ~200 MB model: the median time of the steps
   that save minus the median time of the other steps, per contender and round;
   asyncsess with ``background_write=True`` against TF's sync save, interleaved in
   rounds, the median of per-round ratios. Target: at most 0.25. Also reported:
   the extra time per checkpoint over whole rounds (the background write competes
   with the steps that follow it for the CPU and the disk).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import tensorflow as tf

import asyncsess
import asyncsess.hooks

from ._harness import load, median, percentile, row, spread
from .bench_step import size_for

NAME = "checkpoint"
v1 = tf.compat.v1

_VAR_MB = 16  # one big variable: [1024, 4096] float32
_PROBE_S = 0.001


def _config() -> Any:
    return v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=2
    )


def build_model(mb: int, size: int) -> tuple[Any, Any, Any]:
    """A graph of about *mb* MB of variables; its step (a size**3 matmul); a saver."""
    graph = tf.Graph()
    with graph.as_default():
        global_step = v1.train.get_or_create_global_step()
        zeros = v1.zeros_initializer()
        for i in range(max(1, math.ceil(mb / _VAR_MB))):
            v1.get_variable(f"big{i}", [1024, 4096], initializer=zeros)
        w = v1.get_variable(
            "w", [size, size], initializer=v1.random_normal_initializer()
        )
        step = global_step.assign_add(1, read_value=False)
        with tf.control_dependencies([step]):
            loss = tf.reduce_sum(tf.matmul(w, w))
        saver = v1.train.Saver(max_to_keep=1)
        v1.add_to_collection(v1.GraphKeys.SAVERS, saver)
    return graph, loss, saver


def _model_mb(mb: int) -> int:
    return max(1, math.ceil(mb / _VAR_MB)) * _VAR_MB


def _close_in(graph: Any, mon: Any) -> None:
    # Inside its graph: TF's hook saves at the end, and Saver.save outside any
    # graph would think it runs eagerly.
    with graph.as_default():
        mon.close()


#: One training step: returns nothing; the session was opened by the caller.
Step = Callable[[], Awaitable[None]]


async def _open(
    kind: str, mb: int, size: int, every: int, root: Path, stack: AsyncExitStack
) -> Step:
    """Open one contender: "tf", "asyncsess" or "asyncsess-bg"; its step."""
    graph, op, saver = build_model(mb, size)
    logdir = str(root / kind)
    if kind == "tf":
        with graph.as_default():
            hook = v1.train.CheckpointSaverHook(logdir, save_steps=every, saver=saver)
            mon = v1.train.MonitoredSession(
                v1.train.ChiefSessionCreator(config=_config()), hooks=[hook]
            )
        stack.callback(_close_in, graph, mon)

        async def run_sync() -> None:
            with graph.as_default():  # as a user's loop runs: inside its graph
                mon.run(op)  # on the loop, saves included

        return run_sync
    with graph.as_default():
        async_hook = asyncsess.hooks.CheckpointSaverHook(
            logdir,
            save_steps=every,
            saver=saver,
            background_write=kind == "asyncsess-bg",
        )
        sess = asyncsess.MonitoredSession(
            asyncsess.ChiefSessionCreator(config=_config()), hooks=[async_hook]
        )
    await stack.enter_async_context(sess)

    async def run_async() -> None:
        with graph.as_default():
            await sess.run(op)

    return run_async


# -- 1. loop lag --------------------------------------------------------------------

_LAG_LABELS = {
    "asyncsess": "asyncsess CheckpointSaverHook",
    "asyncsess-bg": "asyncsess CheckpointSaverHook(background_write=True)",
    "tf": "TF MonitoredSession + CheckpointSaverHook called from the loop",
}


async def _lag_scenario(step: Step, seconds: float) -> tuple[list[float], int]:
    lags: list[float] = []
    steps = 0
    clock = time.perf_counter
    until = clock() + seconds

    async def train() -> None:
        nonlocal steps
        while clock() < until:
            await step()
            steps += 1
            await anyio.lowlevel.checkpoint()  # let the probe in between steps

    async with anyio.create_task_group() as tg:
        tg.start_soon(train)
        while clock() < until:
            start = clock()
            await anyio.sleep(_PROBE_S)
            lags.append(clock() - start - _PROBE_S)
    return lags, steps


async def _measure_lag(
    mb: int, size: int, every: int, rounds: int, seconds: float
) -> dict[str, tuple[list[float], list[int]]]:
    results: dict[str, tuple[list[float], list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_ckpt_") as tmp:
        async with AsyncExitStack() as stack:
            steps = {
                kind: await _open(kind, mb, size, every, Path(tmp), stack)
                for kind in _LAG_LABELS
            }
            for step in steps.values():
                for _ in range(3):  # warm up
                    await step()
            names = list(steps)
            for r in range(rounds):
                for kind in names[r % len(names) :] + names[: r % len(names)]:
                    lags, n = await _lag_scenario(steps[kind], seconds)
                    got = results.setdefault(kind, ([], []))
                    got[0].extend(lags)
                    got[1].append(n)
    return results


def _lag_rows(
    results: dict[str, tuple[list[float], list[int]]],
    mb: int,
    every: int,
    seconds: float,
    loads: tuple[float, float],
) -> list[dict[str, Any]]:
    rows = []
    for kind, (lags, steps) in results.items():
        p99 = percentile(lags, 99) * 1e3
        if kind == "tf":
            target, ok = "report (the save blocks the loop)", None
        else:
            target, ok = "< 5 ms", p99 < 5
        rate = sum(steps) / (len(steps) * seconds)
        rows.append(
            row(
                f"loop lag p99, {_model_mb(mb)} MB checkpoint every {every} steps: "
                f"{_LAG_LABELS[kind]}",
                p99,
                "ms",
                target,
                ok,
                f"median {median(lags) * 1e3:.2f} ms, max {max(lags) * 1e3:.1f} ms, "
                f"{len(lags)} probes; {rate:.1f} steps/s; load "
                f"{loads[0]:.2f}->{loads[1]:.2f}",
            )
        )
    return rows


# -- 2. stall per checkpoint --------------------------------------------------------


async def _timed_steps(step: Step, n: int) -> list[float]:
    times = []
    clock = time.perf_counter
    for _ in range(n):
        start = clock()
        await step()
        times.append(clock() - start)
    return times


def _stall(times: list[float], every: int) -> tuple[float, float, float]:
    """(stall per save, normal step, extra seconds per save over the whole run).

    Step i (0-based, counted from a save) saves when (i + 1) % every == 0.
    """
    saving = [t for i, t in enumerate(times) if (i + 1) % every == 0]
    normal = [t for i, t in enumerate(times) if (i + 1) % every != 0]
    base = statistics.median(normal)
    extra = (sum(times) - base * len(times)) / len(saving)
    return statistics.median(saving) - base, base, extra


async def _measure_stall(
    mb: int, size: int, every: int, saves: int, rounds: int
) -> dict[str, list[tuple[float, float, float]]]:
    kinds = ("asyncsess-bg", "tf")
    out: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="bench_ckpt_") as tmp:
        async with AsyncExitStack() as stack:
            steps = {
                kind: await _open(kind, mb, size, every, Path(tmp), stack)
                for kind in kinds
            }
            for kind in kinds:
                # Warm up, and align on a save: a round starts right after one.
                await _timed_steps(steps[kind], every)
            for r in range(rounds):
                order = kinds if r % 2 == 0 else kinds[::-1]
                for kind in order:
                    times = await _timed_steps(steps[kind], every * saves)
                    out[kind].append(_stall(times, every))
    return out


def _stall_rows(
    got: dict[str, list[tuple[float, float, float]]],
    mb: int,
    every: int,
    loads: tuple[float, float],
) -> list[dict[str, Any]]:
    bg, sync = got["asyncsess-bg"], got["tf"]
    rs = [a[0] / b[0] for a, b in zip(bg, sync, strict=True)]
    extra = [a[2] / b[2] for a, b in zip(bg, sync, strict=True)]

    def ms(values: list[tuple[float, float, float]], i: int) -> float:
        return median([v[i] for v in values]) * 1e3

    common = (
        f"{len(rs)} rounds, a save every {every} steps; step "
        f"{ms(sync, 1):.1f} ms (TF) / {ms(bg, 1):.1f} ms (asyncsess); load "
        f"{loads[0]:.2f}->{loads[1]:.2f}"
    )
    title = f"stall per {_model_mb(mb)} MB checkpoint, asyncsess background_write"
    return [
        row(
            f"{title} / TF sync save",
            median(rs),
            "x",
            "<= 0.25",
            median(rs) <= 0.25,
            f"median of per-round ratios, range {spread(rs)}; stall "
            f"{ms(bg, 0):.1f} ms vs {ms(sync, 0):.1f} ms (saving step minus the "
            f"median step); {common}",
        ),
        row(
            f"{title} / TF sync save, extra time per checkpoint over the run",
            median(extra),
            "x",
            "report",
            None,
            f"range {spread(extra)}; {ms(bg, 2):.1f} ms vs {ms(sync, 2):.1f} ms "
            f"(round time minus steps x median step, per save); {common}",
        ),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Loop lag during checkpoints, and stall per checkpoint (asyncio)."""
    size = size_for(0.005, 1)
    if quick:
        lag_mb, lag_rounds, lag_seconds = 64, 1, 2.0
        stall_mb, stall_saves, stall_rounds = 64, 2, 3
    else:
        lag_mb, lag_rounds, lag_seconds = 64, 3, 3.0
        stall_mb, stall_saves, stall_rounds = 208, 3, 5
    every = 5
    before = load()
    lag = anyio.run(_measure_lag, lag_mb, size, every, lag_rounds, lag_seconds)
    middle = load()
    rows = _lag_rows(lag, lag_mb, every, lag_seconds, (before[0], middle[0]))
    # Saves far enough apart for a background write to finish before the next.
    stall_every = 50
    stall = anyio.run(
        _measure_stall, stall_mb, size, stall_every, stall_saves, stall_rounds
    )
    rows += _stall_rows(stall, stall_mb, stall_every, (middle[0], load()[0]))
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--full" not in sys.argv):
        print(r)
