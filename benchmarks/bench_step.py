"""Per-step overhead: asyncsess against Session.run, MonitoredSession, to_thread.

Contenders, each on its own copy of the same graph, interleaved in rounds in one
process (see _harness.py): ``raw`` (``tf.compat.v1.Session.run``, no hooks),
``sync`` (``tf.compat.v1.train.MonitoredSession``, called from the event loop),
``to_thread`` (``asyncio.to_thread(sync.run)``; on trio ``trio.to_thread.run_sync``)
and ``asyncsess`` (`asyncsess.MonitoredSession`, asyncio and trio in their own
rounds). The TF contenders get TF hooks doing what the asyncsess hooks do.
"""

from __future__ import annotations

import asyncio
import functools
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import tensorflow as tf

import asyncsess

from ._harness import calibrate, interleave, median, ratios, row, spread

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

NAME = "step"
v1 = tf.compat.v1


# -- hooks -------------------------------------------------------------------------


class AsyncNoOp(asyncsess.SessionRunHook):
    """Overrides before_run and after_run, doing nothing in them."""

    async def before_run(self, run_context: Any) -> None:
        return None

    async def after_run(self, run_context: Any, run_values: Any) -> None:
        return None


class AsyncBare(asyncsess.SessionRunHook):
    """Overrides nothing."""


class TFNoOp(v1.train.SessionRunHook):  # type: ignore[misc]
    def before_run(self, run_context: Any) -> None:
        return None

    def after_run(self, run_context: Any, run_values: Any) -> None:
        return None


class TFBare(v1.train.SessionRunHook):  # type: ignore[misc]
    """Overrides nothing."""


class AsyncIO(asyncsess.SessionRunHook):
    """Awaits *seconds* of (simulated) I/O in before_run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def before_run(self, run_context: Any) -> None:
        await anyio.sleep(self.seconds)


class TFBlockingIO(v1.train.SessionRunHook):  # type: ignore[misc]
    """The same I/O done the only way a sync hook can: blocking."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def before_run(self, run_context: Any) -> None:
        time.sleep(self.seconds)


def tf_standard_hooks() -> list[Any]:
    """TensorFlow's own hooks, configured so that they never stop nor log."""
    return [
        v1.train.StopAtStepHook(last_step=10**12),
        v1.train.LoggingTensorHook(["global_step:0"], every_n_iter=10**9),
    ]


# -- the graph and the contenders -------------------------------------------------


def _config(threads: int | None = None) -> Any:
    """TensorFlow's default session config, or one with *threads* per op."""
    if threads is None:
        return None
    return v1.ConfigProto(
        intra_op_parallelism_threads=threads, inter_op_parallelism_threads=2
    )


#: What a fed step feeds each time: a small batch, as a prediction would.
BATCH = np.ones([8, 4], np.float32)


def build_graph(size: int | None, fed: bool = False) -> tuple[Any, Any]:
    """A graph and its step: increment the global step (and a size**3 matmul).

    A *fed* step also sums a fed batch (placeholder ``x``) into what it fetches.
    """
    graph = tf.Graph()
    with graph.as_default():
        global_step = v1.train.get_or_create_global_step()
        step = global_step.assign_add(1, read_value=False)
        if fed:
            x = v1.placeholder(tf.float32, shape=[None, 4], name="x")
            with tf.control_dependencies([step]):
                step = tf.reduce_sum(x)
        if size is None:
            return graph, step
        w = v1.get_variable(
            "w", shape=[size, size], initializer=v1.random_normal_initializer()
        )
        with tf.control_dependencies([step]):
            # Fetched, like a loss: an unfetched result would be pruned by Grappler.
            loss = tf.reduce_sum(tf.matmul(w, w))
            if fed:
                loss += step
        return graph, loss


def feeds(case: Case, graph: Any) -> dict[Any, Any] | None:
    """The feed_dict of each of *case*'s steps on *graph* (None when unfed)."""
    if not case.fed:
        return None
    return {graph.get_tensor_by_name("x:0"): BATCH}


@functools.cache
def size_for(seconds: float, threads: int | None = None) -> int:
    """The matmul size whose step takes about *seconds* on this machine."""
    sessions: dict[int, tuple[Any, Any]] = {}

    def run_once(size: int) -> None:
        if size not in sessions:
            graph, op = build_graph(size)
            with graph.as_default():
                sess = v1.Session(config=_config(threads))
                sess.run(v1.global_variables_initializer())
            sessions[size] = (sess, op)
        sess, op = sessions[size]
        sess.run(op)

    size = calibrate(run_once, 256, seconds)
    for sess, _ in sessions.values():
        sess.close()
    return size


@dataclass
class Case:
    """One comparison: a step, hooks for each side, steps per round."""

    size: int | None
    async_hooks: Callable[[], list[Any]]
    tf_hooks: Callable[[], list[Any]]
    steps: int
    contenders: tuple[str, ...] = ("raw", "sync", "to_thread", "asyncsess")
    #: Whether each step feeds a batch (see build_graph).
    fed: bool = False
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)


async def _open(case: Case, backend: str, stack: AsyncExitStack) -> dict[str, Any]:
    """Open every contender of *case*; return name -> async fn(n) running n steps."""
    out: dict[str, Callable[[int], Awaitable[None]]] = {}
    if "raw" in case.contenders:
        raw_graph, raw_op = build_graph(case.size, case.fed)
        raw_feeds = feeds(case, raw_graph)
        with raw_graph.as_default():
            raw = v1.Session(config=_config())
            raw.run(v1.global_variables_initializer())
        stack.callback(raw.close)

        async def run_raw(n: int) -> None:
            with raw_graph.as_default():
                for _ in range(n):
                    raw.run(raw_op, raw_feeds)

        out["raw"] = run_raw
    sync_graph, sync_op = build_graph(case.size, case.fed)
    sync_feeds = feeds(case, sync_graph)
    with sync_graph.as_default():
        mon = v1.train.MonitoredSession(
            v1.train.ChiefSessionCreator(config=_config()), hooks=case.tf_hooks()
        )
    stack.callback(mon.close)

    async def run_sync(n: int) -> None:
        with sync_graph.as_default():
            for _ in range(n):
                mon.run(sync_op, sync_feeds)

    out["sync"] = run_sync
    if "to_thread" in case.contenders:
        out["to_thread"] = _to_thread(backend, mon.run, sync_op, sync_feeds)
    out["asyncsess"] = await _open_async(case, stack)
    if "asyncsess_pool" in case.contenders:
        out["asyncsess_pool"] = await _open_async(case, stack, caller_thread=False)
    return out


async def _open_async(
    case: Case, stack: AsyncExitStack, caller_thread: bool = True
) -> Callable[[int], Awaitable[None]]:
    graph, op = build_graph(case.size, case.fed)
    feed_dict = feeds(case, graph)
    with graph.as_default():
        sess = asyncsess.MonitoredSession(
            asyncsess.ChiefSessionCreator(config=_config()), hooks=case.async_hooks()
        )
    if not caller_thread:  # every step on TF's inter-op pool: the hand-off floor
        sess.caller_thread_below = 0
    await stack.enter_async_context(sess)

    async def run_async(n: int) -> None:
        # As a user's loop runs: inside its graph (one task, so this is safe).
        with graph.as_default():
            for _ in range(n):
                await sess.run(op, feed_dict)

    return run_async


def _to_thread(
    backend: str, fn: Any, op: Any, feed_dict: Any
) -> Callable[[int], Awaitable[None]]:
    if backend == "asyncio":

        async def run(n: int) -> None:
            for _ in range(n):
                await asyncio.to_thread(fn, op, feed_dict)

        return run
    import trio

    async def run_trio(n: int) -> None:
        for _ in range(n):
            await trio.to_thread.run_sync(fn, op, feed_dict)

    return run_trio


async def _measure(case: Case, backend: str, rounds: int) -> dict[str, list[float]]:
    async with AsyncExitStack() as stack:
        contenders = await _open(case, backend, stack)
        return await interleave(contenders, case.steps, rounds)


def measure(case: Case, rounds: int) -> Case:
    """Time *case* on both backends (each backend's contenders in its own rounds)."""
    for backend in ("asyncio", "trio"):
        case.times[backend] = anyio.run(
            _measure, case, backend, rounds, backend=backend
        )
    return case


# -- rows --------------------------------------------------------------------------


def _ratio_rows(
    case: Case,
    title: str,
    den: str,
    target: str,
    limit: float,
    strict: bool = False,
    num: str = "asyncsess",
) -> list[dict[str, Any]]:
    rows = []
    for backend, label in (("asyncio", "asyncsess"), ("trio", "asyncsess[trio]")):
        times = case.times[backend]
        if den not in times or num not in times:
            continue
        if num != "asyncsess":
            label += f" {_LABELS[num]}"
        rs = ratios(times, num, den)
        value = median(rs)
        ok = None if target == "report" else value < limit if strict else value <= limit
        us = median(times[num]) * 1e6
        us_den = median(times[den]) * 1e6
        rows.append(
            row(
                f"{title}: {label} / {_LABELS[den]}",
                value,
                "x",
                target,
                ok,
                f"median of {len(rs)} rounds, range {spread(rs)}; "
                f"{us:.0f} vs {us_den:.0f} us/step",
            )
        )
    return rows


_LABELS = {
    "asyncsess_pool": "(caller_thread_below=0)",
    "raw": "raw Session.run",
    "sync": "sync MonitoredSession",
    "to_thread": "to_thread(sync MonitoredSession)",
}


def _abs_rows(case: Case, title: str) -> list[dict[str, Any]]:
    rows = []
    labels = {
        **_LABELS,
        "asyncsess": "asyncsess",
        "asyncsess_pool": "asyncsess (caller_thread_below=0)",
    }
    for backend in ("asyncio", "trio"):
        times = case.times[backend]
        for name, values in times.items():
            if backend == "trio" and not name.startswith("asyncsess"):
                continue  # the TF contenders are the same on both backends
            label = labels[name] + (" [trio]" if backend == "trio" else "")
            if name == "to_thread" and backend == "trio":
                label = "trio.to_thread(sync MonitoredSession)"
            rows.append(
                row(
                    f"{title}: {label}",
                    median(values) * 1e6,
                    "us/step",
                    detail=f"range {spread([v * 1e6 for v in values])}",
                )
            )
    return rows


def _steps(seconds_per_round: float, step_s: float, quick: bool) -> int:
    n = max(10, round(seconds_per_round / step_s))
    return max(10, n // 3) if quick else n


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Run every per-step figure; *quick* uses fewer rounds and steps."""
    rounds = 4 if quick else 7
    rows: list[dict[str, Any]] = []

    trivial = measure(
        Case(
            None,
            lambda: [AsyncNoOp() for _ in range(3)],
            lambda: [TFNoOp() for _ in range(3)],
            _steps(0.3, 3e-4, quick),
            contenders=("raw", "sync", "to_thread", "asyncsess", "asyncsess_pool"),
        ),
        rounds,
    )
    title = "trivial step, 3 no-op hooks"
    rows += _ratio_rows(trivial, title, "sync", "<= 1.3 (issue 3: <= 1.4)", 1.3)
    # Every step on TF's inter-op pool: what the two thread hops alone cost.
    rows += _ratio_rows(trivial, title, "sync", "report", 0.0, num="asyncsess_pool")
    rows += _ratio_rows(trivial, title, "to_thread", "< 1.0", 1.0, strict=True)
    rows += _abs_rows(trivial, title)

    bare = measure(
        Case(
            None,
            lambda: [AsyncBare() for _ in range(3)],
            lambda: [TFBare() for _ in range(3)],
            _steps(0.3, 3e-4, quick),
        ),
        rounds,
    )
    title = "trivial step, 3 hooks overriding nothing"
    rows += _ratio_rows(bare, title, "sync", "<= 1.3", 1.3)
    rows += _ratio_rows(bare, title, "raw", "report", float("inf"))

    for ms, limit in ((1, 1.08), (10, 1.02)):
        size = size_for(ms / 1000)
        case = measure(
            Case(
                size,
                lambda: [AsyncNoOp() for _ in range(3)],
                lambda: [TFNoOp() for _ in range(3)],
                _steps(0.5 if ms == 1 else 0.6, ms / 1000, quick),
            ),
            rounds,
        )
        title = f"~{ms} ms step (matmul {size}x{size}), 3 no-op hooks"
        extra = " (issue 3: <= 1.1)" if ms == 1 else ""
        rows += _ratio_rows(case, title, "sync", f"<= {limit}{extra}", limit)
        rows += _ratio_rows(case, title, "to_thread", "< 1.0", 1.0, strict=True)
        rows += _abs_rows(case, title)

    tf_hooks = measure(
        Case(
            None,
            tf_standard_hooks,
            tf_standard_hooks,
            _steps(0.3, 4e-4, quick),
            contenders=("raw", "sync"),
        ),
        rounds,
    )
    title = "trivial step, TF StopAtStepHook + LoggingTensorHook"
    rows += _ratio_rows(tf_hooks, title, "sync", "<= 1.5", 1.5)
    rows += _abs_rows(tf_hooks, title)

    rows += _fed_rows(rounds, quick)
    rows += _io_rows(rounds, quick)
    return rows


def _fed_rows(rounds: int, quick: bool) -> list[dict[str, Any]]:
    """Steps feeding a batch each time, as a feed_dict training loop or a prediction."""
    rows: list[dict[str, Any]] = []
    for ms, limit in ((None, 1.3), (1, 1.08)):
        size = None if ms is None else size_for(ms / 1000)
        case = measure(
            Case(
                size,
                lambda: [AsyncNoOp() for _ in range(3)],
                lambda: [TFNoOp() for _ in range(3)],
                _steps(0.3, 3e-4, quick) if ms is None else _steps(0.5, 1e-3, quick),
                fed=True,
            ),
            rounds,
        )
        step = "trivial step" if ms is None else f"~{ms} ms step (matmul {size}x{size})"
        title = f"fed {step}, 3 no-op hooks"
        rows += _ratio_rows(case, title, "sync", f"<= {limit} (issue 12)", limit)
        rows += _ratio_rows(case, title, "to_thread", "< 1.0", 1.0, strict=True)
        rows += _abs_rows(case, title)
    return rows


def _io_rows(rounds: int, quick: bool) -> list[dict[str, Any]]:
    """4 hooks awaiting 10 ms each in before_run: concurrent, so ~10 ms + device."""
    io = 0.010
    case = measure(
        Case(
            None,
            lambda: [AsyncIO(io) for _ in range(4)],
            lambda: [TFBlockingIO(io) for _ in range(4)],
            8 if quick else 25,
            contenders=("raw", "sync"),
        ),
        rounds,
    )
    rows = []
    for backend, label in (("asyncio", "asyncsess"), ("trio", "asyncsess[trio]")):
        times = case.times[backend]
        per_round = [
            a / (io + d) for a, d in zip(times["asyncsess"], times["raw"], strict=True)
        ]
        value = median(per_round)
        rows.append(
            row(
                f"4 hooks awaiting 10 ms in before_run: {label} / (10 ms + device)",
                value,
                "x",
                "<= 1.15",
                value <= 1.15,
                f"{median(times['asyncsess']) * 1e3:.2f} ms/step, device "
                f"{median(times['raw']) * 1e3:.2f} ms; TF sync hooks blocking the same "
                f"I/O: {median(times['sync']) * 1e3:.1f} ms/step",
            )
        )
    return rows
