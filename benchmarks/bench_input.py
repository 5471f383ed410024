"""Input pipelines: examples per second into the device, three ways, same model.

Contenders, each an open `asyncsess.MonitoredSession` over its own copy of the
same graph (an MLP trained on batches of ``BATCH`` examples), interleaved in rounds
in one process with the order rotating each round:

- ``feed_dict``: each step makes a batch in Python and feeds it
  (``sess.run(train, feed_dict=...)``): input and compute take turns.
- ``tf_queue_runner``: TensorFlow's thread QueueRunner; its enqueue op calls the
  same batch maker through ``tf.compat.v1.py_func`` (the usual way to get Python
  data into a queue), and the model trains from ``queue.dequeue()``; the queue
  holds whole batches (``enqueue_many`` would copy every example twice, in and
  out, for all queue contenders alike).
- ``async_queue_runner``: `asyncsess.AsyncQueueRunner` pulling the same batches
  from an async generator, the model as above.

Reported: examples/s of each (median over rounds) and the median per-round ratios
async/TF-queue-runner (target >= 1) and async/feed_dict (target > 1).
Run with ``python -m benchmarks.bench_input [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import anyio
import numpy as np
import tensorflow as tf

import asyncsess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

NAME = "input"
v1 = tf.compat.v1

BATCH = 256  # examples per step
FEATURES = 256
HIDDEN = 256
CAPACITY = 2  # batches: two steps of look-ahead, so rounds stay honest


class Batches:
    """The shared input: a batch of synthetic records, with parsing-like work."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def __call__(self) -> tuple[Any, Any]:
        x = self._rng.standard_normal((BATCH, FEATURES), dtype=np.float32)
        x = np.tanh(x) * 0.5 + x * 0.5  # stands in for decoding and normalising
        y = x[:, :4].sum(axis=1, dtype=np.float32)
        return x, y


def _model(x: Any, y: Any) -> Any:
    """The MLP and its train op; the same for every contender."""
    init = v1.glorot_uniform_initializer()
    hidden = x
    for i, width in enumerate([HIDDEN, HIDDEN]):
        w = v1.get_variable(f"w{i}", [hidden.shape[-1], width], initializer=init)
        hidden = tf.nn.relu(tf.matmul(hidden, w))
    out = v1.get_variable("out", [HIDDEN, 1], initializer=init)
    pred = tf.squeeze(tf.matmul(hidden, out), axis=1)
    loss = tf.reduce_mean(tf.square(pred - y))
    step = v1.train.get_or_create_global_step()
    return v1.train.GradientDescentOptimizer(1e-3).minimize(loss, global_step=step)


def _queue() -> Any:
    """A queue of whole batches: one element per step, no per-example copies."""
    return tf.queue.FIFOQueue(
        CAPACITY, [tf.float32, tf.float32], shapes=[[BATCH, FEATURES], [BATCH]]
    )


async def _open(stack: AsyncExitStack, graph: Any) -> Any:
    with graph.as_default():
        sess = asyncsess.MonitoredSession(stop_grace_period_secs=10)
    return await stack.enter_async_context(sess)


async def feed_dict_contender(
    stack: AsyncExitStack,
) -> Callable[[int], Awaitable[None]]:
    make = Batches()
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [BATCH, FEATURES])
        y = v1.placeholder(tf.float32, [BATCH])
        train = _model(x, y)
    sess = await _open(stack, graph)

    async def run(steps: int) -> None:
        for _ in range(steps):
            bx, by = make()
            await sess.run(train, feed_dict={x: bx, y: by})

    return run


async def tf_queue_runner_contender(
    stack: AsyncExitStack,
) -> Callable[[int], Awaitable[None]]:
    make = Batches()
    graph = tf.Graph()
    with graph.as_default():
        queue = _queue()
        bx, by = v1.py_func(make, [], [tf.float32, tf.float32], stateful=True)
        enqueue = queue.enqueue([bx, by])
        v1.train.add_queue_runner(v1.train.QueueRunner(queue, [enqueue]))
        train = _model(*queue.dequeue())
    return await _steps(stack, graph, train)


async def async_queue_runner_contender(
    stack: AsyncExitStack,
) -> Callable[[int], Awaitable[None]]:
    make = Batches()

    async def batches() -> AsyncIterator[tuple[Any, Any]]:
        while True:
            yield make()

    graph = tf.Graph()
    with graph.as_default():
        queue = _queue()
        asyncsess.AsyncQueueRunner(queue, batches)
        train = _model(*queue.dequeue())
    return await _steps(stack, graph, train)


async def _steps(
    stack: AsyncExitStack, graph: Any, train: Any
) -> Callable[[int], Awaitable[None]]:
    sess = await _open(stack, graph)

    async def run(steps: int) -> None:
        for _ in range(steps):
            await sess.run(train)

    return run


CONTENDERS = {
    "feed_dict": feed_dict_contender,
    "tf_queue_runner": tf_queue_runner_contender,
    "async_queue_runner": async_queue_runner_contender,
}


async def measure(rounds: int, steps: int) -> dict[str, list[float]]:
    """Examples per second of each contender, one value per round."""
    rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    async with AsyncExitStack() as stack:
        runs = {name: await make(stack) for name, make in CONTENDERS.items()}
        names = list(runs)
        for run in runs.values():
            await run(20)  # warm up: graph rewrites, allocations, full queues
        for r in range(rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                gc.collect()
                gc.disable()
                try:
                    start = time.perf_counter()
                    await runs[name](steps)
                    rates[name].append(steps * BATCH / (time.perf_counter() - start))
                finally:
                    gc.enable()
    return rates


def _row(figure: str, value: float, unit: str, target: str = "", ok: Any = None,
         detail: str = "") -> dict[str, Any]:  # fmt: skip
    return {"figure": figure, "value": float(value), "unit": unit,
            "target": target, "ok": ok, "detail": detail}  # fmt: skip


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run the benchmark; rows of ``figure``, ``value``, ``unit``, ``target``."""
    rounds, steps = (3, 30) if quick else (15, 80)
    rates = anyio.run(measure, rounds, steps)
    median = {name: statistics.median(values) for name, values in rates.items()}
    vs_tf = [
        a / b
        for a, b in zip(
            rates["async_queue_runner"], rates["tf_queue_runner"], strict=True
        )
    ]
    vs_feed = [
        a / b
        for a, b in zip(rates["async_queue_runner"], rates["feed_dict"], strict=True)
    ]
    detail = f"{rounds} rounds x {steps} steps of {BATCH} examples, asyncio"
    rows = [
        _row(f"input: {name} throughput", value, "examples/s", detail=detail)
        for name, value in median.items()
    ]
    ratio_tf, ratio_feed = statistics.median(vs_tf), statistics.median(vs_feed)
    rows.append(
        _row("input: AsyncQueueRunner / TF QueueRunner", ratio_tf, "x", ">= 1.0",
             ratio_tf >= 1.0, f"per-round {min(vs_tf):.2f}..{max(vs_tf):.2f}")
    )  # fmt: skip
    rows.append(
        _row("input: AsyncQueueRunner / feed_dict", ratio_feed, "x", "> 1.0",
             ratio_feed > 1.0, f"per-round {min(vs_feed):.2f}..{max(vs_feed):.2f}")
    )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Input pipeline throughput.")
    parser.add_argument("--quick", action="store_true")
    for r in run(parser.parse_args().quick):
        mark = {True: "ok", False: "MISS", None: ""}[r["ok"]]
        print(
            f"{r['figure']:<45} {r['value']:>12.2f} {r['unit']:<11} "
            f"{r['target']:<7} {mark:<4} {r['detail']}"
        )


if __name__ == "__main__":
    main()
