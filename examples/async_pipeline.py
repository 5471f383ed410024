"""An async input pipeline: records from a TCP stream feed a TensorFlow queue.

The example starts a small record server on 127.0.0.1 (plain asyncio streams,
one ``x1,x2,x3,x4,y`` line per record), then trains a linear model whose input is
``queue.dequeue_many``. The queue is fed by `asyncsess.AsyncQueueRunner` from an
async generator that reads the stream, parses the lines and yields batches: the
network read, the parsing and the device step overlap, and a full queue simply
stops reading from the socket (backpressure). When the server has sent every
record the queue is closed, the loop ends cleanly at end of input and the final
checkpoint is written.

Run it with ``python examples/async_pipeline.py [--records N] [--logdir DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

import asyncsess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

v1 = tf.compat.v1

FEATURES = 4
TRUE_W = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
TRUE_B = 0.25
BATCH = 32  # examples per training step
CHUNK = 64  # records per enqueue_many


# -- the record server: a stand-in for a socket feed, a message bus, a log tail -----


async def serve_records(count: int, seed: int = 0) -> asyncio.Server:
    """Start a TCP server on 127.0.0.1 that sends *count* records and hangs up."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, FEATURES)).astype(np.float32)
    y = x @ TRUE_W + TRUE_B + rng.normal(scale=0.01, size=count).astype(np.float32)
    records = np.column_stack([x, y])
    lines = [",".join(f"{v:.6f}" for v in record) for record in records]

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for start in range(0, count, 256):
                writer.write(("\n".join(lines[start : start + 256]) + "\n").encode())
                await writer.drain()  # a slow reader slows the server down
        finally:
            writer.close()
            await writer.wait_closed()

    return await asyncio.start_server(send, "127.0.0.1", 0)


# -- the producer: read, parse, batch --------------------------------------------------


async def read_batches(host: str, port: int) -> AsyncIterator[tuple[Any, Any]]:
    """Yield ``(x, y)`` batches of up to CHUNK parsed records read from the stream."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        rows: list[list[float]] = []
        async for line in reader:  # one record per line, until the server hangs up
            rows.append([float(v) for v in line.split(b",")])
            if len(rows) == CHUNK:
                yield _batch(rows)
                rows = []
        if rows:
            yield _batch(rows)
    finally:
        # Runs when the stream ends and when the session closes early.
        writer.close()
        await writer.wait_closed()


def _batch(rows: list[list[float]]) -> tuple[Any, Any]:
    data = np.asarray(rows, np.float32)
    return data[:, :FEATURES], data[:, FEATURES]


# -- the model ------------------------------------------------------------------------


def build_model(host: str, port: int) -> tuple[Any, Any]:
    """The graph: a queue fed by the stream, a linear model trained from it."""
    queue = tf.queue.FIFOQueue(
        capacity=8 * BATCH, dtypes=[tf.float32, tf.float32], shapes=[[FEATURES], []]
    )
    asyncsess.AsyncQueueRunner(
        queue, lambda: read_batches(host, port), enqueue_many=True, name="records"
    )
    x, y = queue.dequeue_many(BATCH)
    w = v1.get_variable("w", [FEATURES], initializer=v1.zeros_initializer())
    b = v1.get_variable("b", [], initializer=v1.zeros_initializer())
    loss = tf.reduce_mean(tf.square(tf.linalg.matvec(x, w) + b - y))
    step = v1.train.get_or_create_global_step()
    train = v1.train.AdamOptimizer(0.05).minimize(loss, global_step=step)
    return train, loss


def checkpoint_hook(logdir: str) -> Any:
    """asyncsess's CheckpointSaverHook; TensorFlow's where that is not available."""
    hook_class = getattr(asyncsess.hooks, "CheckpointSaverHook", None)
    if hook_class is None:  # pragma: no cover - older asyncsess
        hook_class = v1.train.CheckpointSaverHook
    return hook_class(logdir, save_steps=10_000)  # the final save happens in end()


async def main(records: int = 4096, logdir: str | None = None) -> dict[str, Any]:
    """Serve *records*, train on them to the end of input; return a summary."""
    logdir = logdir or tempfile.mkdtemp(prefix="async_pipeline_")
    server = await serve_records(records)
    host, port = server.sockets[0].getsockname()[:2]
    losses: list[float] = []
    async with server:
        with tf.Graph().as_default():
            train, loss = build_model(host, port)
            hooks = [checkpoint_hook(logdir)]
            async with asyncsess.MonitoredSession(hooks=hooks) as sess:
                while not sess.should_stop():
                    _, value = await sess.run([train, loss])
                    losses.append(float(value))
    return {
        "steps": len(losses),
        "examples": len(losses) * BATCH,
        "first_loss": losses[0] if losses else float("nan"),
        "final_loss": losses[-1] if losses else float("nan"),
        "checkpoint": tf.train.latest_checkpoint(logdir),
        "stop_reason": str(sess.stop_reason),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4096)
    parser.add_argument("--logdir", default=None)
    args = parser.parse_args()
    summary = asyncio.run(main(args.records, args.logdir))
    for key, value in summary.items():
        print(f"{key:>12}: {value}")
