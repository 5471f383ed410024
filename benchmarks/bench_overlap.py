"""A hook with 5 ms of I/O in ``after_run``, marked to overlap the next step.

Contenders, each on its own copy of the same ~5 ms device step (a matmul on one
TensorFlow thread), interleaved in rounds in one process: ``device`` (a raw
``Session.run`` of the step: the device time), ``overlap`` (asyncsess with a hook
whose class sets ``overlap_after_run = True`` and awaits ``anyio.sleep(0.005)`` in
``after_run``) and ``serial`` (the same hook without overlap, for contrast).

Figure: step time / max(device time, 5 ms), the median of per-round ratios; the
target is at most 1.15. Without overlap the step is device + 5 ms, about 2x.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import tensorflow as tf

import asyncsess

from ._harness import interleave, load, median, row, spread
from .bench_step import build_graph, size_for

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

NAME = "overlap"
v1 = tf.compat.v1

_IO_S = 0.005
_DEVICE_S = 0.005
_TARGET = 1.15


class SerialIO(asyncsess.SessionRunHook):
    """Awaits 5 ms of (simulated) I/O in after_run, before the next step starts."""

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        await anyio.sleep(_IO_S)


class OverlapIO(SerialIO):
    """The same hook, its after_run overlapping the next step."""

    overlap_after_run = True


def _config() -> Any:
    # One core plays the device, the other is left to Python (as with a GPU).
    return v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=2
    )


async def _open(size: int, stack: AsyncExitStack) -> dict[str, Any]:
    out: dict[str, Callable[[int], Awaitable[None]]] = {}
    raw_graph, raw_op = build_graph(size)
    with raw_graph.as_default():
        raw = v1.Session(config=_config())
        raw.run(v1.global_variables_initializer())
    stack.callback(raw.close)

    async def run_device(n: int) -> None:
        for _ in range(n):
            raw.run(raw_op)

    out["device"] = run_device
    for name, hook in (("overlap", OverlapIO), ("serial", SerialIO)):
        graph, op = build_graph(size)
        with graph.as_default():
            sess = asyncsess.MonitoredSession(
                asyncsess.ChiefSessionCreator(config=_config()), hooks=[hook()]
            )
        await stack.enter_async_context(sess)
        out[name] = _runner(graph, sess, op)
    return out


def _runner(graph: Any, sess: Any, op: Any) -> Callable[[int], Awaitable[None]]:
    async def run_steps(n: int) -> None:
        with graph.as_default():
            for _ in range(n):
                await sess.run(op)

    return run_steps


async def _measure(size: int, steps: int, rounds: int) -> dict[str, list[float]]:
    async with AsyncExitStack() as stack:
        contenders = await _open(size, stack)
        return await interleave(contenders, steps, rounds, warmup=10)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Overlapped and serial after_run I/O, on asyncio and trio."""
    size = size_for(_DEVICE_S, 1)
    steps, rounds = (25, 3) if quick else (60, 9)
    rows = []
    for backend, label in (("asyncio", "asyncsess"), ("trio", "asyncsess[trio]")):
        before = load()
        times = anyio.run(_measure, size, steps, rounds, backend=backend)
        after = load()
        floor = [max(d, _IO_S) for d in times["device"]]
        device_ms = median(times["device"]) * 1e3
        for name, title in (
            ("overlap", "overlap_after_run=True"),
            ("serial", "without overlap"),
        ):
            rs = [t / f for t, f in zip(times[name], floor, strict=True)]
            value = median(rs)
            if name == "overlap":
                target, ok = f"<= {_TARGET}", value <= _TARGET
            else:
                target, ok = "report (~2x expected)", None
            rows.append(
                row(
                    f"5 ms after_run I/O, {title}: {label} step / max(device, 5 ms)",
                    value,
                    "x",
                    target,
                    ok,
                    f"median of {len(rs)} rounds x {steps} steps, range "
                    f"{spread(rs)}; {median(times[name]) * 1e3:.2f} ms/step, "
                    f"device {device_ms:.2f} ms (matmul {size}); load "
                    f"{before[0]:.2f}->{after[0]:.2f}",
                )
            )
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
